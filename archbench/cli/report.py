"""``archbench report`` and ``archbench advise``: what measured rows say, as a page or a ranking;
and the report a run writes when it ends (``write_report_atomically``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from archbench.cli.exits import fail


def report_rows(run_dirs):
    """The rows of ``run_dirs`` for a report: the last row per cell and way of timing
    (``report.groups.latest_rows``), each marked with whether its backend is the catalogue's
    pure-PyTorch reference (the backend its ArchSpec flags as the reference) so the report can say so.

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
            refs[arch] = spec.reference.name
    df["reference_backend"] = [
        (b == refs[a]) if isinstance(a, str) and a in refs and isinstance(b, str) else None
        for a, b in zip(df["arch"], df["backend"])
    ]
    return df


def write_report(run_dirs, out_path, comparison=None, reference="softmax_attention") -> Path:
    from archbench.report import write_html
    from archbench.store import load_meta

    return write_html(report_rows(run_dirs), load_meta(*run_dirs), out_path, comparison=comparison,
                      reference=reference)


def write_report_atomically(run_path: Path) -> Path:
    """report.html of a run, written to a temporary name and renamed (shards may end together)."""
    tmp = run_path / f".report-{os.getpid()}"
    write_report([run_path], tmp / "report.html")
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "report.html"):  # the page last: it links the rest
        os.replace(f, run_path / f.name)
    tmp.rmdir()
    return run_path / "report.html"


@click.command()
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
        fail(str(e))
    if not dirs:
        fail(f"no runs found under {', '.join(run_dirs) or '(nothing given)'}; name a run directory, or --compare BASE HEAD")
    if compare_pair and len(pair) != 2:
        fail(f"--compare takes two run directories; {' and '.join(compare_pair)} hold {len(pair)} runs")
    comparison = _two_run_comparison(pair) if compare_pair else None
    if fmt == "md":
        from archbench.report import render_markdown
        from archbench.store import load_meta

        text = render_markdown(report_rows(dirs), load_meta(*dirs), reference)
        if comparison is not None:
            from archbench.compare_format import format_markdown

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
    path = write_report(dirs, output, comparison.to_json() if comparison is not None else None, reference)
    click.echo(str(path))


def _two_run_comparison(dirs):
    """HEAD (the second) against BASE, per cell, for the report's B/A section. Devices may
    differ here (it is a report, not a gate); the section says so. Exits 2 when the two share
    no cell."""
    from archbench.compare import CompareError, compare

    try:
        return compare(dirs[0], dirs[1], force=True)
    except CompareError as e:
        fail(f"--compare: {e}")


# ---- advise -----------------------------------------------------------------------------


@click.command()
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
        fail(str(e))
    if not dirs:
        fail(f"no runs found under {', '.join(run_dirs)}")
    try:
        results = rank(report_rows(dirs), seq_len, batch, mode, memory_gib, min_accuracy)
    except AdviseError as e:
        fail(str(e))
    if as_json:
        from archbench.report.answers import to_json

        click.echo(to_json({"seq_len": seq_len, "batch": batch, "mode": mode, "groups": results}), nl=False)
    else:
        click.echo(format_advice(results))
