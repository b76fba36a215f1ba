"""Plotly figure builders for the HTML report.

Everything here is a pure function of the result DataFrame (one row per measured
cell). Rows are split into comparable groups (``groups.py``: same device model, dtype, mode,
batch, shapes and timing); each group with successful cells that have a ``seq_len`` gets a
latency, a peak-memory and a throughput figure, all log-log against ``seq_len``, one line per
``arch/backend``, coloured by family (``palette.py``). A group that measured one length gets
bars instead of lines. Reference (pure-PyTorch) backends are drawn dashed, noisy cells
(IQR / median > 10%) as hollow markers, so neither passes for a fused kernel's clean number.
Log axes carry decade ticks only, with units.

Text taken from the data (arch names, errors, ...) is HTML-escaped before it goes
into a trace: plotly renders a subset of HTML in legends and hover labels (and
decodes entities back to plain characters for display), so escaping keeps the
labels inert and still readable.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from archbench.report.groups import FIELD_NAMES, Group, comparable_groups, config_frame
from archbench.report.palette import arch_colors as palette_colors

#: Statuses, in display order.
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")
#: Statuses marked on the latency plot as failures.
FAILED_STATUSES = ("oom", "timeout", "error")
#: Rows are grouped by these fields (``groups.py``); each group gets its own figures.
GROUP_KEYS = FIELD_NAMES
#: A cell is noisy when its interquartile range exceeds this fraction of its median.
NOISY_REL_IQR = 0.10
#: Backend names that are pure-PyTorch references in the catalogue (the last backend of each
#: ArchSpec); a ``reference_backend`` column, when the rows carry one, decides instead.
REFERENCE_BACKEND_NAMES = ("naive", "chunked", "reference", "eager")
MODE_ORDER = ("fwd", "fwd_bwd", "prefill", "decode", "task")

TEXT_COLUMNS = (
    "key", "run_id", "suite", "arch", "family", "backend", "mode", "dtype",
    "device", "status", "error", "mem_method", "run_dir",
)
#: Kept as given (strings or epoch seconds); only added when missing.
RAW_COLUMNS = ("started_at", "ended_at", "kernels", "cuda_graph", "cuda_graph_reason")
NUMERIC_COLUMNS = (
    "batch", "seq_len", "d_model", "n_heads", "head_dim", "seed", "threads",
    "time_median_s", "time_p10_s", "time_p90_s", "time_iqr_s", "time_rel_iqr",
    "repeats", "tokens_per_s", "peak_mem_bytes", "state_bytes", "params", "flops",
    "achieved_tflops", "wall_s", "arithmetic_intensity", "peak_tflops", "peak_gbps",
    "activation_bytes", "param_bytes", "n_kv_heads", "window", "chunk_size", "n_layers", "decode_tokens",
    "energy_j_per_token", "energy_j_per_call", "avg_power_w", "pct_of_roof",
)

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star")
_MIB = float(1 << 20)
_GIB = float(1 << 30)
_FIG_HEIGHT = 440


# --------------------------------------------------------------------------- helpers


def is_missing(value: Any) -> bool:
    """True for None, NaN/NaT and pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays, dicts
        return False


def text(value: Any) -> str:
    """Plain display text for any cell value ("" when missing; 2.0 -> "2")."""
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def esc(value: Any) -> str:
    """HTML-escaped display text of a value."""
    return html.escape(text(value), quote=True)


