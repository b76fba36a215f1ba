"""The ``archbench`` command line: run | report | compare | ab | baseline save | convert | redundancy | list | env |
export | push.

Exit codes: 0 success; 1 the run finished but some cells failed (error / timeout; see
``--allow-failures``), or ``compare`` / ``ab`` found a regressed cell; 2 bad input (a suite error,
an unknown architecture, a missing run, runs that cannot be compared); 3 ``compare`` / ``ab``
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
def run(suite_path, out_dir, resume, device, overrides, results_dir, allow_failures, no_report, dry_run, jobs, rounds,
        allow_changed):
    """Run every cell of SUITE (a YAML file) and write rows.jsonl, run.json and report.html.

    One run writes a run directory at a time (a second is refused); SIGTERM and SIGHUP stop a
    run as Ctrl-C does, keeping its rows for --resume. Exit codes: 0 ok, 1 cells failed, 2 bad
    input / unwritable output / directory in use / suite changed, 129 SIGHUP, 130 Ctrl-C, 143 SIGTERM.
    """
    from archbench.suite import SuiteError, load_suite

    overrides = list(overrides)
    if _is_recipe_suite(suite_path):
        return _run_recipe_suite(suite_path, out_dir, results_dir, dry_run)
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
    _check_devices(suite_path, cells)

    if dry_run:
        for c in cells:
            click.echo(f"{c.key}  {c.label}  device={c.device}")
        click.echo(f"{len(cells)} cells")
        return

    from archbench.store import RunDir, StoreError, create_run_dir, latest_run

    if allow_changed and not resume:
        _fail("--allow-changed goes with --resume (it accepts a suite that changed since the run began)")
    try:
        if out_dir:
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
        summary = _execute_run(suite, suite_path, cells, run_dir, overrides, resume, allow_changed, jobs, rounds, no_report)
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


def _execute_run(suite, suite_path, cells, run_dir, overrides, resume, allow_changed, jobs, rounds, no_report):
    """The body of ``run`` once the run directory is held: plan against what is there, run, record."""
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
        **plan,
    )
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
    runner = Runner(todo, run_dir, plugins=suite.model.plugins, base_row=base_row, env=env, jobs=jobs, rounds=rounds)
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

    if not no_report and not summary.interrupted:
        report_path = _write_report([run_dir.path], run_dir.path / "report.html")
        click.echo(f"report: {report_path}", err=True)
    click.echo(f"rows: {run_dir.rows_path}  ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})", err=True)
    return summary


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


def _write_report(run_dirs, out_path, comparison=None, reference="softmax_attention") -> Path:
    from archbench.report import write_html
    from archbench.store import load, load_meta

    df = load(*run_dirs)
    return write_html(df, load_meta(*run_dirs), out_path, comparison=comparison, reference=reference)


# ---- report -----------------------------------------------------------------------------


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default for html: RUN_DIR/report.html for one run, reports/report.html for several; md prints to stdout).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True, help="html: the interactive page (+ a CSV of its data); md: a Markdown summary, e.g. for a CI comment.")
@click.option("--reference", default="softmax_attention", show_default=True, help="The arch that crossover lengths and ratio tables are measured against.")
def report(run_dirs, output, fmt, reference):
    """Render a report from one or more RUN_DIRS.

    With exactly two runs (A then B) that share cells, the page (and the Markdown) adds B/A per
    cell with significance, as `archbench compare` judges it (devices may differ here)."""
    from archbench.store import find_run_dirs

    try:
        dirs = find_run_dirs(run_dirs)
    except FileNotFoundError as e:
        _fail(str(e))
    if not dirs:
        _fail(f"no runs found under {', '.join(run_dirs)}")
    comparison = _two_run_comparison(dirs)
    if fmt == "md":
        from archbench.report import render_markdown
        from archbench.store import load, load_meta

        text = render_markdown(load(*dirs), load_meta(*dirs), reference)
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
    """Two runs with cells in common: B (the second) against A, per cell, for the report.
    Devices may differ here (it is a report, not a gate); the section says so."""
    if len(dirs) != 2:
        return None
    from archbench.compare import CompareError, compare

    try:
        return compare(dirs[0], dirs[1], force=True)
    except CompareError:
        return None  # no common cells: the page just shows both runs


# ---- ab ---------------------------------------------------------------------------------


@main.command()
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--base", "base_spec", default=".", show_default=True, help="Side A: a git revision (HEAD~1, main, a sha), a directory holding another checkout, or '.' for this code.")
@click.option("--head", "head_spec", default=".", show_default=True, help="Side B, as --base.")
@click.option("--rounds", default=16, show_default=True, type=click.IntRange(min=1), help="Times each cell is measured on each side, alternating A B, B A, ...; the verdict is a signed-rank test on the per-round ratios, which needs >= 10 rounds at alpha 0.002 (fewer: underpowered, exit 3).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite value for both sides (repeatable).")
@click.option("--base-set", "base_sets", multiple=True, metavar="KEY=VALUE", help="Override for side A only, e.g. --base-set sweep.backend=sdpa (cells pair by position).")
@click.option("--head-set", "head_sets", multiple=True, metavar="KEY=VALUE", help="Override for side B only.")
@click.option("--device", help="Run every cell on this device, overriding the suite.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the two run directories go (default: results/<suite>/ab-<id>).")
@click.option("--threshold", default=1.10, show_default=True, type=click.FloatRange(min=1.0, min_open=True), help="B/A ratio beyond which a significant change counts.")
@click.option("--alpha", default=0.002, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), help="Significance level of the paired signed-rank test on the rounds.")
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
                click.echo(f"[{i + 1}/{len(base_cells)}] {side:>4} {row['status']:>11} {cell.label}  {detail}", err=True)

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
    samples per side, or >= 10 A/B rounds. See docs/ci.md.

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

    try:
        path, n = export(runs, output, all_rows=all_rows)
    except ExportError as e:
        _fail(str(e))
    click.echo(f"{n} rows -> {path}")


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
