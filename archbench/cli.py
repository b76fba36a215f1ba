"""The ``archbench`` command line: run | status | report | advise | compare | ab | baseline save | convert | redundancy | list | env |
export | push.

Exit codes: 0 success; 1 the run finished but some cells failed (error / timeout; see
``--allow-failures``), or ``compare`` / ``ab`` found a regressed cell; 2 bad input (a suite error,
an unknown architecture, a missing run, runs that cannot be compared, ``advise`` finding nothing
comparable for its point); 3 ``compare`` / ``ab``
found no regression but some cell's samples are too few to show one (``underpowered``; see
``--allow-underpowered``); 130 interrupted with Ctrl-C (rows already written are kept).

``run`` also exits 2 when its output cannot be written, when another run holds the run
directory (the line names its pid and host), and when ``--resume`` finds the suite changed
(``--allow-changed``); it exits 143 on SIGTERM (a CI timeout, Slurm) and 129 on SIGHUP, handled
as Ctrl-C is: rows kept, run.json ``interrupted``, ``--resume`` finishes the run
(docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SIGHUP, EXIT_SIGTERM = 129, 143  # 128 + the signal's number, as a shell reports it


def _fail(message: str) -> "None":
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archbench")
def main() -> None:
    """archbench: measure efficient sequence-mixing architectures side by side.

    \b
    archbench run suites/smoke.yaml      run a suite, write rows and an HTML report
    archbench report RUN_DIR -o r.html   render a report from one or more runs
    archbench advise RUN --seq-len T --batch B   which architecture for this point, from measured rows
    archbench status RUN_DIR             per-shard progress and failures of a run
    archbench compare BASE HEAD          regression gate: exit 1 if a cell got slower
    archbench ab SUITE --base REV        the suite on two code versions, interleaved, compared
    archbench baseline save RUN_DIR F    keep a run as a baseline JSON for compare
    archbench convert radlads            convert a transformer into a linear-attention student
    archbench redundancy MODEL           rank redundant attention layers, distil a hybrid
    archbench list                       the architecture catalogue and its backends
    archbench env                        this machine: device, libraries, optional kernels
    archbench export RUN -o rows.parquet  rows as Parquet / CSV / JSON Lines
    archbench push RUN --repo-id ORG/NAME upload a run to a Hugging Face dataset
    """
    from archbench import allocator

    allocator.enable()  # before any command imports torch


# ---- run --------------------------------------------------------------------------------


@main.command()
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: results/<suite>/<run-id>).")
@click.option("--resume", is_flag=True, help="Continue a run: skip cells that already have an ok row (the latest run of the suite unless --out names one).")
@click.option("--device", help="Run every cell on this device (cpu, cuda, cuda:N), overriding the suite.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite value, e.g. --set sweep.seq_len=[1024,2048] (repeatable).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Where new run directories go.")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some cells end in error or timeout.")
@click.option("--no-report", is_flag=True, help="Do not write report.html at the end.")
@click.option("--dry-run", is_flag=True, help="Validate the suite and list its cells; run nothing.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train up to N task cells at once (each with cpu_count/N threads); timing cells always run alone.")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure every timing cell N times, in passes over the suite that alternate direction, and pool "
                   "each cell's samples: a shared machine's slow phases then fall on all cells alike. Task cells run once.")
@click.option("--allow-changed", is_flag=True, help="With --resume: accept a suite that changed since the run began; its new cells "
              "are run, and rows of cells no longer in it are kept and labelled stale.")
@click.option("--gpus", metavar="all|0,1,3", help="One worker per GPU, pinned with CUDA_VISIBLE_DEVICES; cells go to the next idle GPU, longest "
              "expected first; a GPU runs one cell at a time. The suite's device must be cuda.")
@click.option("--workers", type=click.IntRange(min=1), help="CPU: train up to N task cells at once, each worker on its own set of cores; "
              "timing cells still run alone.")
@click.option("--shard", "shard_spec", metavar="i/N", help="Run shard i of N of the sweep (split by key, balanced by expected cost) into "
              "--out, writing rows-<i>of<N>.jsonl; the N shards, in any order, give the rows of one run.")
@click.option("--executor", type=click.Choice(["local", "slurm", "ray"]), default="local", show_default=True,
              help="local: this process. slurm: an array job of --shards shards through submitit. ray: --shards Ray tasks. "
                   "slurm and ray need: pip install 'archbench[dist]'.")
@click.option("--shards", type=click.IntRange(min=1), help="With --executor slurm|ray: split the sweep into N shards, one task each.")
@click.option("--gpus-per-shard", type=click.IntRange(min=0), help="GPUs each slurm/ray task asks for (default: 1 for a CUDA suite, 0 for CPU).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="slurm/ray: run a shard that died again, resuming it, up to N times.")
@click.option("--partition", help="slurm: the partition (default: the suite's slurm.partition).")
@click.option("--time-min", type=click.IntRange(min=1), help="slurm: each task's time limit in minutes (default: the suite's slurm.time_min).")
@click.option("--account", help="slurm: the account to charge (default: the suite's slurm.account).")
@click.option("--slurm-local", is_flag=True, help="slurm: run the array on this machine as subprocesses (submitit's local executor), "
              "to try a Slurm setup without a cluster.")
@click.option("--ray-address", help="ray: the cluster to join (ray://host:10001 or host:6379); default: a local Ray on this machine.")
def run(suite_path, out_dir, resume, device, overrides, results_dir, allow_failures, no_report, dry_run, jobs, rounds,
        allow_changed, gpus, workers, shard_spec, executor, shards, gpus_per_shard, retries, partition, time_min, account,
        slurm_local, ray_address):
    """Run every cell of SUITE (a YAML file) and write rows.jsonl, run.json and report.html.

    One run writes a run directory at a time (a second is refused; shards of one sweep write
    their own rows files side by side); SIGTERM and SIGHUP stop a run as Ctrl-C does, keeping its
    rows for --resume. Exit codes: 0 ok, 1 cells failed (or a slurm/ray shard still dead after
    its retries), 2 bad input / unwritable output / directory in use / suite changed / a GPU,
    shard or executor that cannot be used, 129 SIGHUP, 130 Ctrl-C, 143 SIGTERM.
    """
    from archbench.plan import PlanError, parse_shard
    from archbench.suite import SuiteError, load_suite

    overrides = list(overrides)
    if _is_recipe_suite(suite_path):
        return _run_recipe_suite(suite_path, out_dir, results_dir, dry_run)
    shard = None
    try:
        shard = parse_shard(shard_spec) if shard_spec else None
    except PlanError as e:
        _fail(str(e))
    if executor != "local":
        if shard or gpus or workers:
            _fail(f"--executor {executor} runs the shards itself: give --shards N instead of --shard, --gpus or --workers")
        if not shards:
            _fail(f"--executor {executor} needs --shards N: how many tasks the sweep is split into")
    elif shards or ray_address or slurm_local:
        _fail("--shards, --ray-address and --slurm-local go with --executor slurm or ray; for one shard here use --shard i/N")
    if jobs > 1 and workers:
        _fail("give --jobs or --workers, not both (--workers also gives each worker its own cores)")
    if device:
        overrides.append(f"defaults.device={device}")
    try:
        suite = load_suite(suite_path, overrides)
        if device and "device" in (suite.raw.get("sweep") or {}):
            del suite.raw["sweep"]["device"]
            from archbench.suite import parse_suite

            suite = parse_suite(suite.raw, source=suite_path)
        cells = suite.cells()
    except SuiteError as e:
        _fail(str(e))
    all_cells = cells
    if shard:
        from archbench.plan import shard as shard_of

        cells = shard_of(all_cells, *shard, keys=suite.keys())
    slots = _slots(gpus, workers, cells)
    if executor == "local":  # a submitting machine (a login node) needs no GPU of its own
        _check_devices(suite_path, cells)
    if slots and len(slots) > 1 and rounds > 1 and gpus:
        _fail("--rounds pools a cell's rounds on one device; with --gpus run one GPU per shard instead (--shard i/N)")

    if dry_run:
        for c in cells:
            click.echo(f"{c.key}  {c.label}  device={c.device}")
        click.echo(f"{len(cells)} cells" + (f" in shard {shard[0]}/{shard[1]} (of {len(all_cells)})" if shard else ""))
        return

    from archbench.store import RunDir, StoreError, create_run_dir, latest_run

    if allow_changed and not resume:
        _fail("--allow-changed goes with --resume (it accepts a suite that changed since the run began)")
    if executor != "local":
        return _run_distributed(executor, suite, suite_path, all_cells, overrides, device, out_dir, results_dir, resume,
                                allow_failures, no_report, shards, gpus_per_shard, retries,
                                dict(partition=partition, time_min=time_min, account=account, local=slurm_local),
                                ray_address)  # fmt: skip
    if shard and not out_dir:
        _fail(f"--shard {shard[0]}/{shard[1]} needs --out DIR: every shard of a sweep writes into the same run directory")
    try:
        if shard:
            run_dir = RunDir(out_dir, shard=shard)
            if run_dir.rows_path.is_file() and not resume:
                _fail(f"{out_dir} already holds shard {shard[0]}/{shard[1]}; pass --resume to continue it, or choose another --out")
            _claim_sharded_plan(run_dir, suite, suite_path, all_cells, shard, overrides)
        elif out_dir:
            run_dir = RunDir(out_dir)
            if run_dir.has_rows() and not resume:
                _fail(f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out")
        elif resume:
            last = latest_run(Path(results_dir) / suite.name)
            if last is None:
                _fail(f"nothing to resume: no run of suite {suite.name!r} under {results_dir}/{suite.name}")
            run_dir = RunDir(last)
        else:
            run_dir = RunDir(create_run_dir(Path(results_dir) / suite.name))
        run_dir.create()
        torn = run_dir.acquire()  # one writer per run directory, until this process ends
    except StoreError as e:
        _fail(str(e))
    if torn:
        click.echo(f"warning: {torn}", err=True)
    stop = _stop_on_signals()
    try:
        summary = _execute_run(suite, suite_path, cells, run_dir, overrides, resume, allow_changed, jobs, rounds, no_report,
                               slots=slots)
    except KeyboardInterrupt:  # a signal outside the runner's loop (starting up, writing the report)
        from archbench.runner import RunSummary
        from archbench.store import now_iso

        summary = RunSummary(interrupted=True)
        meta = run_dir.read_meta()
        if meta.get("status") == "running" and meta.get("pid") == os.getpid():
            meta.update(status="interrupted", ended_at=now_iso())
            run_dir.write_meta(meta)
    except StoreError as e:
        _fail(str(e))
    finally:
        _restore_signals(stop)
        run_dir.release()
    if summary.interrupted:
        signum = stop.get("signal", 2)
        click.echo(f"interrupted by {_signal_name(signum)}: rows written so far are kept; rerun with --resume to finish", err=True)
        sys.exit(128 + signum)
    if summary.failed and not allow_failures:
        click.echo(f"{summary.failed} cell(s) failed (error/timeout); see the report's Failures section", err=True)
        sys.exit(EXIT_FAILED_CELLS)


def _execute_run(suite, suite_path, cells, run_dir, overrides, resume, allow_changed, jobs, rounds, no_report, slots=None):
    """The body of ``run`` once the run directory is held: plan against what is there, run, record.
    A shard keeps its state in its own ``shard-<i>of<N>.json`` (``run_dir.read_meta``)."""
    from archbench.measure.env import busy_warning, collect_env
    from archbench.runner import Runner
    from archbench.store import describe_skipped, now_iso

    devices = sorted({c.device for c in cells})
    meta = run_dir.read_meta() if resume else {}
    plan = _check_resume_plan(meta, cells, suite_path, allow_changed) if resume else {}
    env = collect_env(devices[0])
    done = run_dir.done_keys(rounds=rounds) if resume else set()
    skipped = describe_skipped(run_dir.skipped_lines) if resume else None
    if skipped:
        click.echo(f"warning: {skipped}", err=True)
    meta.update(
        run_id=run_dir.path.name,
        suite=suite.name,
        suite_path=str(suite_path),
        suite_config=suite.raw,
        suite_hash=_suite_hash(cells),
        cell_keys=[c.key for c in cells],
        overrides=overrides,
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
        click.echo(f"warning: {busy_warning(env)}", err=True)
    meta["warnings"] = warnings
    meta.setdefault("resumed_at", [])
    if resume:
        meta["resumed_at"].append(now_iso())
    run_dir.write_meta(meta)

    todo = [c for c in cells if c.key not in done]
    click.echo(
        f"archbench: suite {suite.name!r}, {len(cells)} cells ({len(cells) - len(todo)} already done), "
        f"run dir {run_dir.path}",
        err=True,
    )
    base_row = {"run_id": run_dir.path.name, "suite": suite.name}
    runner = Runner(todo, run_dir, plugins=suite.model.plugins, base_row=base_row, env=env, jobs=jobs, rounds=rounds,
                    slots=slots)
    summary = _run_with_progress(runner)

    planned = {c.key for c in cells}
    all_rows = {r["key"]: r for r in run_dir.rows() if r.get("key") in planned}
    counts: dict[str, int] = {}
    for r in all_rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    peaks = {f"{r['device']}/{r['dtype']}": {k: r[k] for k in ("peak_tflops", "peak_gbps", "peak_method")}
             for r in all_rows.values() if r.get("peak_tflops")}  # fmt: skip
    if devices[0].startswith("cuda"):
        from archbench.measure.env import nvml_device_info

        other = busy_warning(nvml_device_info(int(devices[0].split(":")[1]) if ":" in devices[0] else 0))
        if other:
            meta["warnings"].append("at end: " + other)
    late = _noise_report(list(all_rows.values()), devices[0])
    if late:
        meta["warnings"].append("at end: " + late)
    meta.update(ended_at=now_iso(), counts=counts, peaks=peaks, status="interrupted" if summary.interrupted else "complete")
    run_dir.write_meta(meta)

    if not no_report and not summary.interrupted and _all_shards_complete(run_dir):
        report_path = _write_report_atomically(run_dir.path)
        click.echo(f"report: {report_path}", err=True)
    elif not no_report and not summary.interrupted:
        click.echo(f"report: not yet; other shards are unfinished (archbench status {run_dir.path})", err=True)
    click.echo(f"rows: {run_dir.rows_path}  ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})", err=True)
    return summary


def _slots(gpus, workers, cells):
    """The worker slots of ``--gpus`` (one per GPU, pinned) or ``--workers`` (disjoint cores);
    None for the default single worker."""
    from archbench.plan import PlanError, core_sets, parse_gpus, visible_gpus
    from archbench.runner import cpu_slots, gpu_slots

    try:
        if gpus:
            fake = bool(os.environ.get("ARCHBENCH_FAKE_GPUS"))
            chosen = parse_gpus(gpus, visible_gpus())
            pinned = sorted({c.device for c in cells if c.device.startswith("cuda:")})
            if pinned and not fake:
                raise PlanError(f"--gpus schedules every cell over the GPUs, but the suite pins cells to {pinned[0]}; "
                                "set its device to cuda (or --device cuda)")
            if not fake and any(c.device == "cpu" for c in cells):
                raise PlanError("--gpus runs CUDA cells, but the suite's cells are on the cpu; add --device cuda, or use --workers N on a CPU")
            return gpu_slots(chosen, facts=None if fake else {g: _gpu_facts(g) for g in chosen})
        if workers:
            return cpu_slots(workers, core_sets(workers))
    except PlanError as e:
        _fail(str(e))
    return None


def _gpu_facts(index: int) -> dict:
    """What rows measured on GPU ``index`` say about it: index, UUID, clocks, power limit, driver."""
    from archbench.measure.env import gpu_identity, nvml_device_info, physical_gpu

    target = physical_gpu(index)
    facts = nvml_device_info(index)
    facts.update(gpu_identity(target) if isinstance(target, int) else {"gpu_uuid": target})
    return facts


def _claim_sharded_plan(run_dir, suite, suite_path, all_cells, shard, overrides) -> None:
    """A shard joins the sweep in ``run_dir``: the first to arrive writes run.json with the whole
    plan; the others check that they belong to it (same cells, same shard count)."""
    from archbench.plan import assign_shards
    from archbench.store import now_iso

    run_dir.create()
    owner = assign_shards(all_cells, shard[1], keys=suite.keys())
    plan = dict(
        run_id=run_dir.path.name, suite=suite.name, suite_path=str(suite_path), suite_config=suite.raw,
        suite_hash=_suite_hash(all_cells), cell_keys=[c.key for c in all_cells], n_cells=len(all_cells),
        overrides=overrides, shards=shard[1], shard_counts=[owner.count(s) for s in range(shard[1])],
        status="sharded", started_at=now_iso(),
    )  # fmt: skip
    held, _ = run_dir.claim_run_meta(plan)
    if held.get("shards") is None:
        _fail(f"{run_dir.path} holds an unsharded run; resume it without --shard, or choose another --out")
    if held["shards"] != shard[1]:
        _fail(f"{run_dir.path} holds a sweep in {held['shards']} shards, not {shard[1]}; run --shard i/{held['shards']}, or choose another --out")
    if held.get("suite_hash") != plan["suite_hash"]:
        _fail(f"{run_dir.path} holds shards of another plan (suite {held.get('suite')!r}, {held.get('n_cells')} cells); "
              f"give the same suite and --set values, or choose another --out")


def _run_distributed(executor, suite, suite_path, cells, overrides, device, out_dir, results_dir, resume, allow_failures,
                     no_report, n_shards, gpus_per_shard, retries, slurm_opts, ray_address):
    """``--executor slurm|ray``: plan the shards into one run directory, hand each to the
    executor (which resumes and retries them), then report when every shard is complete."""
    from archbench.executors import ExecutorError, ShardSpec
    from archbench.store import RunDir, StoreError, create_run_dir, shard_metas

    try:
        if executor == "slurm":
            from archbench.executors import slurm

            slurm.preflight(slurm_opts["local"])
        else:
            from archbench.executors import ray as ray_exec

            ray_exec.preflight(ray_address)
        if out_dir:
            base = RunDir(out_dir)
            if (base.has_rows() or base.run_path.is_file()) and not resume:
                _fail(f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out")
        else:
            base = RunDir(create_run_dir(Path(results_dir) / suite.name))
        base.create()
        _claim_sharded_plan(base, suite, suite_path, cells, (0, n_shards), overrides)
        done = {i for (i, n), m in shard_metas(base.path).items() if n == n_shards and m.get("status") == "complete"}
        gpus = gpus_per_shard if gpus_per_shard is not None else int(any(c.device.startswith("cuda") for c in cells))
        specs = [ShardSpec(str(Path(suite_path).resolve()), str(base.path.resolve()), i, n_shards, tuple(overrides), device)
                 for i in range(n_shards) if i not in done]  # fmt: skip
        click.echo(f"archbench: suite {suite.name!r}, {len(cells)} cells in {n_shards} shards ({len(done)} complete), "
                   f"run dir {base.path}, executor {executor}", err=True)  # fmt: skip
        say = lambda line: click.echo(f"archbench: {line}", err=True)  # noqa: E731
        if executor == "slurm":
            opts = suite.model.slurm.model_dump()
            opts.update({k: v for k, v in slurm_opts.items() if k != "local" and v is not None})
            params = slurm.parameters(opts, gpus, name=f"archbench-{suite.name}")
            outcome = slurm.run(specs, folder=base.path / "slurm", params=params, local=slurm_opts["local"], retries=retries, on_event=say)
        else:
            outcome = ray_exec.run(specs, address=ray_address, gpus_per_shard=gpus, retries=retries, on_event=say)
    except (ExecutorError, StoreError) as e:
        _fail(str(e))
    from archbench.status import read_status, render

    for line in render(read_status(base.path), suite_path):
        click.echo(line, err=True)
    dead = {i: why for i, why in outcome.items() if not isinstance(why, int)}
    if dead:
        click.echo(f"{len(dead)} shard(s) died after {retries + 1} tries (first: shard {min(dead)}/{n_shards}: {dead[min(dead)]}); "
                   f"rerun the same command with --resume to resume them", err=True)  # fmt: skip
        sys.exit(EXIT_FAILED_CELLS)
    if not no_report:
        click.echo(f"report: {_write_report_atomically(base.path)}", err=True)
    if any(rc == EXIT_FAILED_CELLS for rc in outcome.values()) and not allow_failures:
        click.echo("some cells failed (error/timeout); see archbench status and the report's Failures section", err=True)
        sys.exit(EXIT_FAILED_CELLS)


def _all_shards_complete(run_dir) -> bool:
    """An unsharded run is complete when it ends; a sharded one when every shard's state says so."""
    from archbench.store import RunDir, shard_metas

    if not run_dir.shard:
        return True
    n = RunDir(run_dir.path).read_meta().get("shards") or run_dir.shard[1]
    metas = shard_metas(run_dir.path)
    return all(metas.get((i, n), {}).get("status") == "complete" for i in range(n))