def fmt_time(value: Any) -> str:
    """A timestamp as text: epoch seconds become UTC ISO strings, strings pass through."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not is_missing(value):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return text(value)
    return text(value)


def fmt_num(value: Any, spec: str = ".4g", scale: float = 1.0) -> str:
    """A number formatted with ``spec`` after multiplying by ``scale``; "" when missing."""
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return ""
    return format(v, spec) if math.isfinite(v) else ""


def error_excerpt(error: Any, limit: int = 120) -> str:
    """One telling line of an error text, cut to ``limit`` characters (plain text).

    For a Python traceback that is its last line (the exception), otherwise the first.
    """
    lines = [ln.strip() for ln in text(error).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    cut = line if len(line) <= limit else line[: limit - 1] + "…"
    return cut + (" …" if len(lines) > 1 else "")


def mode_rank(mode: Any) -> tuple[int, str]:
    """Sort key putting known modes in pipeline order, unknown ones after, by name."""
    m = text(mode)
    return (MODE_ORDER.index(m), m) if m in MODE_ORDER else (len(MODE_ORDER), m)


def prepare(df: pd.DataFrame | None) -> pd.DataFrame:
    """A copy of ``df`` with every expected column present and typed.

    Text columns become ``object`` with ``None`` for missing values; numeric columns
    are coerced to float (bad values become NaN); ``status`` is lower-cased, with
    missing statuses shown as "unknown".
    """
    out = pd.DataFrame() if df is None else df.copy()
    out = out.reset_index(drop=True)
    for col in TEXT_COLUMNS:
        if col not in out.columns:
            out[col] = None
        values = [None if is_missing(v) else str(v) for v in out[col]]
        out[col] = pd.Series(values, index=out.index, dtype=object)
    for col in NUMERIC_COLUMNS:
        out[col] = _to_float(out[col]) if col in out.columns else np.nan
    for col in RAW_COLUMNS:
        if col not in out.columns:
            out[col] = None
    out["status"] = pd.Series(
        [(s or "unknown").strip().lower() or "unknown" for s in out["status"]], index=out.index, dtype=object
    )
    if "model" in out.columns and "level" in out.columns:  # every checkpoint row says arch=checkpoint: name the model
        ckpt = out["level"].map(text).eq("checkpoint") & out["model"].map(lambda v: text(v) != "")
        if ckpt.any():
            out.loc[ckpt, "arch"] = model_labels(out.loc[ckpt, "model"]).to_numpy()
    return out


def model_labels(models: pd.Series) -> pd.Series:
    """Short names of checkpoint models: a hub id (``ORG/NAME``) as it is, a local directory by
    its last part, unless two different models would then share a name (both keep the whole)."""
    full = models.map(text)

    def short(m: str) -> str:
        local = m.startswith(("/", ".", "~")) or m.count("/") != 1 or "\\" in m
        return m.rstrip("/\\").replace("\\", "/").split("/")[-1] or m if local else m

    labels = full.map(short)
    owners: dict[str, set] = {}
    for s, m in zip(labels, full):
        owners.setdefault(s, set()).add(m)
    return pd.Series([s if len(owners[s]) == 1 else m for s, m in zip(labels, full)], index=models.index, dtype=object)


def _to_float(series: pd.Series) -> pd.Series:
    """Numeric view of a column; anything not a number becomes NaN."""
    try:
        return pd.to_numeric(series, errors="coerce").astype(float)
    except (TypeError, ValueError):  # e.g. lists inside cells
        def one(v: Any) -> float:
            try:
                return float(v)
            except (TypeError, ValueError):
                return np.nan

        return pd.Series([one(v) for v in series], index=series.index, dtype=float)


def arch_colors(df: pd.DataFrame) -> dict[str, str]:
    """One colour per arch name, keyed by its family (``palette.py``): the same in every report."""
    fams = df["family"] if "family" in df.columns else pd.Series([None] * len(df), index=df.index)
    family: dict[str, str] = {}
    for a, f in zip(df["arch"], fams):
        if text(f):
            family.setdefault(text(a), text(f))
    return palette_colors({a: family.get(a) for a in sorted({text(a) for a in df["arch"]})})


def noisy_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows whose timing spread is large: flagged ``noisy`` or IQR / median above 10%."""
    flag = rows["noisy"].map(lambda v: not is_missing(v) and bool(v)) if "noisy" in rows else False
    rel = _to_float(rows["time_rel_iqr"]) if "time_rel_iqr" in rows else pd.Series(np.nan, index=rows.index)
    return (rel > NOISY_REL_IQR) | flag


