"""``archbench compare``, ``archbench baseline save`` and ``archbench ab``: the regression gate,
between two runs or two code versions measured side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from archbench.cli.exits import EXIT_INTERRUPTED, fail


@click.command(name="compare")
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
    from archbench.compare import CompareError, compare
    from archbench.compare_format import format_json, format_markdown, format_text

    try:
        result = compare(base, head, threshold=threshold, metric=metric, alpha=alpha, force=force,
                         allow_underpowered=allow_underpowered)  # fmt: skip
    except CompareError as e:
        fail(str(e))
    text = {"text": format_text, "md": format_markdown, "json": format_json}[fmt](result)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{result.summary()}  -> {output}")
    else:
        click.echo(text, nl=False)
    if result.exit_code:
        sys.exit(result.exit_code)


@click.group()
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
    from archbench.compare_sides import CompareError, save_baseline

    try:
        out = save_baseline(run_dir, path)
    except CompareError as e:
        fail(str(e))
    click.echo(str(out))


# ---- ab ---------------------------------------------------------------------------------


@click.command()
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

    from archbench.compare import compare
    from archbench.compare_format import format_json, format_markdown, format_text
    from archbench.measure.env import collect_env
    from archbench.run.ab import ABError, materialize, pinned, run_ab
    from archbench.run.session import RunError, check_devices
    from archbench.store import new_run_id
    from archbench.suite import SuiteError, load_suite

    common = list(overrides) + ([f"defaults.device={device}"] if device else [])
    try:
        base_suite = load_suite(suite_path, common + list(base_sets))
        head_suite = load_suite(suite_path, common + list(head_sets))
        base_cells, head_cells = [pinned(c) for c in base_suite.cells()], [pinned(c) for c in head_suite.cells()]
    except SuiteError as e:
        fail(str(e))
    try:
        check_devices(suite_path, base_cells + head_cells)
    except RunError as e:
        fail(str(e))
    out = Path(out_dir) if out_dir else Path("results") / base_suite.name / f"ab-{new_run_id()}"
    if (out / "base" / "rows.jsonl").exists():
        fail(f"{out} already holds an A/B run; choose another --out")
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
            fail(str(e))
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