def _write_report_atomically(run_path: Path) -> Path:
    """report.html of a run, written to a temporary name and renamed (shards may end together)."""
    tmp = run_path / f".report-{os.getpid()}"
    _write_report([run_path], tmp / "report.html")
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "report.html"):  # the page last: it links the rest
        os.replace(f, run_path / f.name)
    tmp.rmdir()
    return run_path / "report.html"


def _suite_hash(cells) -> str:
    """What a run measures, in 16 hex digits: the hash of its sorted cell keys."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(c.key for c in cells)).encode()).hexdigest()[:16]


def _check_resume_plan(meta: dict, cells, suite_path, allow_changed: bool) -> dict:
    """``--resume`` against the cells the run was planned with (run.json ``cell_keys``): the same
    set goes on; a changed one is refused (exit 2) unless ``--allow-changed``, which runs the new
    cells and labels rows of cells that left the suite as stale (run.json ``stale_keys``)."""
    from archbench.store import now_iso

    if meta.get("cell_keys") is None:  # a run from before plans were recorded: nothing to check against
        return {}
    old, new = set(meta["cell_keys"]), {c.key for c in cells}
    added, removed = new - old, old - new
    if not added and not removed:
        return {}
    if not allow_changed:
        example = next((c.label for c in cells if c.key in added), None) or f"key {sorted(removed)[0]}"
        _fail(
            f"{suite_path} changed since this run was planned: {len(added)} cell(s) added, {len(removed)} removed "
            f"(e.g. {example}); pass --allow-changed to run the new cells beside the old rows, or choose another --out"
        )
    stale = (set(meta.get("stale_keys") or ()) | removed) - new
    history = list(meta.get("suite_changes") or [])
    history.append({"at": now_iso(), "added": len(added), "removed": len(removed), "previous_hash": meta.get("suite_hash")})
    click.echo(f"warning: the suite changed: running {len(added)} new cell(s); {len(removed)} cell(s) left it and their rows are labelled stale", err=True)
    return {"stale_keys": sorted(stale), "suite_changes": history}


def _stop_on_signals() -> dict:
    """SIGTERM (a CI timeout, Slurm, ``kill``) and SIGHUP (a closed terminal) stop a run as Ctrl-C
    does: ``KeyboardInterrupt`` in the main thread, so the runner keeps its rows and kills its
    workers. A second signal while stopping is ignored, so the stop completes. The dict returned
    holds the first signal's number under ``signal`` (and the handlers to restore)."""
    import signal

    got: dict = {"previous": {}}

    def handler(signum, frame):
        if "signal" in got:
            return
        got["signal"] = signum
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        got["previous"][sig] = signal.signal(sig, handler)
    return got