def reference_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows measured on a pure-PyTorch reference backend rather than a fused kernel."""
    by_name = rows["backend"].map(lambda b: text(b) in REFERENCE_BACKEND_NAMES)
    if "reference_backend" not in rows:
        return by_name
    known = rows["reference_backend"].map(lambda v: None if is_missing(v) else bool(v))
    return pd.Series([n if k is None else k for k, n in zip(known, by_name)], index=rows.index, dtype=bool)


def _style_index(values: Iterable[Any]) -> dict[str, int]:
    return {v: i for i, v in enumerate(sorted({text(x) for x in values}))}


# --------------------------------------------------------------------------- groups


def groups(df: pd.DataFrame) -> list[Group]:
    """The plottable comparable groups of a prepared DataFrame, in display order."""
    return comparable_groups(df)


# --------------------------------------------------------------------------- figures


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


def _lines(ok: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
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


_LEGEND = {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "title": {"text": ""}}


def _height(n_traces: int) -> int:
    """Tall enough that the horizontal legend below the plot wraps instead of scrolling."""
    return _FIG_HEIGHT + 22 * max(0, (n_traces + 2) // 3 - 1)


def _base_layout(fig: go.Figure, title: str, y_title: str, seq_lens: Iterable[float], y_values: Iterable[float] = (),
                 y_unit: str = "", x_title: str = "seq_len (tokens)") -> go.Figure:  # fmt: skip
    xaxis = decade_axis(seq_lens, si=True)
    xaxis["title"] = {"text": x_title}
    yaxis = decade_axis(y_values, y_unit)
    yaxis["title"] = {"text": y_title}
    fig.update_layout(
        title={"text": html.escape(title)}, xaxis=xaxis, yaxis=yaxis, height=_height(len(fig.data)),
        template="plotly_white", hovermode="closest", legend=_LEGEND, margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )  # fmt: skip
    return fig


def _line_style(arch: str, backend: str, colors: dict[str, str], backends: dict[str, int],
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


def _customdata(rows: pd.DataFrame) -> list[list[str]]:
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


def _compact_customdata(rows: pd.DataFrame) -> list[list[str]]:
    """The hover text of the secondary figures (memory, throughput, ...), kept small so a
    report of a thousand cells stays a few megabytes: 0 arch, 1 backend, 2 family, 3 seq_len,
    4 flags, 5 mem_method, 6 median ms. The latency figure's hover has the rest."""
    if rows.empty:
        return []
    flags = [_flags(a, b) or "none" for a, b in zip(noisy_mask(rows), reference_mask(rows))]
    cols = (rows["arch"], rows["backend"], rows["family"], [text(v) for v in rows["seq_len"]], flags,
            rows["mem_method"], [fmt_num(v, ".4g", 1e3) for v in rows["time_median_s"]])  # fmt: skip
    return [[esc(v) or "n/a" for v in point] for point in zip(*cols)]


_HOVER_SHORT = ("<b>%{customdata[0]}</b> / %{customdata[1]}<br>family: %{customdata[2]}<br>seq_len: %{customdata[3]}"
                "<br>flags: %{customdata[4]}<br>")
_HOVER_HEAD = "<b>%{customdata[0]}</b> / %{customdata[1]}<br>family: %{customdata[2]}<br>seq_len: %{customdata[11]}<br>"
_HOVER_TAIL = ("<br>flags: %{customdata[12]}<br>ran: %{customdata[13]}<br>energy: %{customdata[14]} J/call, "
               "%{customdata[15]} W, %{customdata[18]} tokens/J<br>roof: %{customdata[16]}% (%{customdata[17]})")


