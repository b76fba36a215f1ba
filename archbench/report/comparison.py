"""Comparison of two runs in the report: B/A per cell, with significance.

``archbench report RUN_A RUN_B`` hands the page the result of ``archbench.compare`` (as plain
data, so this package still imports nothing else from archbench): for every cell both runs
measured, the ratio of medians B/A with its bootstrap 99% interval, the Mann-Whitney p-value
and the verdict (regressed / improved beyond the threshold and significant, insignificant,
unchanged). A dot plot shows every ratio with its interval on a log axis, the threshold band
shaded, so a glance tells whether B moved and where.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping

import plotly.graph_objects as go

from archbench.report.plotting import FIG_HEIGHT
from archbench.report.values import fmt_num, text

OUTCOME_COLORS = {
    "regressed": "#d62728", "improved": "#2ca02c", "underpowered": "#9467bd", "insignificant": "#ff7f0e",
    "unchanged": "#7f7f7f",
}  # fmt: skip
_ORDER = ("regressed", "improved", "underpowered", "insignificant", "unchanged")


def _ratio_cells(cmp: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    cells = [c for c in cmp.get("cells") or [] if isinstance(c.get("ratio"), (int, float)) and math.isfinite(c["ratio"])]
    return sorted(cells, key=lambda c: c["ratio"])


def ratio_figure(cmp: Mapping[str, Any]) -> go.Figure | None:
    """Every compared cell's B/A ratio with its 99% interval; the threshold band shaded."""
    cells = _ratio_cells(cmp)
    if not cells:
        return None
    thr = float(cmp.get("threshold") or 1.1)
    fig = go.Figure()
    for outcome in _ORDER:
        sel = [c for c in cells if c.get("outcome") == outcome]
        if not sel:
            continue
        lo = [c["ratio"] - c["ratio_ci"][0] if c.get("ratio_ci") and c["ratio_ci"][0] is not None else 0 for c in sel]
        hi = [c["ratio_ci"][1] - c["ratio"] if c.get("ratio_ci") and c["ratio_ci"][1] is not None else 0 for c in sel]
        fig.add_trace(go.Scatter(
            x=[c["ratio"] for c in sel], y=[html.escape(text(c.get("label"))) for c in sel], mode="markers",
            name=outcome, marker={"color": OUTCOME_COLORS[outcome], "size": 8},
            error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1},
            customdata=[[fmt_num(c.get("p_value"), ".2g")] for c in sel],
            hovertemplate="%{y}<br>B/A %{x:.3f}<br>p %{customdata[0]}<extra></extra>",
        ))  # fmt: skip
    fig.add_vrect(x0=1.0 / thr, x1=thr, fillcolor="#cccccc", opacity=0.25, line_width=0)
    fig.add_vline(x=1.0, line={"color": "black", "width": 1})
    fig.update_layout(
        title={"text": html.escape(f"B / A per cell ({cmp.get('metric', 'latency')}; shaded: within x{thr:g})")},
        xaxis={"type": "log", "title": {"text": "ratio B / A (below 1: B is better)"}},
        yaxis={"automargin": True, "showticklabels": len(cells) <= 60},
        height=max(FIG_HEIGHT, 18 * len(cells) + 120), template="plotly_white", hovermode="closest",
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )  # fmt: skip
    return fig


def comparison_table(cmp: Mapping[str, Any]) -> str:
    """Rows for every cell, regressions first, then improvements, then the rest."""
    cells = sorted(
        cmp.get("cells") or [],
        key=lambda c: (_ORDER.index(c["outcome"]) if c.get("outcome") in _ORDER else len(_ORDER), -(c.get("ratio") or 0)),
    )
    metric = text(cmp.get("metric")) or "latency"
    head = "".join(f"<th>{h}</th>" for h in ("verdict", "cell", "A", "B", "B / A [99% CI]", "p", "note"))
    body = []
    for c in cells:
        outcome = text(c.get("outcome"))
        ci = c.get("ratio_ci") or [None, None]
        ratio = "—" if c.get("ratio") is None else f"{c['ratio']:.3f}"
        if ci[0] is not None and ci[1] is not None:
            ratio += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        a, b = _value(c, "base", metric), _value(c, "head", metric)
        color = OUTCOME_COLORS.get(outcome, "#444")
        cells_html = [f'<b style="color:{color}">{html.escape(outcome)}</b>', html.escape(text(c.get("label"))),
                      html.escape(a), html.escape(b), html.escape(ratio), html.escape(fmt_num(c.get("p_value"), ".2g")),
                      html.escape(text(c.get("note")))]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells_html) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _value(c: Mapping[str, Any], side: str, metric: str) -> str:
    status = c.get(f"{side}_status")
    if status not in (None, "ok"):
        return str(status)
    v = c.get(f"{side}_value")
    if v is None:
        return "—"
    return fmt_num(v * 1e3, ".4g") + " ms" if metric == "latency" else fmt_num(v, ".4g")


def _side(side: Mapping[str, Any]) -> str:
    name = f"<code>{html.escape(text(side.get('run_id') or side.get('source')))}</code>"
    device = text(side.get("device_name"))
    return f"{name} ({html.escape(device)})" if device else name


def comparison_section(cmp: Mapping[str, Any] | None, figure_html) -> str:
    """The page section; ``figure_html(fig, div_id, kind)`` renders a figure div."""
    if not cmp or not cmp.get("cells"):
        return ""
    base, head = cmp.get("base") or {}, cmp.get("head") or {}
    parts = [
        '<section id="comparison"><h2>Comparison of runs: B / A</h2>',
        f"<p>A = {_side(base)}, B = {_side(head)}. {html.escape(text(cmp.get('summary')))}. A cell regressed (improved) "
        "when B/A is beyond the threshold and the Mann-Whitney test on the raw samples gives p below alpha or "
        "the 99% intervals of the two medians do not overlap; beyond the threshold without that, it is insignificant; "
        "a cell whose samples are too few to reach significance at any difference is underpowered.</p>",
    ]  # fmt: skip
    for note in cmp.get("notes") or []:
        parts.append(f'<p class="warning">{html.escape(text(note))}</p>')
    fig = ratio_figure(cmp)
    if fig is not None:
        parts.append(figure_html(fig, "comparison-ratios", "comparison"))
    parts.append(comparison_table(cmp))
    return "".join(parts) + "</section>"