def _restore_signals(stop: dict) -> None:
    import signal

    for sig, previous in stop.get("previous", {}).items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _signal_name(signum: int) -> str:
    import signal

    return {signal.SIGINT: "Ctrl-C (SIGINT)"}.get(signum) or signal.Signals(signum).name


def _noise_report(rows: list[dict], device: str) -> str | None:
    """Say how many timed cells were noisy; when most were, that the machine looks busy and why
    (load average, other processes on the GPU). Returns the busy warning for run.json, or None."""
    from archbench.measure.env import busy_signs, noisy_rows

    timed = [r for r in rows if r.get("status") == "ok" and r.get("time_median_s") is not None]
    if not timed:
        return None
    noisy = noisy_rows(timed)
    click.echo(f"noise: {len(noisy)} of {len(timed)} timed cell(s) noisy (IQR/median > 10%)", err=True)
    if 2 * len(noisy) <= len(timed):
        return None
    signs = busy_signs(device)
    line = f"{len(noisy)} of {len(timed)} timed cells were noisy: the machine looks busy ({signs or 'no other load seen now'}); " \
           "rerun on an idle machine, or with --rounds 3 to spread slow phases over every cell"
    click.echo(f"warning: {line}", err=True)
    return line


def _pinned(cell):
    """A/B on a CPU: both sides' workers pinned to the same cores (measure.pin_cpus), or each
    process keeps the core the OS first gave it and a slower core reads as a code change."""
    if cell.device != "cpu" or cell.measure.pin_cpus:
        return cell
    return cell.model_copy(update={"measure": cell.measure.model_copy(update={"pin_cpus": True})})