def _per_token_factor(group: Group, rows: pd.DataFrame) -> np.ndarray:
    """Decode calls generate several tokens; the factor that turns a call's time into the time
    per generated token (1 / decode_tokens, from batch / tokens_per_s / median)."""
    tps = rows["tokens_per_s"].to_numpy(dtype=float)
    med = rows["time_median_s"].to_numpy(dtype=float)
    batch = rows["batch"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = batch / (tps * med)
    return np.where(np.isfinite(f) & (f > 0), f, 1.0)


def _is_decode(group: Group) -> bool:
    return group.mode == "decode"


def _single_length(rows: pd.DataFrame) -> bool:
    return rows["seq_len"].nunique() == 1


def _bars(fig: go.Figure, lines, colors, values, compact: bool = False) -> None:
    """One bar per arch/backend (a group that measured one length): hatched for a reference
    backend, faded for a noisy cell."""
    for arch, backend, label, rows in lines:
        y = values(rows)
        ref = reference_mask(rows).to_numpy()
        noisy = noisy_mask(rows).to_numpy()
        fig.add_trace(go.Bar(
            x=[html.escape(label)] * len(rows), y=y, name=html.escape(label),
            customdata=_compact_customdata(rows) if compact else _customdata(rows),
            marker={"color": colors.get(arch, "#999999"), "opacity": [0.45 if n else 1.0 for n in noisy],
                    "pattern": {"shape": ["/" if r else "" for r in ref]}, "line": {"color": "#333", "width": 1}},
            hovertemplate=(_HOVER_SHORT + "value: %{y:.4g}" if compact else _HOVER_HEAD + "value: %{y:.4g}" + _HOVER_TAIL)
            + "<extra></extra>",
        ))  # fmt: skip


def _bar_layout(fig: go.Figure, title: str, y_title: str, y_values, y_unit: str) -> go.Figure:
    yaxis = decade_axis(y_values, y_unit)
    yaxis["title"] = {"text": y_title}
    fig.update_layout(
        title={"text": html.escape(title)}, yaxis=yaxis, xaxis={"title": {"text": "arch/backend"}, "automargin": True},
        height=_FIG_HEIGHT, template="plotly_white", hovermode="closest", showlegend=False, barmode="group",
        margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )  # fmt: skip
    return fig


def latency_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure:
    """Median latency (ms; ms per generated token for decode) vs seq_len with p10..p90 error
    bars, failures marked with 'x'; bars per arch/backend when the group measured one length."""
    ok = group.ok
    decode = _is_decode(group)
    unit = "ms per token" if decode else "ms per call"
    y_title = f"median time ({unit})"
    title = f"Latency{' per generated token' if decode else ''}: {group.label}"
    if _single_length(ok):
        fig = go.Figure()
        vals = []

        def med(rows):
            v = rows["time_median_s"].to_numpy() * 1e3 * (_per_token_factor(group, rows) if decode else 1.0)
            vals.extend(v)
            return v

        _bars(fig, _lines(ok), colors, med)
        return _bar_layout(fig, f"{title} (one length: T={text(ok['seq_len'].iloc[0])})", y_title, vals, "ms")
    fig = go.Figure()
    ys = []
    for arch, backend, label, rows in _lines(ok):
        f = _per_token_factor(group, rows) if decode else 1.0
        med = rows["time_median_s"].to_numpy() * 1e3 * f
        p10 = rows["time_p10_s"].to_numpy() * 1e3 * f
        p90 = rows["time_p90_s"].to_numpy() * 1e3 * f
        ys.extend(med)
        has_bars = bool(np.isfinite(p10).any() or np.isfinite(p90).any())
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=med, name=html.escape(label), legendgroup=html.escape(label),
            customdata=_customdata(rows),
            error_y={
                "type": "data", "symmetric": False, "visible": has_bars,
                "array": np.nan_to_num(np.clip(p90 - med, 0, None)),
                "arrayminus": np.nan_to_num(np.clip(med - p10, 0, None)),
            },
            hovertemplate=_HOVER_HEAD + f"median: %{{y:.4g}} {unit}"
            "<br>p10/p90: %{customdata[8]} / %{customdata[9]} ms per call"
            "<br>repeats: %{customdata[3]}<br>tokens/s: %{customdata[4]}" + _HOVER_TAIL + "<extra></extra>",
            **_line_style(arch, backend, colors, backends, rows),
        ))
    _add_failures(fig, group, ok, colors)
    return _base_layout(fig, title, y_title, group.rows["seq_len"], ys, "ms")


