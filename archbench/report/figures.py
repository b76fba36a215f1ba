"""Plotly figure builders for the HTML report.

Everything here is a pure function of the result DataFrame (one row per measured
cell). Rows are grouped by (mode, batch, dtype, device); each group with successful
cells that have a ``seq_len`` gets a latency, a peak-memory and a throughput figure,
all log-log against ``seq_len``, one line per ``arch/backend``, coloured per arch.

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
import plotly.colors
import plotly.graph_objects as go

#: Statuses, in display order.
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")
#: Statuses marked on the latency plot as failures.
FAILED_STATUSES = ("oom", "timeout", "error")
#: Rows are grouped by these columns; each group gets its own figures.
GROUP_KEYS = ("mode", "batch", "dtype", "device")
MODE_ORDER = ("fwd", "fwd_bwd", "prefill", "decode", "task")

TEXT_COLUMNS = (
    "key", "run_id", "suite", "arch", "family", "backend", "mode", "dtype",
    "device", "status", "error", "mem_method",
)
#: Kept as given (strings or epoch seconds); only added when missing.
RAW_COLUMNS = ("started_at", "ended_at", "kernels", "cuda_graph", "cuda_graph_reason")
NUMERIC_COLUMNS = (
    "batch", "seq_len", "d_model", "n_heads", "head_dim", "seed", "threads",
    "time_median_s", "time_p10_s", "time_p90_s", "time_iqr_s", "time_rel_iqr",
    "repeats", "tokens_per_s", "peak_mem_bytes", "state_bytes", "params", "flops",
    "achieved_tflops", "wall_s", "arithmetic_intensity", "peak_tflops", "peak_gbps",
    "activation_bytes", "param_bytes",
)

_PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star")
_MIB = float(1 << 20)
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
    return out


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
    """One colour per arch name (sorted), shared by every figure of a report."""
    archs = sorted({text(a) for a in df["arch"]})
    return {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(archs)}


def _style_index(values: Iterable[Any]) -> dict[str, int]:
    return {v: i for i, v in enumerate(sorted({text(x) for x in values}))}


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True, eq=False)
class Group:
    """One (mode, batch, dtype, device) slice of the results."""

    mode: str
    batch: str
    dtype: str
    device: str
    rows: pd.DataFrame  # all rows of the slice, any status

    @property
    def label(self) -> str:
        """Plain-text label, e.g. ``mode=fwd, batch=1, dtype=float32, device=cpu``."""
        parts = zip(GROUP_KEYS, (self.mode, self.batch, self.dtype, self.device))
        return ", ".join(f"{k}={v or '?'}" for k, v in parts)

    @property
    def ok(self) -> pd.DataFrame:
        """Successful rows with a positive seq_len and median time, sorted by seq_len."""
        r = self.rows
        mask = (r["status"] == "ok") & (r["seq_len"] > 0) & (r["time_median_s"] > 0)
        return r[mask].sort_values("seq_len", kind="stable")

    @property
    def failed(self) -> pd.DataFrame:
        """Failed (oom/timeout/error) rows with a seq_len."""
        r = self.rows
        return r[r["status"].isin(FAILED_STATUSES) & (r["seq_len"] > 0)]


def groups(df: pd.DataFrame) -> list[Group]:
    """The plottable groups of a prepared DataFrame, in display order."""
    if df.empty:
        return []
    keys = pd.DataFrame({k: [text(v) for v in df[k]] for k in GROUP_KEYS}, index=df.index)
    found = []
    for key, idx in keys.groupby(list(GROUP_KEYS), sort=False).groups.items():
        g = Group(*key, rows=df.loc[idx])
        if not g.ok.empty:
            found.append(g)

    def order(g: Group):
        batch = pd.to_numeric(g.batch, errors="coerce")
        return (mode_rank(g.mode), math.inf if pd.isna(batch) else batch, g.batch, g.dtype, g.device)

    return sorted(found, key=order)


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class FigureSpec:
    """A built figure with the group it belongs to and what it shows."""

    group: str  # plain-text group label
    kind: str  # "latency", "memory" or "throughput"
    figure: go.Figure


def _line_label(arch: str, backend: str, run_id: str, multi_run: bool) -> str:
    label = f"{arch}/{backend}"
    return f"{label} [{run_id}]" if multi_run else label


def _lines(ok: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """Split ok rows into lines: (arch, backend, label, rows), sorted by label.

    Rows from different runs get separate lines when the group holds several runs.
    """
    multi_run = len({text(r) for r in ok["run_id"]}) > 1
    parts = {}
    for i, row in ok.iterrows():
        arch, backend, run_id = text(row["arch"]), text(row["backend"]), text(row["run_id"])
        key = (arch, backend, run_id if multi_run else "")
        parts.setdefault(key, []).append(i)
    out = []
    for (arch, backend, run_id), idx in sorted(parts.items()):
        label = _line_label(arch, backend, run_id, multi_run)
        out.append((arch, backend, label, ok.loc[idx].sort_values("seq_len", kind="stable")))
    return out


def _base_layout(fig: go.Figure, title: str, y_title: str, seq_lens: Iterable[float]) -> go.Figure:
    ticks = sorted({float(s) for s in seq_lens if s > 0})
    xaxis: dict[str, Any] = {"type": "log", "title": {"text": "seq_len"}}
    if 0 < len(ticks) <= 12:
        xaxis.update(tickmode="array", tickvals=ticks, ticktext=[text(t) for t in ticks])
    fig.update_layout(
        title={"text": html.escape(title)},
        xaxis=xaxis,
        yaxis={"type": "log", "title": {"text": y_title}},
        height=_FIG_HEIGHT,
        template="plotly_white",
        hovermode="closest",
        legend={"title": {"text": "arch/backend"}},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def _line_style(arch: str, backend: str, colors: dict[str, str], backends: dict[str, int]) -> dict[str, Any]:
    i = backends.get(backend, 0)
    color = colors.get(arch, _PALETTE[0])
    return {
        "mode": "lines+markers",
        "line": {"color": color, "dash": _DASHES[i % len(_DASHES)]},
        "marker": {"color": color, "symbol": _SYMBOLS[i % len(_SYMBOLS)], "size": 7},
    }


def _customdata(rows: pd.DataFrame) -> list[list[str]]:
    """Per-point hover text, escaped, one list per row.

    0 arch, 1 backend, 2 family, 3 repeats, 4 tokens/s, 5 mem_method, 6 status,
    7 error excerpt, 8 p10 ms, 9 p90 ms, 10 median ms, 11 seq_len.
    """
    out = []
    for _, r in rows.iterrows():
        values = (
            r["arch"], r["backend"], r["family"], text(r["repeats"]), fmt_num(r["tokens_per_s"], ",.4g"),
            r["mem_method"], r["status"], error_excerpt(r["error"], 200),
            fmt_num(r["time_p10_s"], ".4g", 1e3), fmt_num(r["time_p90_s"], ".4g", 1e3),
            fmt_num(r["time_median_s"], ".4g", 1e3), text(r["seq_len"]),
        )
        out.append([esc(v) or "n/a" for v in values])
    return out


_HOVER_HEAD = "<b>%{customdata[0]}</b> / %{customdata[1]}<br>family: %{customdata[2]}<br>seq_len: %{x}<br>"


def latency_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure:
    """Median latency (ms) vs seq_len with p10..p90 error bars, failures marked with 'x'."""
    ok = group.ok
    fig = go.Figure()
    for arch, backend, label, rows in _lines(ok):
        med = rows["time_median_s"].to_numpy() * 1e3
        p10 = rows["time_p10_s"].to_numpy() * 1e3
        p90 = rows["time_p90_s"].to_numpy() * 1e3
        has_bars = bool(np.isfinite(p10).any() or np.isfinite(p90).any())
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=med, name=html.escape(label), legendgroup=html.escape(label),
            customdata=_customdata(rows),
            error_y={
                "type": "data", "symmetric": False, "visible": has_bars,
                "array": np.nan_to_num(np.clip(p90 - med, 0, None)),
                "arrayminus": np.nan_to_num(np.clip(med - p10, 0, None)),
            },
            hovertemplate=_HOVER_HEAD + "median: %{y:.4g} ms"
            "<br>p10/p90: %{customdata[8]} / %{customdata[9]} ms"
            "<br>repeats: %{customdata[3]}<br>tokens/s: %{customdata[4]}"
            "<extra></extra>",
            **_line_style(arch, backend, colors, backends),
        ))
    _add_failures(fig, group, ok, colors)
    y_title = "median time per call (ms)"
    if text(group.rows["mode"].iloc[0]) == "decode":
        y_title = "median time per call of decode_tokens steps (ms)"
    return _base_layout(fig, f"Latency: {group.label}", y_title, group.rows["seq_len"])


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
                  hover: str, title: str, y_title: str) -> go.Figure | None:  # fmt: skip
    """``column`` x ``scale`` vs seq_len, one line per arch/backend, or None when no ok row has a
    positive value. ``hover`` follows the shared head of every point's hover text."""
    ok = group.ok
    if column not in ok:
        return None
    ok = ok[_to_float(ok[column]) > 0]
    if ok.empty:
        return None
    fig = go.Figure()
    for arch, backend, label, rows in _lines(ok):
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=_to_float(rows[column]) * scale, name=html.escape(label),
            customdata=_customdata(rows), hovertemplate=_HOVER_HEAD + hover + "<extra></extra>",
            **_line_style(arch, backend, colors, backends),
        ))  # fmt: skip
    return _base_layout(fig, f"{title}: {group.label}", y_title, ok["seq_len"])


