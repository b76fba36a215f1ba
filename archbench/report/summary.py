"""Plain-text forms of the report: a Markdown summary (for CI comments and terminals) and
the plotted data as CSV (for people who would rather use their own tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from archbench.report.accuracy import training_note, task_groups, task_table
from archbench.report.analysis import answers, fmt_length
from archbench.report.figures import FAILED_STATUSES, error_excerpt, fmt_num, groups, mode_rank, prepare, text

CSV_COLUMNS = (
    "run_id", "suite", "key", "arch", "family", "backend", "level", "mode", "dtype", "device", "batch", "seq_len",
    "status", "time_median_s", "time_p10_s", "time_p90_s", "time_rel_iqr", "noisy", "repeats", "tokens_per_s",
    "latency_per_token_s", "peak_mem_bytes", "mem_method", "state_bytes", "flops", "achieved_tflops",
    "pct_of_roof", "bound", "energy_j_per_token", "energy_source", "kernels", "cuda_graph", "task", "num_kv_pairs", "d_model",
    "n_layers", "task_metric", "task_score", "task_score_std", "best_lr", "train_steps", "tokens_seen", "error",
)  # fmt: skip


def _md(value: Any) -> str:
    """A table cell: no pipes or newlines that would break the Markdown table."""
    return text(value).replace("|", "\\|").replace("\n", " ")


def _ms(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v * 1e3:.3g}"


def render_markdown(
    df: pd.DataFrame | None, runs: Sequence[Mapping[str, Any]] | None = None, reference: str = "softmax_attention"
) -> str:
    """Per (mode, batch, dtype, device): a table of median ms, one row per arch/backend and one
    column per seq_len (failed cells show their status), then the failures."""
    data = prepare(df)
    runs = list(runs or [])
    suites = sorted({text(s) for s in data.get("suite", pd.Series(dtype=str)).dropna()} | {text(r.get("suite")) for r in runs if r.get("suite")})
    counts = data["status"].value_counts().to_dict() if len(data) else {}
    lines = [f"## archbench: {', '.join(s for s in suites if s) or 'report'}", ""]
    lines.append(f"{len(data)} cells: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append("")
    for g in sorted(groups(data), key=lambda g: (mode_rank(g.rows["mode"].iloc[0]), g.label)):
        rows = g.rows
        lens = sorted({int(t) for t in rows["seq_len"].dropna()})
        if not lens:
            continue
        unit = "ms per call" if text(rows["mode"].iloc[0]) != "decode" else "ms per call of decode_tokens steps"
        lines += [f"### {g.label} (median {unit})", ""]
        lines.append("| arch/backend | " + " | ".join(f"T={t}" for t in lens) + " |")
        lines.append("|---|" + "---|" * len(lens))
        for (arch, backend), cells in rows.groupby(["arch", "backend"], sort=True):
            by_len = {int(r["seq_len"]): r for _, r in cells.iterrows() if r["seq_len"] == r["seq_len"]}
            out = []
            for t in lens:
                r = by_len.get(t)
                if r is None:
                    out.append("")
                elif text(r["status"]) == "ok":
                    out.append(_ms(r["time_median_s"]))
                else:
                    out.append(f"**{_md(r['status'])}**")
            lines.append(f"| {_md(arch)}/{_md(backend)} | " + " | ".join(out) + " |")
        lines.append("")
    table = answers(data, reference)
    if len(table):
        lines += ["### Answers", "", f"| group | arch/backend | faster than {_md(reference)} from T | leaner from T | exponent (fitted / expected) |",
                  "|---|---|---|---|---|"]
        for _, r in table.iterrows():
            fit = r["fitted_exponent"]
            fit_s = "—" if fit is None or fit != fit else f"{fit:.2f}"
            exp = r["expected_exponent"]
            exp_s = "—" if exp is None or exp != exp else f"{exp:g}"
            lines.append(f"| {_md(r['group'])} | {_md(r['arch'])}/{_md(r['backend'])} | {_md(fmt_length(r['faster_from']))} "
                         f"| {_md(fmt_length(r['leaner_from']))} | {fit_s} / {exp_s} |")
        lines.append("")
    for g in task_groups(data):
        table = task_table(g)
        lines += [f"### {g.label} ({g.metric}, best over lr)", "",
                  "| arch/backend | d_model | score | best lr | steps | state bytes |", "|---|---|---|---|---|---|"]  # fmt: skip
        for _, r in table.iterrows():
            spread = f" ± {r['std']:.3f}" if r["n_seeds"] and r["n_seeds"] > 1 else ""
            lines.append(f"| {_md(r['arch'])}/{_md(r['backend'])} | {_md(r['d_model'])} | {r['score']:.4f}{spread}{_md(training_note(r))} "
                         f"| {_md(fmt_num(r['best_lr'], '.3g'))} | {_md(fmt_num(r['steps'], '.0f'))} "
                         f"| {_md(fmt_num(r['state_bytes'], ',.0f'))} |")  # fmt: skip
        lines.append("")
    failed = data[data["status"].isin(FAILED_STATUSES)] if len(data) else data
    if len(failed):
        lines += ["### Failures", ""]
        for _, r in failed.iterrows():
            lines.append(f"- `{_md(r['arch'])}/{_md(r['backend'])}` {_md(r['mode'])} T={_md(r['seq_len'])}: "
                         f"**{_md(r['status'])}** {_md(error_excerpt(r.get('error')))}")
        lines.append("")
    return "\n".join(lines)


def write_csv(df: pd.DataFrame | None, path: str | Path) -> Path:
    """The rows behind the figures (no raw samples) as CSV."""
    data = prepare(df)
    cols = [c for c in CSV_COLUMNS if c in data.columns]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data[cols].to_csv(out, index=False)
    return out
