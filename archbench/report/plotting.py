"""Plot primitives shared by the report's figures: lines, styles, axes, hover text, layouts.

Rows of one comparable group are split into lines (one per ``arch/backend``, and per run when
the group holds several), coloured by family (``palette.py``), with a marker symbol per
backend. Reference (pure-PyTorch) backends are drawn dashed, noisy cells (IQR / median > 10%)
as hollow markers (in bar charts: hatched and faded), so neither passes for a fused kernel's
clean number. Log axes carry decade ticks only, with units.

Text taken from the data (arch names, errors, ...) is HTML-escaped before it goes
into a trace: plotly renders a subset of HTML in legends and hover labels (and
decodes entities back to plain characters for display), so escaping keeps the
labels inert and still readable.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from archbench.report.groups import Group
from archbench.report.palette import arch_colors as palette_colors
from archbench.report.rows import noisy_mask, reference_mask, to_float
from archbench.report.values import error_excerpt, esc, fmt_num, is_missing, text

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star")
FIG_HEIGHT = 440


def arch_colors(df: pd.DataFrame) -> dict[str, str]:
    """One colour per arch name, keyed by its family (``palette.py``): the same in every report."""
    fams = df["family"] if "family" in df.columns else pd.Series([None] * len(df), index=df.index)
    family: dict[str, str] = {}
    for a, f in zip(df["arch"], fams):
        if text(f):
            family.setdefault(text(a), text(f))
    return palette_colors({a: family.get(a) for a in sorted({text(a) for a in df["arch"]})})


def style_index(values: Iterable[Any]) -> dict[str, int]:
    """Each distinct value's place in sorted order (a backend's marker symbol)."""
    return {v: i for i, v in enumerate(sorted({text(x) for x in values}))}


@dataclass(frozen=True)
class FigureSpec:
    """A built figure with the group it belongs to and what it shows."""

    group: str  # plain-text group label
    kind: str  # "latency", "memory" or "throughput"
    figure: go.Figure


def _run_labels(ok: pd.DataFrame) -> pd.Series:
    """Per row, the name of its run: the run_id, or the run directory's last two parts when
    several directories share a run_id."""
    ids = ok["run_id"].map(text)
    dirs = ok["run_dir"].map(text) if "run_dir" in ok else pd.Series([""] * len(ok), index=ok.index)
    shared = {i for i in set(ids) if len({d for d, j in zip(dirs, ids) if j == i}) > 1}
    return pd.Series([("/".join(d.rstrip("/").split("/")[-2:]) if i in shared else i) for i, d in zip(ids, dirs)],
                     index=ok.index, dtype=object)


def split_lines(ok: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """Split ok rows into lines: (arch, backend, label, rows), sorted by label.

    Rows from different runs get separate lines when the group holds several runs.
    """
    runs = _run_labels(ok)
    multi_run = len(set(runs)) > 1
    parts: dict[tuple[str, str, str], list] = {}
    for i, arch, backend in zip(ok.index, ok["arch"], ok["backend"]):
        parts.setdefault((text(arch), text(backend), runs[i] if multi_run else ""), []).append(i)
    out = []
    for (arch, backend, run), idx in sorted(parts.items()):
        label = f"{arch}/{backend}" + (f" [{run}]" if multi_run else "")
        out.append((arch, backend, label, ok.loc[idx].sort_values("seq_len", kind="stable")))
    return out


_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def _si(v: float) -> str:
    for scale, suffix in _SI:
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def decade_axis(values: Iterable[float], unit: str = "", si: bool = False) -> dict[str, Any]:
    """A log axis with ticks at powers of ten only, labelled with ``unit`` (``si``: 1k, 10k, 1M)."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    axis: dict[str, Any] = {"type": "log"}
    if not vals:
        return axis
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    if hi == lo:
        hi += 1
    ticks = [10.0 ** k for k in range(lo, hi + 1)]
    label = _si if si else (lambda v: f"{v:g}")
    axis.update(tickmode="array", tickvals=ticks, ticktext=[f"{label(t)} {unit}".strip() for t in ticks])
    return axis


LEGEND = {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "title": {"text": ""}}