def memory_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Peak memory (MiB) vs seq_len, or None when no ok row reports memory."""
    return _curve_figure(group, colors, backends, "peak_mem_bytes", 1 / _MIB,
                         "peak memory: %{y:,.4g} MiB<br>method: %{customdata[5]}", "Peak memory", "peak memory (MiB)")


def activation_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Bytes autograd saves for the backward pass (MiB) vs seq_len, for fwd_bwd groups whose rows
    count them: the training-memory scaling of each family, without allocator noise."""
    return _curve_figure(group, colors, backends, "activation_bytes", 1 / _MIB, "saved for backward: %{y:,.4g} MiB",
                         "Activations saved for backward", "saved activations (MiB)")


def throughput_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Tokens/s vs seq_len, or None when no ok row reports throughput."""
    return _curve_figure(group, colors, backends, "tokens_per_s", 1.0,
                         "tokens/s: %{y:,.4g}<br>median: %{customdata[10]} ms", "Throughput", "tokens/s")


def energy_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Energy per token (mJ) vs seq_len, or None when no ok row has a measured energy."""
    ok = group.ok
    if "energy_j_per_token" in ok:  # the sources of the rows drawn, as the title's label
        ok = ok[_to_float(ok["energy_j_per_token"]) > 0]
    source = ", ".join(sorted({text(v) for v in ok.get("energy_source", pd.Series(dtype=object)).dropna()}))
    return _curve_figure(group, colors, backends, "energy_j_per_token", 1e3, "energy: %{y:,.4g} mJ per token",
                         f"Energy per token ({source or 'measured'})", "energy per token (mJ)")


def state_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Decode state / KV-cache bytes (MiB) vs seq_len, for prefill and decode groups."""
    if text(group.rows["mode"].iloc[0]) not in ("prefill", "decode"):
        return None
    return _curve_figure(group, colors, backends, "state_bytes", 1 / _MIB, "state: %{y:,.4g} MiB",
                         "Decode state (KV cache or recurrent state)", "state (MiB)")


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
        legend={"title": {"text": "arch/backend"}}, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )  # fmt: skip
    return fig


def build_figures(df: pd.DataFrame | None) -> list[FigureSpec]:
    """All report figures for ``df``, grouped and ordered for display.

    Per group: latency (always), then peak memory, saved activations (fwd_bwd), throughput,
    energy per token, and (prefill / decode) the decode state's size, when the data has them.
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
            ("energy", energy_figure),
            ("state", state_figure),
            ("roofline", roofline_figure),
        )
        for kind, build in builders:
            fig = build(g, colors, backends)
            if fig is not None:
                specs.append(FigureSpec(g.label, kind, fig))
    return specs
