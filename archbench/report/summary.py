"""Plain-text forms of the report: a Markdown summary (for CI comments and terminals) and
the plotted data as CSV (for people who would rather use their own tools)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from archbench.report.accuracy import training_note, task_groups, task_table
from archbench.report.answers import answer_objects
from archbench.report.figures import groups
from archbench.report.rows import FAILED_STATUSES, mode_rank, prepare
from archbench.report.values import error_excerpt, fmt_num, text
from archbench.report.quality import checkpoint_groups, markdown_lines

CSV_COLUMNS = (
    "run_id", "suite", "key", "arch", "family", "backend", "level", "mode", "dtype", "device", "batch", "seq_len",
    "status", "time_median_s", "time_p10_s", "time_p90_s", "time_rel_iqr", "noisy", "repeats", "tokens_per_s",
    "latency_per_token_s", "peak_mem_bytes", "mem_method", "state_bytes", "flops", "achieved_tflops",
    "pct_of_roof", "bound", "energy_j_per_token", "energy_source", "kernels", "cuda_graph", "task", "num_kv_pairs", "d_model",
    "n_layers", "task_metric", "task_score", "task_score_std", "best_lr", "train_steps", "tokens_seen", "model", "model_architecture", "params", "bits_per_byte",
    "eval_task", "eval_metric", "eval_score", "eval_stderr", "eval_limit", "error",
)  # fmt: skip


_MD_SPECIAL = "\\`*{}[]()<>#+!|~"
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword _ is plain text in GFM
#: Columns written as integers (a missing value stays empty, never "2.0").
INT_COLUMNS = ("batch", "seq_len", "repeats", "peak_mem_bytes", "state_bytes", "num_kv_pairs", "d_model", "n_layers",
               "train_steps", "tokens_seen", "params", "eval_limit")  # fmt: skip


def _md(value: Any) -> str:
    """A table cell as inert Markdown text: every character Markdown or HTML would interpret
    is backslash-escaped (so a name cannot open a link, emphasis or a tag), and no newline
    breaks the table."""
    out = "".join("\\" + c if c in _MD_SPECIAL else c for c in text(value).replace("\n", " "))
    return _EDGE_UNDERSCORE.sub(r"\\_", out)


def _ms(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v * 1e3:.3g}"


def render_markdown(
    df: pd.DataFrame | None, runs: Sequence[Mapping[str, Any]] | None = None, reference: str = "softmax_attention"
) -> str:
    """Per comparable group: a table of median ms, one row per arch/backend and one column per
    seq_len (failed cells show their status), then the answers and the failures. Every text
    from the data is escaped."""
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
    objs = answer_objects(data, reference)
    if objs:
        lines += ["### Answers", "", f"| group | arch/backend | faster than {_md(reference)} | leaner | "
                  "exponent [95% CI], points / expected | flags |", "|---|---|---|---|---|---|"]  # fmt: skip
        for a in objs:
            e = a["exponent"]
            fit_s = "—" if e["value"] is None else f"{e['value']:.2f}" + (
                f" [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]" if e["ci95"] else "") + f", n={e['n_points']}"
            exp_s = "—" if a["expected_exponent"] is None else f"{a['expected_exponent']:g}"
            f = a["flags"]
            flags = ", ".join(n for n, on in (("noisy", f["noisy"]), ("reference backend", f["reference"]),
                                              ("one length", f["single_length"])) if on)  # fmt: skip
            lines.append(f"| {_md(a['group_label'])} | {_md(a['arch'])}/{_md(a['backend'])} | {_md(_cross(a['crossover']))} "
                         f"| {_md(_cross(a['leaner']))} | {fit_s} / {exp_s} | {flags} |")
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
    lines += markdown_lines(checkpoint_groups(data), _md)
    failed = data[data["status"].isin(FAILED_STATUSES)] if len(data) else data
    if len(failed):
        lines += ["### Failures", ""]
        for _, r in failed.iterrows():
            lines.append(f"- `{_md(r['arch'])}/{_md(r['backend'])}` {_md(r['mode'])} T={_md(r['seq_len'])}: "
                         f"**{_md(r['status'])}** {_md(error_excerpt(r.get('error')))}")
        lines.append("")
    return "\n".join(lines)


def _cross(c: Mapping[str, Any]) -> str:
    return f"from T={c['value']:,.0f}" if c.get("value") is not None else text(c.get("verdict"))


def write_csv(df: pd.DataFrame | None, path: str | Path) -> Path:
    """The rows behind the figures (no raw samples) as CSV; counts and sizes as integers."""
    data = prepare(df)
    cols = [c for c in CSV_COLUMNS if c in data.columns]
    data = data[cols].copy()
    for c in INT_COLUMNS:
        if c in data:
            data[c] = pd.to_numeric(data[c], errors="coerce").round().astype("Int64")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data.to_csv(out, index=False)
    return out