def _is_recipe_suite(path: str) -> bool:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_suite reports it
    return isinstance(raw, dict) and "recipes" in raw and "sweep" not in raw


def _run_recipe_suite(suite_path, out_dir, results_dir, dry_run):
    """A suite of recipes (``recipes:`` instead of ``sweep:``): each into its own directory."""
    from archbench.recipes.runner import RecipeError, load_recipe_suite, run_suite
    from archbench.store import new_run_id

    try:
        raw = load_recipe_suite(suite_path)
    except RecipeError as e:
        _fail(str(e))
    if dry_run:
        for i, entry in enumerate(raw["recipes"]):
            click.echo(f"{i}: {entry['recipe']}  {', '.join(f'{k}={v}' for k, v in entry.items() if k != 'recipe')}")
        click.echo(f"{len(raw['recipes'])} recipes")
        return
    out = Path(out_dir) if out_dir else Path(results_dir) / str(raw.get("name", "recipes")) / new_run_id()
    from archbench.recipes.progress import RecipeProgress

    with RecipeProgress() as view:
        run = run_suite(raw, out, on_event=view.print, progress=view)
    rows = run.rows()
    failed = [r for r in rows if r.get("status") != "ok"]
    _write_report([out], out / "report.html")
    click.echo(f"report: {out / 'report.html'}\nrows: {run.rows_path}  ({len(rows)} rows, {len(failed)} failed)")
    sys.exit(EXIT_FAILED_CELLS if failed else EXIT_OK)


def _check_devices(suite_path: str, cells) -> None:
    if any(c.device.startswith("cuda") for c in cells):
        import torch

        if not torch.cuda.is_available():
            if any(c.mode == "task" for c in cells):
                hint = f"archbench run {suite_path} --device cpu --set defaults.train.steps=200 --set 'sweep.d_model=[64]'"
            else:
                hint = f"archbench run {suite_path} --device cpu --set 'sweep.seq_len=[1024,2048]' --set 'sweep.batch=[1]'"
            _fail(
                f"{suite_path} asks for a CUDA device and this machine has none (torch {torch.__version__}); "
                f"to run a reduced grid on the CPU instead: {hint}"
            )


