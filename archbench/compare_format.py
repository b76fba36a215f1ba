"""A comparison (``compare.compare``) as a report: aligned plain text for a terminal,
Markdown for a pull-request comment, or JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from archbench.compare import CellComparison, Comparison


def _fmt_value(v: float | None, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if metric == "latency":
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if abs(v) >= scale:
                return f"{v / scale:.4g} {unit}"
        return f"{v * 1e9:.4g} ns"
    if metric == "memory":
        for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if abs(v) >= scale:
                return f"{v / scale:.4g} {unit}"
        return f"{v:.0f} B"
    return f"{v:.4g} J" if abs(v) >= 1 else f"{v * 1e3:.4g} mJ"


def _fmt_ratio(c: CellComparison) -> str:
    if c.ratio is None:
        return "-"
    text = "inf" if not math.isfinite(c.ratio) else f"{c.ratio:.3f}x"
    if c.ratio_ci and all(math.isfinite(x) for x in c.ratio_ci):
        text += f" [{c.ratio_ci[0]:.3f}, {c.ratio_ci[1]:.3f}]"
    return text


def _fmt_p(c: CellComparison) -> str:
    return "-" if c.p_value is None or not math.isfinite(c.p_value) else f"{c.p_value:.2g}"


def _fmt_status_value(c: CellComparison, side: str, metric: str) -> str:
    status = c.base_status if side == "base" else c.head_status
    value = c.base_value if side == "base" else c.head_value
    if status is None:
        return "-"
    if status != "ok":
        return status
    return _fmt_value(value, metric)


_COLUMNS = ("verdict", "cell", "key", "base", "head", "ratio [99% CI]", "p", "note")


def _table_rows(cmp: Comparison, cells: Sequence[CellComparison]) -> list[list[str]]:
    return [
        [c.outcome, c.label, c.key, _fmt_status_value(c, "base", cmp.metric), _fmt_status_value(c, "head", cmp.metric),
         _fmt_ratio(c), _fmt_p(c), c.note or ""]
        for c in cells
    ]  # fmt: skip


def _header_lines(cmp: Comparison) -> list[str]:
    return [f"base: {cmp.base.source} ({cmp.base.describe()})", f"head: {cmp.head.source} ({cmp.head.describe()})"]


def format_text(cmp: Comparison) -> str:
    """A plain-text report: the verdict line, both sides, notes, then one aligned row per cell."""
    lines = [f"archbench compare: {cmp.summary()}", *_header_lines(cmp)]
    lines += [f"note: {n}" for n in cmp.notes]
    rows = [list(_COLUMNS)] + _table_rows(cmp, cmp.cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: backslashes and pipes escaped, no HTML, one line."""
    s = "" if value is None else str(value)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def _md_table(cmp: Comparison, cells: Sequence[CellComparison]) -> list[str]:
    cols = ["cell", "key", "base", "head", "ratio [99% CI]", "p", "verdict", "note"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for r in _table_rows(cmp, cells):
        verdict, label, key, base, head, ratio, p, note = r
        cells_md = [md_escape(label), f"`{key}`" if key.isalnum() else md_escape(key), md_escape(base),
                    md_escape(head), md_escape(ratio), md_escape(p), f"**{verdict}**" if verdict == "regressed"
                    else md_escape(verdict), md_escape(note)]  # fmt: skip
        out.append("| " + " | ".join(cells_md) + " |")
    return out


def format_markdown(cmp: Comparison) -> str:
    """A GitHub-comment-ready report: verdict and counts, regressions, improvements, the rest folded."""
    verdict = cmp.verdict
    counts = " · ".join(f"{n} {o.replace('_', ' ')}" for o, n in cmp.counts().items())
    lines = [
        f"### archbench compare ({cmp.metric}): **{verdict}**",
        "",
        f"{counts} (threshold ×{cmp.threshold:g}, alpha {cmp.alpha:g})",
        "",
        f"- base: `{md_escape(cmp.base.source)}` ({md_escape(cmp.base.describe())})",
        f"- head: `{md_escape(cmp.head.source)}` ({md_escape(cmp.head.describe())})",
    ]
    lines += [f"- note: {md_escape(n)}" for n in cmp.notes]
    sections = [("Regressions", cmp.of("regressed")), ("Underpowered", cmp.of("underpowered")),
                ("Now failing", cmp.of("broken")), ("Improvements", cmp.of("improved")), ("Now running", cmp.of("fixed"))]  # fmt: skip
    for title, cells in sections:
        if cells or title == "Regressions":
            lines += ["", f"#### {title} ({len(cells)})", ""]
            lines += _md_table(cmp, cells) if cells else ["No cell is slower than the threshold with significance."
                                                          if cmp.metric == "latency" else "No cell above the threshold."]  # fmt: skip
    shown = ("regressed", "underpowered", "broken", "improved", "fixed")
    rest = [c for c in cmp.cells if c.outcome not in shown]
    if rest:
        kinds = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in cmp.counts().items() if o not in shown)
        lines += ["", f"<details><summary>Other cells ({len(rest)}: {kinds})</summary>", ""]
        lines += _md_table(cmp, rest)
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def format_json(cmp: Comparison) -> str:
    """The whole comparison as JSON (non-finite numbers as null)."""
    return json.dumps(cmp.to_json(), indent=2, allow_nan=False) + "\n"