def _add_failures(fig: go.Figure, group: Group, ok: pd.DataFrame, colors: dict[str, str]) -> None:
    """One 'x' trace per failure status, placed just above the highest plotted latency."""
    failed = group.failed
    if failed.empty:
        return
    tops = np.concatenate([ok["time_median_s"].to_numpy(), ok["time_p90_s"].to_numpy()]) * 1e3
    tops = tops[np.isfinite(tops) & (tops > 0)]
    y_top = float(tops.max()) * 1.6 if tops.size else 1.0
    for status in FAILED_STATUSES:
        rows = failed[failed["status"] == status].sort_values("seq_len", kind="stable")
        if rows.empty:
            continue
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=[y_top] * len(rows), mode="markers", name=f"failed: {status}",
            marker={"symbol": "x", "size": 11, "color": [colors.get(text(a), "#444") for a in rows["arch"]],
                    "line": {"width": 1, "color": "#222"}},
            customdata=_customdata(rows),
            hovertemplate=_HOVER_HEAD + "status: <b>%{customdata[6]}</b><br>%{customdata[7]}<extra></extra>",
        ))


def _curve_figure(group: Group, colors: dict[str, str], backends: dict[str, int], column: str, scale: float,
                  hover: str, title: str, y_title: str, unit: str = "") -> go.Figure | None:  # fmt: skip
    """``column`` x ``scale`` vs seq_len, one line per arch/backend (bars when the group measured
    one length), or None when no ok row has a positive value. ``hover`` follows the shared head
    of every point's hover text."""
    ok = group.ok
    if column not in ok:
        return None
    ok = ok[_to_float(ok[column]) > 0]
    if ok.empty:
        return None
    fig = go.Figure()
    values = list(_to_float(ok[column]) * scale)
    if _single_length(ok):
        _bars(fig, _lines(ok), colors, lambda rows: _to_float(rows[column]) * scale, compact=True)
        return _bar_layout(fig, f"{title}: {group.label} (one length: T={text(ok['seq_len'].iloc[0])})", y_title,
                           values, unit)
    for arch, backend, label, rows in _lines(ok):
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=_to_float(rows[column]) * scale, name=html.escape(label),
            customdata=_compact_customdata(rows), hovertemplate=_HOVER_SHORT + hover + "<extra></extra>",
            **_line_style(arch, backend, colors, backends, rows),
        ))  # fmt: skip
    return _base_layout(fig, f"{title}: {group.label}", y_title, ok["seq_len"], values, unit)


def memory_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Peak memory (GiB) vs seq_len, or None when no ok row reports memory; with the device's
    capacity as a labelled horizontal line where the rows record it (``env_device_mem_bytes``)."""
    fig = _curve_figure(group, colors, backends, "peak_mem_bytes", 1 / _GIB,
                        "peak memory: %{y:,.4g} GiB<br>method: %{customdata[5]}", "Peak memory", "peak memory (GiB)",
                        "GiB")
    cap = device_capacity(group.rows)
    if fig is None or cap is None:
        return fig
    gib = cap / _GIB
    xs = [x for tr in fig.data for x in (tr.x if tr.x is not None else ())]
    if isinstance(fig.data[0], go.Bar):
        span = [xs[0], xs[-1]]
    else:
        span = [min(xs), max(xs)]
    label = f"device memory: {gib:,.3g} GiB"
    fig.add_trace(go.Scatter(
        x=span, y=[gib, gib], mode="lines+text", name=label, text=["", label], textposition="bottom left",
        line={"color": "#222222", "dash": "dashdot", "width": 1.5}, hovertemplate=label + "<extra></extra>",
    ))  # fmt: skip
    ys = [y for tr in fig.data for y in (tr.y if tr.y is not None else ())]
    axis = decade_axis([*ys, gib], "GiB")
    fig.update_yaxes(tickvals=axis.get("tickvals"), ticktext=axis.get("ticktext"))
    return fig


def device_capacity(rows: pd.DataFrame) -> float | None:
    """The device's total memory in bytes, as the rows' environment records it (the largest when
    rows disagree), or None when no row says."""
    if "env_device_mem_bytes" not in rows:
        return None
    vals = _to_float(rows["env_device_mem_bytes"])
    vals = vals[vals > 0]
    return float(vals.max()) if len(vals) else None


def activation_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Bytes autograd saves for the backward pass (MiB) vs seq_len, for fwd_bwd groups whose rows
    count them: the training-memory scaling of each family, without allocator noise."""
    return _curve_figure(group, colors, backends, "activation_bytes", 1 / _MIB, "saved for backward: %{y:,.4g} MiB",
                         "Activations saved for backward", "saved activations (MiB)", "MiB")