def _run_with_progress(runner):
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from archbench.log_lines import Throttle

    console = Console(stderr=True)
    if not console.is_terminal:  # logs (CI, nohup): no wrapping at 80 columns
        console = Console(stderr=True, width=200)
    lines = None if console.is_terminal else Throttle()  # logs: bars draw nothing until the end
    colors = {"ok": "green", "oom": "yellow", "unsupported": "dim", "skipped": "dim"}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=runner.total_steps)
        training = {}  # a bar per task cell in flight: optimiser steps of its current run

        def on_start(i, cell):
            progress.update(task, description=escape(cell.label))

        def on_progress(cell, info):
            desc = f"  {cell.arch} train run {info.get('run', 1)}/{info.get('runs', 1)} lr={info.get('lr', 0):g} seed={info.get('seed')}  score={info.get('score', float('nan')):.3f}"
            if cell.key not in training:
                training[cell.key] = progress.add_task(desc, total=info.get("steps", 1))
            progress.update(training[cell.key], description=escape(desc), completed=info.get("step", 0), total=info.get("steps", 1))
            if lines is not None and lines.due(cell.key):
                progress.console.print(escape(f"{desc}  step {info.get('step', 0)}/{info.get('steps', 1)}  ({cell.label})"))

        def on_row(i, cell, row):
            status = row["status"]
            detail = ""
            if cell.key in training:
                progress.remove_task(training.pop(cell.key))
            if status == "ok" and row.get("task_score") is not None:
                capped = f", {row['out_of_time']} run(s) stopped at max_train_s" if row.get("out_of_time") else ""
                detail = f"{row['task_metric']} {row['task_score']:.3f} (best lr {row.get('best_lr'):g}, {row.get('train_wall_s', 0):.0f} s training{capped})"
                if row.get("diverged"):
                    detail += f"; {row['diverged']} training run(s) diverged (loss not finite)"
            elif status == "ok" and row.get("time_median_s") is not None:
                detail = f"{row['time_median_s'] * 1e3:9.3f} ms  (n={row.get('repeats')}, iqr/med={row.get('time_rel_iqr', 0):.1%})"
            elif row.get("error"):
                detail = str(row["error"]).splitlines()[0][:160]
            color = colors.get(status, "red")
            label = cell.label + (f"  [round {row['round']}/{row['rounds']}]" if row.get("round") else "")
            progress.console.print(f"[{color}]{status:>11}[/] {escape(label)}  {escape(detail)}")
            progress.advance(task)

        runner.on_start, runner.on_row, runner.on_progress = on_start, on_row, on_progress
        summary = runner.run()
        progress.update(task, description="done")
    return summary


def _report_rows(run_dirs):
    """The rows of ``run_dirs`` for a report: the last row per cell and way of timing
    (``report.groups.latest_rows``), each marked with whether its backend is the catalogue's
    pure-PyTorch reference (the last backend of its ArchSpec) so the report can say so.

    Lines of rows files the store's reader skipped become ``df.attrs["skipped_note"]``, one line
    the report shows as a banner."""
    from archbench import registry
    from archbench.report.groups import latest_rows
    from archbench.store import describe_skipped, load

    loaded = load(*run_dirs, all_rows=True)
    note = describe_skipped(loaded.attrs.get("skipped_lines") or [])
    df = latest_rows(loaded)
    df.attrs["skipped_note"] = note or ""
    if df.empty or "arch" not in df or "backend" not in df:
        return df
    refs = {}
    for arch in {a for a in df["arch"] if isinstance(a, str)}:
        try:
            spec = registry.get(arch)
        except Exception:  # an arch this checkout does not know: the report falls back to backend names
            continue
        if len(spec.backends) > 1:
            refs[arch] = spec.backends[-1].name
    df["reference_backend"] = [
        (b == refs[a]) if isinstance(a, str) and a in refs and isinstance(b, str) else None
        for a, b in zip(df["arch"], df["backend"])
    ]
    return df


def _write_report(run_dirs, out_path, comparison=None, reference="softmax_attention") -> Path:
    from archbench.report import write_html
    from archbench.store import load_meta

    return write_html(_report_rows(run_dirs), load_meta(*run_dirs), out_path, comparison=comparison,
                      reference=reference)


# ---- status -----------------------------------------------------------------------------


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--suite", "suite_path", help="The suite file, to print complete resume commands.")
def status(run_dir, suite_path):
    """Where RUN stands: per shard, cells with a row out of its cells, how they ended, and whether
    it is running, complete, interrupted or dead (its process gone without finishing: the line
    says how to resume it); then the failed cells. Exit 0, or 2 when RUN is not a run."""
    from archbench.status import read_status, render

    try:
        st = read_status(run_dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e).splitlines()[0])
    meta_suite = suite_path or (json.loads((Path(run_dir) / "run.json").read_text()).get("suite_path") if (Path(run_dir) / "run.json").is_file() else None)
    for line in render(st, meta_suite):
        click.echo(line)


# ---- report -----------------------------------------------------------------------------


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default for html: RUN_DIR/report.html for one run, reports/report.html for several; md prints to stdout). answers.json is written beside the page.")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True, help="html: the interactive page (+ a CSV of its data and answers.json); md: a Markdown summary, e.g. for a CI comment.")
@click.option("--reference", default="softmax_attention", show_default=True, help="The arch that crossover lengths and ratio tables are measured against.")
@click.option("--compare", "compare_pair", nargs=2, type=click.Path(), metavar="BASE HEAD", help="Add a B/A section: every cell both runs measured, HEAD against BASE, with significance (devices may differ here).")
def report(run_dirs, output, fmt, reference, compare_pair):
    """Render a report from one or more RUN_DIRS (run directories, or folders holding them).

    Several runs are merged into one report; rows measured on different devices or
    configurations are labelled and never compared. `--compare BASE HEAD` adds B/A per cell.

    \b
    archbench report results/long-context/20260101-120000
    archbench report results/baselines/nvidia-h100 results/baselines/nvidia-h200 -o reports/gpus.html
    archbench report --compare results/smoke/base results/smoke/head
    """
    from archbench.store import find_run_dirs

    try:
        dirs = find_run_dirs(list(run_dirs) + list(compare_pair or ()))
        pair = find_run_dirs([compare_pair[0]]) + find_run_dirs([compare_pair[1]]) if compare_pair else []
    except FileNotFoundError as e:
        _fail(str(e))
    if not dirs:
        _fail(f"no runs found under {', '.join(run_dirs) or '(nothing given)'}; name a run directory, or --compare BASE HEAD")
    if compare_pair and len(pair) != 2:
        _fail(f"--compare takes two run directories; {' and '.join(compare_pair)} hold {len(pair)} runs")
    comparison = _two_run_comparison(pair) if compare_pair else None
    if fmt == "md":
        from archbench.report import render_markdown
        from archbench.store import load_meta

        text = render_markdown(_report_rows(dirs), load_meta(*dirs), reference)
        if comparison is not None:
            from archbench.compare import format_markdown

            text += "\n" + format_markdown(comparison)
        if output:
            Path(output).write_text(text)
            click.echo(str(output))
        else:
            click.echo(text)
        return
    if output is None:
        output = dirs[0] / "report.html" if len(dirs) == 1 else Path("reports") / "report.html"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    path = _write_report(dirs, output, comparison.to_json() if comparison is not None else None, reference)
    click.echo(str(path))