def _height(n_traces: int) -> int:
    """Tall enough that the horizontal legend below the plot wraps instead of scrolling."""
    return FIG_HEIGHT + 22 * max(0, (n_traces + 2) // 3 - 1)


def base_layout(fig: go.Figure, title: str, y_title: str, seq_lens: Iterable[float], y_values: Iterable[float] = (),
                y_unit: str = "", x_title: str = "seq_len (tokens)") -> go.Figure:  # fmt: skip
    xaxis = decade_axis(seq_lens, si=True)
    xaxis["title"] = {"text": x_title}
    yaxis = decade_axis(y_values, y_unit)
    yaxis["title"] = {"text": y_title}
    fig.update_layout(
        title={"text": html.escape(title)}, xaxis=xaxis, yaxis=yaxis, height=_height(len(fig.data)),
        template="plotly_white", hovermode="closest", legend=LEGEND, margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )  # fmt: skip
    return fig


def line_style(arch: str, backend: str, colors: dict[str, str], backends: dict[str, int],
               rows: pd.DataFrame | None = None) -> dict[str, Any]:  # fmt: skip
    """Colour per arch; symbol per backend; dashed for a reference backend, hollow markers for
    noisy cells."""
    i = backends.get(backend, 0)
    color = colors.get(arch, "#999999")
    symbol = _SYMBOLS[i % len(_SYMBOLS)]
    ref = bool(rows is not None and len(rows) and reference_mask(rows).all())
    symbols: Any = symbol
    if rows is not None and len(rows):
        symbols = [symbol + "-open" if n else symbol for n in noisy_mask(rows)]
    return {
        "mode": "lines+markers",
        "line": {"color": color, "dash": "dash" if ref else "solid"},
        "marker": {"color": color, "symbol": symbols, "size": 8, "line": {"color": color, "width": 1.5}},
    }


def _flags(noisy: bool, ref: bool) -> str:
    out = ["noisy (IQR/median > 10%)"] if noisy else []
    return "; ".join(out + (["reference backend (pure PyTorch)"] if ref else []))


def _tokens_per_joule(e: Any) -> str:
    try:
        e = float(e)
    except (TypeError, ValueError):
        return ""
    return fmt_num(1.0 / e, ",.4g") if e > 0 else ""


def customdata(rows: pd.DataFrame) -> list[list[str]]:
    """Per-point hover text, escaped, one list per row.

    0 arch, 1 backend, 2 family, 3 repeats, 4 tokens/s, 5 mem_method, 6 status,
    7 error excerpt, 8 p10 ms, 9 p90 ms, 10 median ms, 11 seq_len, 12 flags, 13 ran (kernels,
    eager/graph), 14 J/call, 15 average W, 16 % of roof, 17 bound, 18 tokens per joule.
    """
    if rows.empty:
        return []
    n = len(rows)

    def col(name: str) -> list:
        return list(rows[name]) if name in rows else [None] * n

    flags = [_flags(a, b) for a, b in zip(noisy_mask(rows), reference_mask(rows))]
    kernels, graphs = col("kernels"), col("cuda_graph")
    columns = (
        col("arch"), col("backend"), col("family"), [text(v) for v in col("repeats")],
        [fmt_num(v, ",.4g") for v in col("tokens_per_s")], col("mem_method"), col("status"),
        [error_excerpt(v, 200) for v in col("error")], [fmt_num(v, ".4g", 1e3) for v in col("time_p10_s")],
        [fmt_num(v, ".4g", 1e3) for v in col("time_p90_s")], [fmt_num(v, ".4g", 1e3) for v in col("time_median_s")],
        [text(v) for v in col("seq_len")], [f or "none" for f in flags], [_ran(k, g) for k, g in zip(kernels, graphs)],
        [fmt_num(v, ".4g") for v in col("energy_j_per_call")], [fmt_num(v, ".4g") for v in col("avg_power_w")],
        [fmt_num(v, ".3g") for v in col("pct_of_roof")], [text(v) for v in col("bound")],
        [_tokens_per_joule(v) for v in col("energy_j_per_token")],
    )  # fmt: skip
    return [[esc(v) or "n/a" for v in point] for point in zip(*columns)]


def _ran(kernels: Any, graph: Any) -> str:
    names = ", ".join(map(str, kernels)) if isinstance(kernels, (list, tuple, np.ndarray)) else text(kernels)
    if is_missing(graph):
        return names
    return (names + " · " if names else "") + ("CUDA graph" if bool(graph) else "eager")


def compact_customdata(rows: pd.DataFrame) -> list[list[str]]:
    """The hover text of the secondary figures (memory, throughput, ...), kept small so a
    report of a thousand cells stays a few megabytes: 0 arch, 1 backend, 2 family, 3 seq_len,
    4 flags, 5 mem_method, 6 median ms. The latency figure's hover has the rest."""
    if rows.empty:
        return []
    flags = [_flags(a, b) or "none" for a, b in zip(noisy_mask(rows), reference_mask(rows))]
    cols = (rows["arch"], rows["backend"], rows["family"], [text(v) for v in rows["seq_len"]], flags,
            rows["mem_method"], [fmt_num(v, ".4g", 1e3) for v in rows["time_median_s"]])  # fmt: skip
    return [[esc(v) or "n/a" for v in point] for point in zip(*cols)]


HOVER_SHORT = ("<b>%{customdata[0]}</b> / %{customdata[1]}<br>family: %{customdata[2]}<br>seq_len: %{customdata[3]}"
               "<br>flags: %{customdata[4]}<br>")
HOVER_HEAD = "<b>%{customdata[0]}</b> / %{customdata[1]}<br>family: %{customdata[2]}<br>seq_len: %{customdata[11]}<br>"
HOVER_TAIL = ("<br>flags: %{customdata[12]}<br>ran: %{customdata[13]}<br>energy: %{customdata[14]} J/call, "
              "%{customdata[15]} W, %{customdata[18]} tokens/J<br>roof: %{customdata[16]}% (%{customdata[17]})")


def single_length(rows: pd.DataFrame) -> bool:
    return rows["seq_len"].nunique() == 1


def add_bars(fig: go.Figure, lines, colors, values, compact: bool = False) -> None:
    """One bar per arch/backend (a group that measured one length): hatched for a reference
    backend, faded for a noisy cell."""
    for arch, backend, label, rows in lines:
        y = values(rows)
        ref = reference_mask(rows).to_numpy()
        noisy = noisy_mask(rows).to_numpy()
        fig.add_trace(go.Bar(
            x=[html.escape(label)] * len(rows), y=y, name=html.escape(label),
            customdata=compact_customdata(rows) if compact else customdata(rows),
            marker={"color": colors.get(arch, "#999999"), "opacity": [0.45 if n else 1.0 for n in noisy],
                    "pattern": {"shape": ["/" if r else "" for r in ref]}, "line": {"color": "#333", "width": 1}},
            hovertemplate=(HOVER_SHORT + "value: %{y:.4g}" if compact else HOVER_HEAD + "value: %{y:.4g}" + HOVER_TAIL)
            + "<extra></extra>",
        ))  # fmt: skip


def bar_layout(fig: go.Figure, title: str, y_title: str, y_values, y_unit: str) -> go.Figure:
    yaxis = decade_axis(y_values, y_unit)
    yaxis["title"] = {"text": y_title}
    fig.update_layout(
        title={"text": html.escape(title)}, yaxis=yaxis, xaxis={"title": {"text": "arch/backend"}, "automargin": True},
        height=FIG_HEIGHT, template="plotly_white", hovermode="closest", showlegend=False, barmode="group",
        margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )  # fmt: skip
    return fig


def curve_figure(group: Group, colors: dict[str, str], backends: dict[str, int], column: str, scale: float,
                 hover: str, title: str, y_title: str, unit: str = "") -> go.Figure | None:  # fmt: skip
    """``column`` x ``scale`` vs seq_len, one line per arch/backend (bars when the group measured
    one length), or None when no ok row has a positive value. ``hover`` follows the shared head
    of every point's hover text."""
    ok = group.ok
    if column not in ok:
        return None
    ok = ok[to_float(ok[column]) > 0]
    if ok.empty:
        return None
    fig = go.Figure()
    values = list(to_float(ok[column]) * scale)
    if single_length(ok):
        add_bars(fig, split_lines(ok), colors, lambda rows: to_float(rows[column]) * scale, compact=True)
        return bar_layout(fig, f"{title}: {group.label} (one length: T={text(ok['seq_len'].iloc[0])})", y_title,
                          values, unit)
    for arch, backend, label, rows in split_lines(ok):
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=to_float(rows[column]) * scale, name=html.escape(label),
            customdata=compact_customdata(rows), hovertemplate=HOVER_SHORT + hover + "<extra></extra>",
            **line_style(arch, backend, colors, backends, rows),
        ))  # fmt: skip
    return base_layout(fig, f"{title}: {group.label}", y_title, ok["seq_len"], values, unit)

