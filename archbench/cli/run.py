"""``archbench run`` and ``archbench status``: execute a suite into a run directory (``archbench.run``
does the work), and read where a run stands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from archbench.cli.exits import EXIT_FAILED_CELLS, fail


@click.command()
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
    from archbench.run.plan import PlanError, parse_shard
    from archbench.run.pool import slots_for
    from archbench.run.session import RunError, check_devices
    from archbench.suite import SuiteError, load_suite

    overrides = list(overrides)
    shard = None
    try:
        shard = parse_shard(shard_spec) if shard_spec else None
    except PlanError as e:
        fail(str(e))
    if executor != "local":
        if shard or gpus or workers:
            fail(f"--executor {executor} runs the shards itself: give --shards N instead of --shard, --gpus or --workers")
        if not shards:
            fail(f"--executor {executor} needs --shards N: how many tasks the sweep is split into")
    elif shards or ray_address or slurm_local:
        fail("--shards, --ray-address and --slurm-local go with --executor slurm or ray; for one shard here use --shard i/N")
    if jobs > 1 and workers:
        fail("give --jobs or --workers, not both (--workers also gives each worker its own cores)")
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
        fail(str(e))
    all_cells = cells
    if shard:
        from archbench.run.plan import shard as shard_of

        cells = shard_of(all_cells, *shard, keys=suite.keys())
    try:
        slots = slots_for(gpus, workers, cells)
        if executor == "local":  # a submitting machine (a login node) needs no GPU of its own
            check_devices(suite_path, cells)
    except (PlanError, RunError) as e:
        fail(str(e))
    if slots and len(slots) > 1 and rounds > 1 and gpus:
        fail("--rounds pools a cell's rounds on one device; with --gpus run one GPU per shard instead (--shard i/N)")

    if dry_run:
        for c in cells:
            click.echo(f"{c.key}  {c.label}  device={c.device}")
        click.echo(f"{len(cells)} cells" + (f" in shard {shard[0]}/{shard[1]} (of {len(all_cells)})" if shard else ""))
        return

    if allow_changed and not resume:
        fail("--allow-changed goes with --resume (it accepts a suite that changed since the run began)")
    if executor != "local":
        return _run_distributed(executor, suite, suite_path, all_cells, overrides, device, out_dir, results_dir, resume,
                                allow_failures, no_report, shards, gpus_per_shard, retries,
                                dict(partition=partition, time_min=time_min, account=account, local=slurm_local),
                                ray_address)  # fmt: skip
    run_suite_here(suite, suite_path, cells, all_cells=all_cells, shard=shard, overrides=overrides, out_dir=out_dir,
                   results_dir=results_dir, resume=resume, allow_changed=allow_changed, jobs=jobs, rounds=rounds,
                   slots=slots, no_report=no_report, allow_failures=allow_failures)  # fmt: skip


def _say(line: str) -> None:
    click.echo(line, err=True)


def run_suite_here(suite, suite_path, cells, *, all_cells=None, shard=None, overrides=(), out_dir=None, results_dir="results",
                   resume=False, allow_changed=False, jobs=1, rounds=1, slots=None, no_report=False,
                   allow_failures=False) -> None:
    """``run`` (and ``convert``) in this process: one session over its run directory, then the exit code of how it ended."""
    from archbench.cli.progress import run_with_progress
    from archbench.cli.report import write_report_atomically
    from archbench.run.session import RunError, RunSession
    from archbench.run.signals import signal_name
    from archbench.store import StoreError

    try:
        with RunSession.open(suite, suite_path, cells, all_cells=all_cells, out_dir=out_dir, results_dir=results_dir,
                             resume=resume, shard=shard, overrides=list(overrides), say=_say) as session:
            summary = session.run(allow_changed=allow_changed, jobs=jobs, rounds=rounds, slots=slots, drive=run_with_progress,
                                  write_report=None if no_report else write_report_atomically)
    except (RunError, StoreError) as e:
        fail(str(e))
    if summary.interrupted:
        click.echo(f"interrupted by {signal_name(session.signal)}: rows written so far are kept; rerun with --resume to finish", err=True)
        sys.exit(128 + session.signal)
    if summary.failed and not allow_failures:
        click.echo(f"{summary.failed} cell(s) failed (error/timeout); see the report's Failures section", err=True)
        sys.exit(EXIT_FAILED_CELLS)


def _run_distributed(executor, suite, suite_path, cells, overrides, device, out_dir, results_dir, resume, allow_failures,
                     no_report, n_shards, gpus_per_shard, retries, slurm_opts, ray_address) -> None:
    """``--executor slurm|ray``: the shards handed to the executor (``archbench.run.distributed``),
    then where each stands, the report once every shard is complete, and the exit code."""
    from archbench.cli.report import write_report_atomically
    from archbench.executors import ExecutorError
    from archbench.run.distributed import run_distributed
    from archbench.run.session import RunError
    from archbench.run.status import read_status, render
    from archbench.store import StoreError

    try:
        path, outcome = run_distributed(executor, suite, suite_path, cells, overrides=overrides, device=device, out_dir=out_dir,
                                        results_dir=results_dir, resume=resume, n_shards=n_shards,
                                        gpus_per_shard=gpus_per_shard, retries=retries, slurm_opts=slurm_opts,
                                        ray_address=ray_address, say=_say)  # fmt: skip
    except (ExecutorError, StoreError, RunError) as e:
        fail(str(e))
    for line in render(read_status(path), suite_path):
        click.echo(line, err=True)
    dead = {i: why for i, why in outcome.items() if not isinstance(why, int)}
    if dead:
        click.echo(f"{len(dead)} shard(s) died after {retries + 1} tries (first: shard {min(dead)}/{n_shards}: {dead[min(dead)]}); "
                   f"rerun the same command with --resume to resume them", err=True)  # fmt: skip
        sys.exit(EXIT_FAILED_CELLS)
    if not no_report:
        click.echo(f"report: {write_report_atomically(path)}", err=True)
    if any(rc == EXIT_FAILED_CELLS for rc in outcome.values()) and not allow_failures:
        click.echo("some cells failed (error/timeout); see archbench status and the report's Failures section", err=True)
        sys.exit(EXIT_FAILED_CELLS)


# ---- status -----------------------------------------------------------------------------


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--suite", "suite_path", help="The suite file, to print complete resume commands.")
def status(run_dir, suite_path):
    """Where RUN stands: per shard, cells with a row out of its cells, how they ended, and whether
    it is running, complete, interrupted or dead (its process gone without finishing: the line
    says how to resume it); then the failed cells. Exit 0, or 2 when RUN is not a run."""
    from archbench.run.status import read_status, render

    try:
        st = read_status(run_dir)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])
    meta_suite = suite_path or (json.loads((Path(run_dir) / "run.json").read_text()).get("suite_path") if (Path(run_dir) / "run.json").is_file() else None)
    for line in render(st, meta_suite):
        click.echo(line)