def _two_run_comparison(dirs):
    """HEAD (the second) against BASE, per cell, for the report's B/A section. Devices may
    differ here (it is a report, not a gate); the section says so. Exits 2 when the two share
    no cell."""
    from archbench.compare import CompareError, compare

    try:
        return compare(dirs[0], dirs[1], force=True)
    except CompareError as e:
        _fail(f"--compare: {e}")


# ---- advise -----------------------------------------------------------------------------


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--seq-len", "-T", "seq_len", required=True, type=click.IntRange(min=1), help="Sequence length (decode: tokens of context) to answer for.")
@click.option("--batch", "-B", default=1, show_default=True, type=click.IntRange(min=1), help="Sequences per call.")
@click.option("--mode", default="prefill", show_default=True, type=click.Choice(["fwd", "fwd_bwd", "prefill", "decode"]), help="What the model does: fwd_bwd for training, prefill for a prompt, decode for generation.")
@click.option("--memory-gib", type=click.FloatRange(min=0, min_open=True), help="Leave out what needs more peak memory than this (GiB).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Leave out archs whose best task score (e.g. MQAR accuracy) is below this, or unmeasured.")
@click.option("--json", "as_json", is_flag=True, help="The ranking as JSON.")
def advise(run_dirs, seq_len, batch, mode, memory_gib, min_accuracy, as_json):
    """Which architecture for this point? A ranking from measured rows, per device and configuration.

    Each entry gives its latency at --seq-len (measured, interpolated in log-log between the two
    nearest measured lengths, or extrapolated beyond them: marked), its peak memory and accuracy,
    the rows it rests on, and marks for noisy cells and pure-PyTorch reference backends. Exit 2
    with one line when the runs hold nothing comparable for that point.

    \b
    archbench advise results/baselines/nvidia-h100 --seq-len 16384 --batch 1
    archbench advise RUN --seq-len 4096 --mode decode --memory-gib 40
    archbench advise RUN_A RUN_B -T 8192 -B 4 --mode fwd_bwd --min-accuracy 0.9 --json
    """
    from archbench.report.advise import AdviseError, format_advice
    from archbench.report.advise import advise as rank
    from archbench.store import find_run_dirs

    try:
        dirs = find_run_dirs(run_dirs)
    except FileNotFoundError as e:
        _fail(str(e))
    if not dirs:
        _fail(f"no runs found under {', '.join(run_dirs)}")
    try:
        results = rank(_report_rows(dirs), seq_len, batch, mode, memory_gib, min_accuracy)
    except AdviseError as e:
        _fail(str(e))
    if as_json:
        from archbench.report.answers import to_json

        click.echo(to_json({"seq_len": seq_len, "batch": batch, "mode": mode, "groups": results}), nl=False)
    else:
        click.echo(format_advice(results))


# ---- ab ---------------------------------------------------------------------------------


@main.command()
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--base", "base_spec", default=".", show_default=True, help="Side A: a git revision (HEAD~1, main, a sha), a directory holding another checkout, or '.' for this code.")
@click.option("--head", "head_spec", default=".", show_default=True, help="Side B, as --base.")
@click.option("--rounds", default=12, show_default=True, type=click.IntRange(min=1), help="Times each cell is measured on each side, alternating A B, B A, ...; the verdict is a signed-rank test on the per-round ratios, which needs >= 8 rounds at alpha 0.01 (fewer: underpowered, exit 3).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite value for both sides (repeatable).")
@click.option("--base-set", "base_sets", multiple=True, metavar="KEY=VALUE", help="Override for side A only, e.g. --base-set sweep.backend=sdpa (cells pair by position).")
@click.option("--head-set", "head_sets", multiple=True, metavar="KEY=VALUE", help="Override for side B only.")
@click.option("--device", help="Run every cell on this device, overriding the suite.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the two run directories go (default: results/<suite>/ab-<id>).")
@click.option("--threshold", default=1.10, show_default=True, type=click.FloatRange(min=1.0, min_open=True), help="B/A ratio beyond which a significant change counts.")
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), help="Significance level of the paired signed-rank test on the rounds (each round is an independent unit, so its p-value is honest; compare's stricter 0.002 guards pooled per-call samples, which are not).")
@click.option("--allow-underpowered", is_flag=True, help="Exit 0 instead of 3 when too few rounds were run to reach alpha and nothing regressed.")
@click.option("--format", "fmt", type=click.Choice(["text", "md", "json"]), default="text", show_default=True, help="How to print the comparison.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the comparison to this file.")
def ab(suite_path, base_spec, head_spec, rounds, overrides, base_sets, head_sets, device, out_dir, threshold, alpha,
       allow_underpowered, fmt, output):
    """Measure SUITE with two versions of the code (or two settings), interleaved, and compare.

    Each side runs in its own worker importing its own copy of archbench; every cell is
    measured --rounds times alternately on the two sides, so machine drift cancels. Writes
    OUT/base and OUT/head (ordinary run directories) and prints B/A per cell, judged on the
    per-round ratios with a paired signed-rank test (docs/ci.md). Exit 1 when a cell
    regressed, 3 when none did but some cell is underpowered (too few rounds or failed
    rounds), 0 otherwise, 2 on bad input.
    """
    import tempfile

    from archbench.ab import ABError, materialize, run_ab
    from archbench.compare import compare, format_json, format_markdown, format_text
    from archbench.measure.env import collect_env
    from archbench.store import new_run_id
    from archbench.suite import SuiteError, load_suite

    common = list(overrides) + ([f"defaults.device={device}"] if device else [])
    try:
        base_suite = load_suite(suite_path, common + list(base_sets))
        head_suite = load_suite(suite_path, common + list(head_sets))
        base_cells, head_cells = [_pinned(c) for c in base_suite.cells()], [_pinned(c) for c in head_suite.cells()]
    except SuiteError as e:
        _fail(str(e))
    _check_devices(suite_path, base_cells + head_cells)
    out = Path(out_dir) if out_dir else Path("results") / base_suite.name / f"ab-{new_run_id()}"
    if (out / "base" / "rows.jsonl").exists():
        _fail(f"{out} already holds an A/B run; choose another --out")
    with tempfile.TemporaryDirectory(prefix="archbench-ab-") as work:
        try:
            base = materialize(base_spec, "base", Path(work))
            head = materialize(head_spec, "head", Path(work))
            click.echo(f"archbench ab: {len(base_cells)} cells x {rounds} rounds; A = {base.label}; B = {head.label}; out {out}", err=True)
            env = collect_env(base_cells[0].device)

            def on_row(i, cell, side, row):
                detail = f"{row['time_median_s'] * 1e3:9.3f} ms" if row.get("time_median_s") else str(row.get("error") or "")[:120]
                click.echo(f"[round {row['ab_round']}/{rounds}, {i + 1}/{len(base_cells)}] {side:>4} {row['status']:>11} "
                           f"{cell.label}  {detail}", err=True)  # fmt: skip

            meta = {"suite": base_suite.name, "suite_path": str(suite_path), "suite_config": base_suite.raw}
            base_dir, head_dir = run_ab(base_cells, head_cells, base, head, out, rounds=rounds,
                                        plugins=base_suite.model.plugins, env=env, meta=meta, on_row=on_row)  # fmt: skip
        except ABError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo(f"interrupted; rows so far are in {out}", err=True)
            sys.exit(EXIT_INTERRUPTED)
    cmp = compare(base_dir.path, head_dir.path, threshold=threshold, alpha=alpha, force=True,
                  allow_underpowered=allow_underpowered)  # fmt: skip
    text = {"text": format_text, "md": format_markdown, "json": format_json}[fmt](cmp)
    click.echo(text)
    if output:
        Path(output).write_text(text)
    sys.exit(cmp.exit_code)