def throughput_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Tokens/s vs seq_len, or None when no ok row reports throughput."""
    return _curve_figure(group, colors, backends, "tokens_per_s", 1.0,
                         "tokens/s: %{y:,.4g}<br>median: %{customdata[6]} ms", "Throughput", "tokens/s")


def tflops_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Achieved TFLOP/s vs seq_len (the FlashAttention papers' view): how well each kernel uses
    the device as the sequence grows; None when the rows count no FLOPs."""
    if _is_decode(group):
        return None
    return _curve_figure(group, colors, backends, "achieved_tflops", 1.0,
                         "achieved: %{y:.4g} TFLOP/s", "Achieved TFLOP/s", "achieved TFLOP/s", "TFLOP/s")


def energy_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Energy per token (mJ) vs seq_len, or None when no ok row has a measured energy."""
    ok = group.ok
    if "energy_j_per_token" in ok:  # the sources of the rows drawn, as the title's label
        ok = ok[_to_float(ok["energy_j_per_token"]) > 0]
    source = ", ".join(sorted({text(v) for v in ok.get("energy_source", pd.Series(dtype=object)).dropna()}))
    return _curve_figure(group, colors, backends, "energy_j_per_token", 1e3, "energy: %{y:,.4g} mJ per token",
                         f"Energy per token ({source or 'measured'})", "energy per token (mJ)", "mJ")


def state_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Decode state / KV-cache bytes (MiB) vs seq_len, for prefill and decode groups."""
    if text(group.rows["mode"].iloc[0]) not in ("prefill", "decode"):
        return None
    return _curve_figure(group, colors, backends, "state_bytes", 1 / _MIB, "state: %{y:,.4g} MiB",
                         "Decode state (KV cache or recurrent state)", "state (MiB)", "MiB")


