"""One run of a suite into one run directory, from choosing the directory to the run's last
word in run.json.

``RunSession.open`` chooses the directory (a new one under ``results/<suite>``, the one ``--out``
names, the latest run of the suite for ``--resume``, or a shard's place in a sweep), refuses one
that already holds a run unless resuming, joins a sharded sweep's plan (``claim_sharded_plan``)
and becomes the directory's one writer (``RunDir.acquire``; ``close`` lets go). ``run`` records
the plan and the environment in run.json (a shard in its ``shard-<i>of<N>.json``), checks a
resumed run against the cells it was planned with, runs the cells not done yet, and records how
they ended: counts, measured peaks, warnings of a busy machine, the status. SIGTERM and SIGHUP
stop it as Ctrl-C does (``archbench.run.signals``): the run is marked ``interrupted`` and
``--resume`` finishes it.

Nothing here prints: lines for the user go to ``say``; a run that cannot go ahead raises
``RunError`` (or the store's ``StoreError``), one line that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Callable

from archbench.run.runner import RunSummary
from archbench.run.signals import StopOnSignals
from archbench.store import RunDir, create_run_dir, describe_skipped, latest_run, now_iso

Say = Callable[[str], None]


def silent(line: str) -> None:
    """A ``say`` that drops its line."""


class RunError(Exception):
    """A run that cannot go ahead as asked; the message is one line and says what to do."""


def suite_hash(cells) -> str:
    """What a run measures, in 16 hex digits: the hash of its sorted cell keys."""
    return hashlib.sha256("\n".join(sorted(c.key for c in cells)).encode()).hexdigest()[:16]


def check_devices(suite_path: str, cells) -> None:
    """``RunError`` when cells ask for CUDA on a machine without it, naming a reduced CPU grid to run instead."""
    if any(c.device.startswith("cuda") for c in cells):
        import torch

        if not torch.cuda.is_available():
            if any(c.mode == "recipe" for c in cells):
                hint = f"archbench run suites/recipes-cpu.yaml, or archbench run {suite_path} --device cpu (GPU-scale budgets: hours on a CPU)"
            elif any(c.mode == "task" for c in cells):
                hint = f"archbench run {suite_path} --device cpu --set defaults.train.steps=200 --set 'sweep.d_model=[64]'"
            else:
                hint = f"archbench run {suite_path} --device cpu --set 'sweep.seq_len=[1024,2048]' --set 'sweep.batch=[1]'"
            raise RunError(
                f"{suite_path} asks for a CUDA device and this machine has none (torch {torch.__version__}); "
                f"to run a reduced grid on the CPU instead: {hint}"
            )


def claim_sharded_plan(run_dir: RunDir, suite, suite_path, all_cells, shard: tuple[int, int], overrides) -> None:
    """A shard joins the sweep in ``run_dir``: the first to arrive writes run.json with the whole
    plan; the others check that they belong to it (same cells, same shard count)."""
    from archbench.run.plan import assign_shards

    run_dir.create()
    owner = assign_shards(all_cells, shard[1], keys=suite.keys())
    plan = dict(
        run_id=run_dir.path.name, suite=suite.name, suite_path=str(suite_path), suite_config=suite.raw,
        suite_hash=suite_hash(all_cells), cell_keys=[c.key for c in all_cells], n_cells=len(all_cells),
        overrides=list(overrides), shards=shard[1], shard_counts=[owner.count(s) for s in range(shard[1])],
        status="sharded", started_at=now_iso(),
    )  # fmt: skip
    held, _ = run_dir.claim_run_meta(plan)
    if held.get("shards") is None:
        raise RunError(f"{run_dir.path} holds an unsharded run; resume it without --shard, or choose another --out")
    if held["shards"] != shard[1]:
        raise RunError(f"{run_dir.path} holds a sweep in {held['shards']} shards, not {shard[1]}; "
                       f"run --shard i/{held['shards']}, or choose another --out")  # fmt: skip
    if held.get("suite_hash") != plan["suite_hash"]:
        raise RunError(f"{run_dir.path} holds shards of another plan (suite {held.get('suite')!r}, {held.get('n_cells')} cells); "
                       f"give the same suite and --set values, or choose another --out")  # fmt: skip


def choose_run_dir(suite, suite_path, all_cells, *, out_dir=None, results_dir="results", resume=False, shard=None,
                   overrides=()) -> RunDir:
    """The run directory a run writes: shard i of N's place in ``out_dir`` (joining its sweep's
    plan), ``out_dir``, the suite's latest run under ``results_dir`` when resuming, or a new one
    there. A directory that already holds the run's rows is refused unless resuming."""
    if shard:
        if not out_dir:
            raise RunError(f"--shard {shard[0]}/{shard[1]} needs --out DIR: every shard of a sweep writes into the same run directory")
        run_dir = RunDir(out_dir, shard=shard)
        if run_dir.rows_path.is_file() and not resume:
            raise RunError(f"{out_dir} already holds shard {shard[0]}/{shard[1]}; pass --resume to continue it, or choose another --out")
        claim_sharded_plan(run_dir, suite, suite_path, all_cells, shard, overrides)
        return run_dir
    if out_dir:
        run_dir = RunDir(out_dir)
        if run_dir.has_rows() and not resume:
            raise RunError(f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out")
        return run_dir
    if resume:
        last = latest_run(Path(results_dir) / suite.name)
        if last is None:
            raise RunError(f"nothing to resume: no run of suite {suite.name!r} under {results_dir}/{suite.name}")
        return RunDir(last)
    return RunDir(create_run_dir(Path(results_dir) / suite.name))


def check_resume_plan(meta: dict, cells, suite_path, allow_changed: bool, say: Say = silent) -> dict:
    """``--resume`` against the cells the run was planned with (run.json ``cell_keys``): the same
    set goes on; a changed one is refused (``RunError``) unless ``allow_changed``, which runs the
    new cells and labels rows of cells that left the suite as stale (run.json ``stale_keys``).
    Returns the run.json fields that record the change."""
    if meta.get("cell_keys") is None:  # a run from before plans were recorded: nothing to check against
        return {}
    old, new = set(meta["cell_keys"]), {c.key for c in cells}
    added, removed = new - old, old - new
    if not added and not removed:
        return {}
    if not allow_changed:
        example = next((c.label for c in cells if c.key in added), None) or f"key {sorted(removed)[0]}"
        raise RunError(
            f"{suite_path} changed since this run was planned: {len(added)} cell(s) added, {len(removed)} removed "
            f"(e.g. {example}); pass --allow-changed to run the new cells beside the old rows, or choose another --out"
        )
    stale = (set(meta.get("stale_keys") or ()) | removed) - new
    history = list(meta.get("suite_changes") or [])
    history.append({"at": now_iso(), "added": len(added), "removed": len(removed), "previous_hash": meta.get("suite_hash")})
    say(f"warning: the suite changed: running {len(added)} new cell(s); {len(removed)} cell(s) left it and their rows are labelled stale")
    return {"stale_keys": sorted(stale), "suite_changes": history}


def noise_report(rows: list[dict], device: str, say: Say = silent) -> str | None:
    """Say how many timed cells were noisy; when most were, that the machine looks busy and why
    (load average, other processes on the GPU). Returns the busy warning for run.json, or None."""
    from archbench.measure.env import busy_signs, noisy_rows

    timed = [r for r in rows if r.get("status") == "ok" and r.get("time_median_s") is not None]
    if not timed:
        return None
    noisy = noisy_rows(timed)
    say(f"noise: {len(noisy)} of {len(timed)} timed cell(s) noisy (IQR/median > 10%)")
    if 2 * len(noisy) <= len(timed):
        return None
    signs = busy_signs(device)
    line = f"{len(noisy)} of {len(timed)} timed cells were noisy: the machine looks busy ({signs or 'no other load seen now'}); " \
           "rerun on an idle machine, or with --rounds 3 to spread slow phases over every cell"
    say(f"warning: {line}")
    return line


def measured_peaks(rows) -> dict:
    """The device peaks the rows measured, per device/dtype: what roofline fractions divide by."""
    return {f"{r['device']}/{r['dtype']}": {k: r[k] for k in ("peak_tflops", "peak_gbps", "peak_method")}
            for r in rows if r.get("peak_tflops")}  # fmt: skip


class RunSession:
    """One run of ``cells`` of ``suite`` into ``run_dir``, held by this process from ``open`` to ``close``."""

    def __init__(self, run_dir: RunDir, suite, suite_path, cells, *, overrides=(), resume: bool = False, say: Say = silent):
        self.run_dir = run_dir
        self.suite, self.suite_path, self.cells = suite, suite_path, list(cells)
        self.overrides, self.resume, self.say = list(overrides), resume, say
        self.meta: dict = {}
        self.env: dict = {}
        self.done: set[str] = set()
        self.signal: int | None = None  # the signal that stopped the run (SIGINT for Ctrl-C)

    @classmethod
    def open(cls, suite, suite_path, cells, *, all_cells=None, out_dir=None, results_dir="results", resume: bool = False,
             shard=None, overrides=(), say: Say = silent) -> "RunSession":
        """Choose the run directory (``choose_run_dir``), create it and take its lock; a torn
        last line left by a crash is set aside, with a warning."""
        run_dir = choose_run_dir(suite, suite_path, cells if all_cells is None else all_cells, out_dir=out_dir,
                                 results_dir=results_dir, resume=resume, shard=shard, overrides=overrides)  # fmt: skip
        run_dir.create()
        torn = run_dir.acquire()  # one writer per run directory, until close or this process ends
        if torn:
            say(f"warning: {torn}")
        return cls(run_dir, suite, suite_path, cells, overrides=overrides, resume=resume, say=say)

    def close(self) -> None:
        self.run_dir.release()

    def __enter__(self) -> "RunSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def device(self) -> str:
        """The device the environment is read for: the first of the cells' devices."""
        return sorted({c.device for c in self.cells})[0]

    def run(self, *, allow_changed: bool = False, jobs: int = 1, rounds: int = 1, slots=None,
            drive: Callable | None = None, write_report: Callable[[Path], Path] | None = None) -> RunSummary:
        """Start, run the cells not done yet, finish. ``drive(runner)`` runs the ``Runner`` (a
        progress display; default ``runner.run()``); ``write_report(run_path)`` writes the report
        once every shard of the run is complete. A stop (Ctrl-C, SIGTERM, SIGHUP) returns an
        interrupted summary and sets ``signal``."""
        with StopOnSignals() as stop:
            try:
                summary = self._run(allow_changed, jobs, rounds, slots, drive, write_report)
            except KeyboardInterrupt:  # a signal outside the runner's loop (starting up, writing the report)
                summary = RunSummary(interrupted=True)
                meta = self.run_dir.read_meta()
                if meta.get("status") == "running" and meta.get("pid") == os.getpid():
                    self.run_dir.update_meta(status="interrupted", ended_at=now_iso())
        if summary.interrupted:
            self.signal = stop.signal or signal.SIGINT
        return summary

    def _run(self, allow_changed, jobs, rounds, slots, drive, write_report) -> RunSummary:
        from archbench.run.runner import Runner

        self.start(allow_changed=allow_changed, rounds=rounds, slots=slots)
        todo = [c for c in self.cells if c.key not in self.done]
        self.say(f"archbench: suite {self.suite.name!r}, {len(self.cells)} cells ({len(self.cells) - len(todo)} already done), "
                 f"run dir {self.run_dir.path}")  # fmt: skip
        base_row = {"run_id": self.run_dir.path.name, "suite": self.suite.name}
        runner = Runner(todo, self.run_dir, plugins=self.suite.model.plugins, base_row=base_row, env=self.env, jobs=jobs,
                        rounds=rounds, slots=slots)  # fmt: skip
        summary = drive(runner) if drive is not None else runner.run()
        self.finish(summary, write_report)
        return summary

    def start(self, *, allow_changed: bool = False, rounds: int = 1, slots=None) -> dict:
        """Record the run's plan, environment and state (``running``, this pid and host) in its
        meta file; a resumed run is checked against its plan first (``check_resume_plan``) and
        the keys it has done are kept in ``done``."""
        from archbench.measure.env import busy_warning, collect_env

        run_dir, cells, resume = self.run_dir, self.cells, self.resume
        meta = run_dir.read_meta() if resume else {}
        plan = check_resume_plan(meta, cells, self.suite_path, allow_changed, self.say) if resume else {}
        env = collect_env(self.device)
        self.done = run_dir.done_keys(rounds=rounds) if resume else set()
        skipped = describe_skipped(run_dir.skipped_lines) if resume else None
        if skipped:
            self.say(f"warning: {skipped}")
        meta.update(
            run_id=run_dir.path.name,
            suite=self.suite.name,
            suite_path=str(self.suite_path),
            suite_config=self.suite.raw,
            suite_hash=suite_hash(cells),
            cell_keys=[c.key for c in cells],
            overrides=self.overrides,
            env=env,
            n_cells=len(cells),
            status="running",
            pid=os.getpid(),
            host=env.get("host"),
            **plan,
        )
        if run_dir.shard:
            meta["shard"] = list(run_dir.shard)
        if slots:
            meta["slots"] = [s.name for s in slots]
        meta.setdefault("started_at", now_iso())
        warnings = list(meta.get("warnings") or [])
        if busy_warning(env):
            warnings.append("at start: " + busy_warning(env))
            self.say(f"warning: {busy_warning(env)}")
        meta["warnings"] = warnings
        meta.setdefault("resumed_at", [])
        if resume:
            meta["resumed_at"].append(now_iso())
        run_dir.write_meta(meta)
        self.meta, self.env = meta, env
        return meta

    def finish(self, summary: RunSummary, write_report: Callable[[Path], Path] | None = None) -> dict:
        """Record how the run ended: status counts and measured peaks over the run's latest rows,
        warnings of a machine busy at the end or of noisy timings, ``complete`` or ``interrupted``;
        then the report when every shard is complete, and the rows file's line."""
        from archbench.measure.env import busy_warning, nvml_device_info

        run_dir, meta, device = self.run_dir, self.meta, self.device
        planned = {c.key for c in self.cells}
        rows = list({r["key"]: r for r in run_dir.rows() if r.get("key") in planned}.values())
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        if device.startswith("cuda"):
            other = busy_warning(nvml_device_info(int(device.split(":")[1]) if ":" in device else 0))
            if other:
                meta["warnings"].append("at end: " + other)
        late = noise_report(rows, device, self.say)
        if late:
            meta["warnings"].append("at end: " + late)
        meta.update(ended_at=now_iso(), counts=counts, peaks=measured_peaks(rows),
                    status="interrupted" if summary.interrupted else "complete")  # fmt: skip
        run_dir.write_meta(meta)
        if write_report is not None and not summary.interrupted:
            if run_dir.shards_complete():
                self.say(f"report: {write_report(run_dir.path)}")
            else:
                self.say(f"report: not yet; other shards are unfinished (archbench status {run_dir.path})")
        self.say(f"rows: {run_dir.rows_path}  ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})")
        return meta