# ---- recipes ----------------------------------------------------------------------------


def _run_recipe_cli(name, overrides, out_dir, threads):
    import torch

    from archbench.recipes.runner import RecipeError, parse_overrides, run_recipe
    from archbench.store import new_run_id

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir) if out_dir else Path("results") / f"recipe-{name}" / new_run_id()
    if (out / "rows.jsonl").exists():
        _fail(f"{out} already holds a run; choose another --out")
    try:
        from archbench.recipes.progress import RecipeProgress

        with RecipeProgress() as view:
            summary = run_recipe(name, parse_overrides(overrides), out, progress=view)
    except RecipeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        click.echo(f"interrupted; what was written is in {out}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(json.dumps(summary, indent=2, default=str))
    click.echo(f"run: {out}", err=True)


@main.command()
@click.argument("method", type=click.Choice(["radlads", "rad", "bridge"]))
@click.option("--teacher", default="default", show_default=True, help="'default' (a byte-level Llama pre-trained here on the stdlib corpus and cached) or a local transformers model directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="A recipe setting, e.g. --set step1_tokens=50000 or --set teacher_spec.steps=300 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: results/recipe-<method>/<run-id>).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (1 is fastest for these tiny models on a busy 2-core machine).")
def convert(method, teacher, overrides, out_dir, threads):
    """Convert or distil a softmax transformer into an efficient student and measure both.

    \b
    radlads  attention -> linear attention (RADLADS): align, distil, fine-tune
    rad      redundancy-aware hybrid: replace the most redundant attention layers with Mamba2
    bridge   cross-attention knowledge transfer from a frozen big model (LLM Modules)

    Writes rows.jsonl (teacher and student quality side by side), losses, run.json and the
    student's safetensors into the run directory.
    """
    _run_recipe_cli(method, [f"teacher={teacher}", *overrides], out_dir, threads)


@main.command()
@click.argument("model", default="default")
@click.option("--k", "k", type=click.IntRange(min=1), default=2, show_default=True, help="Attention layers to replace with Mamba2.")
@click.option("--search", type=click.Choice(["bo", "greedy"]), default="bo", show_default=True, help="Which search picks the layers (both are run and stored).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="A RAD setting, e.g. --set steps=100 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: results/recipe-rad/<run-id>).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
def redundancy(model, k, search, overrides, out_dir, threads):
    """Rank MODEL's attention layers by redundancy (self-speculative decoding acceptance with
    the layers skipped; Bayesian optimisation and greedy search), replace the k most redundant
    with Mamba2 mixers initialised from the attention weights, distil them, and compare with
    replacing k evenly spaced layers. MODEL: 'default' or a local transformers model directory."""
    _run_recipe_cli("rad", [f"teacher={model}", f"k={k}", f"search={search}", *overrides], out_dir, threads)


# ---- list -------------------------------------------------------------------------------


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
@click.option("--device", help="Check backend availability for this device (default: cuda if present, else cpu).")
@click.option("--dtype", default=None, help="Also check dtype support (e.g. bfloat16).")
@click.option("--family", default=None, help="Only architectures whose family starts with this (e.g. linear).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True,
              help="table: availability on this machine; json: the same for scripts (= --json); markdown: the "
                   "catalogue as a Markdown table, independent of this machine (the README's copy is this output).")
def list_(as_json, device, dtype, family, fmt):
    """The architecture catalogue, with each backend's availability on this machine (✓ trains and runs,
    ◐ forward only: fwd_bwd and task cells use the next backend, ◌ only under Triton's CPU interpreter
    (TRITON_INTERPRET=1: for tests, never timed), ✗ unavailable, with the reason).

    \b
    archbench list                          every architecture, availability here
    archbench list --family linear          linear/* only
    archbench list --device cuda --dtype bfloat16
    archbench list --format markdown        the catalogue table of the README
    """
    from archbench import registry

    if fmt == "markdown":
        from archbench.catalogue_table import markdown_table

        click.echo(markdown_table(registry.all_specs(), family=family), nl=False)
        return
    as_json = as_json or fmt == "json"

    device = device or _default_device()
    entries = []
    for spec in registry.all_specs():
        if family and not spec.family.startswith(family):
            continue
        backends = []
        for b in spec.backends:
            reason = b.unavailable_reason(device, dtype)
            backward = None if reason else b.unavailable_reason(device, dtype, backward=True)
            interpreted = reason is None and b.interpreted_only(device)
            backends.append({"name": b.name, "description": b.description, "available": reason is None, "reason": reason,
                             "trainable": reason is None and backward is None, "backward_reason": backward,
                             "interpreted": interpreted})  # fmt: skip
        entries.append(
            {
                "name": spec.name,
                "family": spec.family,
                "description": spec.description,
                "paper": spec.paper,
                "complexity": vars(spec.complexity),
                "has_decode": spec.has_decode,
                "backends": backends,
            }
        )
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"archbench architectures (availability on {device}{'/' + dtype if dtype else ''})")
    for col in ("name", "family", "description", "train / decode time", "backends"):
        table.add_column(col)
    for e in entries:
        bk = "\n".join(
            f"[cyan]◌[/] {b['name']}: Triton's interpreter only (for tests; auto and suites never use it here)"
            if b["interpreted"]
            else (f"[green]✓[/] {b['name']}" if b["trainable"] else f"[yellow]◐[/] {b['name']}: forward only ({escape(b['backward_reason'])})")
            if b["available"] else f"[red]✗[/] {b['name']}: {escape(b['reason'])}"
            for b in e["backends"]
        )  # fmt: skip
        cx = e["complexity"]
        table.add_row(escape(e["name"]), e["family"], escape(e["description"]), f"{cx['train_time']} / {cx['decode_time']}", bk)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


# ---- env --------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json):
    """This machine: device, torch/CUDA, optional kernel packages, NVML."""
    import torch

    from archbench.measure.env import OPTIONAL_PACKAGES, collect_env, package_version

    device = _default_device()
    info = collect_env(device)
    info["device"] = device
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_threads"] = torch.get_num_threads()
    info["optional_packages"] = {p: package_version(p) for p in OPTIONAL_PACKAGES}
    info["nvml"] = _nvml_status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b or 'not installed'}" for a, b in v.items())
        click.echo(f"{k:<{width}}  {v}")