def roofline_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Achieved TFLOP/s vs arithmetic intensity (FLOPs per byte of lower-bound traffic), under
    the device's measured roofs: min(peak matmul TFLOP/s, intensity x peak copy bandwidth)."""
    ok = group.ok
    need = ("arithmetic_intensity", "achieved_tflops", "peak_tflops", "peak_gbps")
    if any(c not in ok for c in need):
        return None
    ok = ok.dropna(subset=list(need))
    ok = ok[(ok["arithmetic_intensity"] > 0) & (ok["achieved_tflops"] > 0)]
    if ok.empty:
        return None
    fig = go.Figure()
    peak, bw = float(ok["peak_tflops"].median()), float(ok["peak_gbps"].median())
    lo = min(float(ok["arithmetic_intensity"].min()), peak * 1e3 / bw) / 4
    hi = max(float(ok["arithmetic_intensity"].max()), peak * 1e3 / bw) * 4
    xs = np.geomspace(lo, hi, 64)
    fig.add_trace(go.Scatter(
        x=xs, y=np.minimum(peak, xs * bw / 1e3), mode="lines", name="measured roof",
        line={"color": "#222", "width": 2},
        hovertemplate=f"roof: min({peak:.3g} TFLOP/s, AI x {bw:.3g} GB/s)<extra></extra>",
    ))  # fmt: skip
    for arch, backend, label, rows in _lines(ok):
        style = _line_style(arch, backend, colors, backends)
        fig.add_trace(go.Scatter(
            x=rows["arithmetic_intensity"], y=rows["achieved_tflops"], mode="markers", name=html.escape(label),
            marker={"color": style.get("line", {}).get("color"), "size": 9},
            customdata=_customdata(rows),
            hovertemplate=_HOVER_HEAD.replace("seq_len: %{x}", "seq_len: %{customdata[11]}")
            + "intensity: %{x:.3g} FLOP/B<br>achieved: %{y:.3g} TFLOP/s<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(
        title={"text": html.escape(f"Roofline: {group.label}")},
        xaxis={"type": "log", "title": {"text": "arithmetic intensity (FLOPs / byte, lower-bound traffic)"}},
        yaxis={"type": "log", "title": {"text": "achieved TFLOP/s"}},
        height=_FIG_HEIGHT, template="plotly_white", hovermode="closest",
        legend=_LEGEND, margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )  # fmt: skip
    return fig


def batch_figures(data: pd.DataFrame, colors: dict[str, str], backends: dict[str, int]) -> list[FigureSpec]:
    """Latency vs batch at a fixed length: per configuration measured at two or more batches,
    at the longest length measured at several batches; one line per arch/backend."""
    ok = data[(data["status"] == "ok") & (data["seq_len"] > 0) & (data["time_median_s"] > 0) & (data["batch"] > 0)]
    if ok.empty:
        return []
    configs = config_frame(ok)
    rest = [n for n in FIELD_NAMES if n != "batch"]
    specs = []
    for key, idx in configs.groupby(rest, sort=True, dropna=False).groups.items():
        rows = ok.loc[idx]
        per_t = rows.groupby("seq_len")["batch"].nunique()
        several = per_t[per_t > 1]
        if several.empty:
            continue
        t = float(several.index.max())
        at = rows[rows["seq_len"] == t]
        fields = dict(zip(rest, key))
        label = f"mode={fields['mode']}, T={text(t)}, " + ", ".join(f"{k}={v}" for k, v in fields.items() if v and k != "mode")
        fig = go.Figure()
        for arch, backend, name, line in _lines(at):
            line = line.sort_values("batch")
            fig.add_trace(go.Scatter(
                x=line["batch"], y=line["time_median_s"] * 1e3, name=html.escape(name), customdata=_customdata(line),
                hovertemplate=_HOVER_HEAD + "batch: %{x}<br>median: %{y:.4g} ms" + _HOVER_TAIL + "<extra></extra>",
                **_line_style(arch, backend, colors, backends, line),
            ))  # fmt: skip
        _base_layout(fig, f"Latency vs batch: {label}", "median time per call (ms)", at["batch"],
                     at["time_median_s"] * 1e3, "ms", x_title="batch (sequences)")
        fig.update_xaxes(type="linear", tickmode="array", tickvals=sorted(set(at["batch"])),
                         ticktext=[text(b) for b in sorted(set(at["batch"]))])
        specs.append(FigureSpec(label, "batch", fig))
    return specs


def build_figures(df: pd.DataFrame | None) -> list[FigureSpec]:
    """All report figures for ``df``, grouped and ordered for display.

    Per group: latency (always), then peak memory, saved activations (fwd_bwd), throughput,
    achieved TFLOP/s, energy per token, (prefill / decode) the decode state's size and the
    roofline, when the data has them; then latency vs batch where several batches were measured.
    """
    data = prepare(df)
    colors = arch_colors(data)
    backends = _style_index(data["backend"])
    specs = []
    for g in groups(data):
        builders = (
            ("latency", latency_figure),
            ("memory", memory_figure),
            ("activations", activation_figure),
            ("throughput", throughput_figure),
            ("tflops", tflops_figure),
            ("energy", energy_figure),
            ("state", state_figure),
            ("roofline", roofline_figure),
        )
        for kind, build in builders:
            fig = build(g, colors, backends)
            if fig is not None:
                specs.append(FigureSpec(g.label, kind, fig))
    return specs + batch_figures(data, colors, backends)