def _nvml_status() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return f"ok ({n} device(s))"
    except Exception as e:  # no driver on CPU machines
        return f"unavailable ({type(e).__name__})"


# ---- compare / baseline -------------------------------------------------------------------

EXIT_REGRESSED = EXIT_FAILED_CELLS  # compare: some cell got slower (or bigger) beyond the threshold
EXIT_UNDERPOWERED = 3  # compare / ab: no regression, but some cell's samples could not show one (archbench.gate)


@main.command(name="compare")
@click.argument("base", metavar="BASE", type=click.Path())
@click.argument("head", metavar="HEAD", type=click.Path())
@click.option(
    "--threshold",
    type=float,
    default=1.10,
    show_default=True,
    help="A cell regresses when HEAD/BASE of its medians exceeds this (and the change is significant); it improves below 1/threshold.",
)
@click.option(
    "--metric",
    type=click.Choice(["latency", "memory", "energy"]),
    default="latency",
    show_default=True,
    help="latency: median time per call, with significance tests on the raw samples; memory: peak bytes; energy: joules per call (memory and energy: the threshold alone).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "md", "json"]),
    default="text",
    show_default=True,
    help="text: an aligned table; md: a GitHub-comment-ready summary (regressions first, the rest folded); json: everything, for tools.",
)
@click.option(
    "--alpha",
    type=float,
    default=0.002,
    show_default=True,
    help="Significance level of the two-sided Mann-Whitney U test (latency only).",
)
@click.option("--force", is_flag=True, help="Compare even when BASE and HEAD were measured on different device models or come from different suites.")
@click.option("--allow-underpowered", is_flag=True, help="Exit 0 instead of 3 when cells are underpowered (too few samples to reach alpha) and none regressed.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the report to this file and print only the verdict line.",
)
def compare_cmd(base, head, threshold, metric, fmt, alpha, force, allow_underpowered, output):
    """Compare HEAD against BASE cell by cell; exit 1 if any cell regressed.

    BASE and HEAD are run directories (holding rows.jsonl) or baseline JSON files from
    `archbench baseline save`. Cells are matched by key; cells on one side only are listed
    as added/removed, and cells that are not ok on a side are listed with their status.

    \b
    Latency decision, per cell, with r = median(HEAD) / median(BASE):
      regressed      r > threshold and significant
      improved       r < 1/threshold and significant
      underpowered   too few samples for any difference to reach alpha (fails, exit 3)
      insignificant  beyond the threshold but not significant (does not fail)
      unchanged      within the threshold
    Significant: Mann-Whitney U two-sided p < alpha on the raw samples, or the
    distribution-free 99% intervals of the two medians do not overlap; for the two
    sides of one `archbench ab` run, the exact Wilcoxon signed-rank test on the
    per-round ratios (r is then their median). At alpha 0.002 that needs >= 8
    samples per side, or >= 10 A/B rounds (`ab` itself defaults to alpha 0.01:
    >= 8 rounds). See docs/ci.md.

    \b
    Exit codes: 0 no regression; 1 some cell regressed; 2 bad input (a missing path,
    no common cells, an ok cell without raw samples, different devices or suites
    without --force); 3 no regression but some cell underpowered (0 with
    --allow-underpowered).

    \b
    archbench ab suites/gate-cpu.yaml --base origin/main --head .     (the gate with power)
    archbench compare results/baselines/ci.json results/gate-cpu/20260101-120000
    archbench compare BASE_RUN HEAD_RUN --format md -o comment.md
    """
    from archbench.compare import CompareError, compare, format_json, format_markdown, format_text

    try:
        result = compare(base, head, threshold=threshold, metric=metric, alpha=alpha, force=force,
                         allow_underpowered=allow_underpowered)  # fmt: skip
    except CompareError as e:
        _fail(str(e))
    text = {"text": format_text, "md": format_markdown, "json": format_json}[fmt](result)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{result.summary()}  -> {output}")
    else:
        click.echo(text, nl=False)
    if result.exit_code:
        sys.exit(result.exit_code)


@main.group()
def baseline() -> None:
    """Reference results to compare against, saved as one JSON file (small enough to check in).

    \b
    archbench baseline save results/smoke/20260101-120000 results/baselines/smoke-cpu.json
    archbench compare results/baselines/smoke-cpu.json results/smoke/20260102-090000
    """


@baseline.command(name="save")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path())
@click.argument("path", metavar="PATH", type=click.Path(dir_okay=False))
def baseline_save(run_dir, path):
    """Save the cells of RUN_DIR as a baseline JSON at PATH (overwritten if present).

    The file keeps, per cell key: the cell's identity fields, status, median time and raw
    samples, peak memory and energy per call; plus the device, an environment summary
    (torch, CUDA, driver, kernel packages, git revision), the source run id and the time
    it was written. `archbench compare` accepts it as BASE or HEAD.
    """
    from archbench.compare import CompareError, save_baseline

    try:
        out = save_baseline(run_dir, path)
    except CompareError as e:
        _fail(str(e))
    click.echo(str(out))


# ---- export / push ------------------------------------------------------------------------


@main.command(name="export")
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="rows.parquet (needs the export extra: pyarrow), rows.csv or rows.jsonl.")
@click.option("--all-rows", is_flag=True, help="Keep every attempt of a retried cell, not only the last.")
def export_cmd(runs, output, all_rows):
    """Write the rows of one or more runs as one table (Parquet, CSV or JSON Lines).

    Every row gets `schema_version` and `run_dir`, and the environment as `env_*` columns.
    Parquet keeps every column's type (mappings and lists of records as JSON text, named in
    the file's metadata); see docs/checkpoints.md for a DuckDB query over it.

    \b
    archbench export results/checkpoints/20260101-120000 -o rows.parquet
    archbench export results/ -o all.jsonl          every run under results/
    """
    from archbench.export import ExportError, export
    from archbench.store import describe_skipped, skipped_lines

    try:
        path, n = export(runs, output, all_rows=all_rows)
    except ExportError as e:
        _fail(str(e))
    click.echo(f"{n} rows -> {path}")
    note = describe_skipped(skipped_lines(*runs))
    if note:
        click.echo(f"warning: {note}", err=True)


@main.command(name="push")
@click.argument("run", metavar="RUN", type=click.Path())
@click.option("--repo-id", required=True, help="The Hugging Face dataset to upload to, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the dataset private (when it does not exist yet).")
@click.option("--token", envvar="HF_TOKEN", default=None, help="A hub token (default: HF_TOKEN or `hf auth login`).")
def push_cmd(run, repo_id, private, token):
    """Upload a run to a Hugging Face dataset: data/<suite>/<run-id>.parquet (.jsonl without
    pyarrow) and its run.json, in one commit. Needs the hub extra (huggingface_hub).

    \b
    archbench push results/checkpoints/20260101-120000 --repo-id my-org/archbench-results
    """
    from archbench.export import ExportError, push

    try:
        url = push(run, repo_id, private=private, token=token)
    except ExportError as e:
        _fail(str(e))
    click.echo(url)


if __name__ == "__main__":  # pragma: no cover
    main()
