"""Plotly figure builders for the HTML report.

Everything here is a pure function of the result DataFrame (one row per measured
cell). Rows are split into comparable groups (``groups.py``: same device model, dtype, mode,
batch, shapes and timing); each group with successful cells that have a ``seq_len`` gets a
latency, a peak-memory and a throughput figure, all log-log against ``seq_len``, one line per
``arch/backend``, coloured by family (``palette.py``). A group that measured one length gets
bars instead of lines. How lines, bars, axes and hover text look is ``plotting.py``.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from archbench.report.groups import FIELD_NAMES, Group, comparable_groups, config_frame
from archbench.report.plotting import (
    FIG_HEIGHT,
    HOVER_HEAD,
    HOVER_TAIL,
    LEGEND,
    FigureSpec,
    add_bars,
    arch_colors,
    bar_layout,
    base_layout,
    curve_figure,
    customdata,
    decade_axis,
    line_style,
    single_length,
    split_lines,
    style_index,
)
from archbench.report.rows import FAILED_STATUSES, prepare, to_float
from archbench.report.values import text

_MIB = float(1 << 20)
_GIB = float(1 << 30)


# --------------------------------------------------------------------------- groups


def groups(df: pd.DataFrame) -> list[Group]:
    """The plottable comparable groups of a prepared DataFrame, in display order."""
    return comparable_groups(df)


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


def latency_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure:
    """Median latency (ms; ms per generated token for decode) vs seq_len with p10..p90 error
    bars, failures marked with 'x'; bars per arch/backend when the group measured one length."""
    ok = group.ok
    decode = _is_decode(group)
    unit = "ms per token" if decode else "ms per call"
    y_title = f"median time ({unit})"
    title = f"Latency{' per generated token' if decode else ''}: {group.label}"
    if single_length(ok):
        fig = go.Figure()
        vals = []

        def med(rows):
            v = rows["time_median_s"].to_numpy() * 1e3 * (_per_token_factor(group, rows) if decode else 1.0)
            vals.extend(v)
            return v

        add_bars(fig, split_lines(ok), colors, med)
        return bar_layout(fig, f"{title} (one length: T={text(ok['seq_len'].iloc[0])})", y_title, vals, "ms")
    fig = go.Figure()
    ys = []
    for arch, backend, label, rows in split_lines(ok):
        f = _per_token_factor(group, rows) if decode else 1.0
        med = rows["time_median_s"].to_numpy() * 1e3 * f
        p10 = rows["time_p10_s"].to_numpy() * 1e3 * f
        p90 = rows["time_p90_s"].to_numpy() * 1e3 * f
        ys.extend(med)
        has_bars = bool(np.isfinite(p10).any() or np.isfinite(p90).any())
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=med, name=html.escape(label), legendgroup=html.escape(label),
            customdata=customdata(rows),
            error_y={
                "type": "data", "symmetric": False, "visible": has_bars,
                "array": np.nan_to_num(np.clip(p90 - med, 0, None)),
                "arrayminus": np.nan_to_num(np.clip(med - p10, 0, None)),
            },
            hovertemplate=HOVER_HEAD + f"median: %{{y:.4g}} {unit}"
            "<br>p10/p90: %{customdata[8]} / %{customdata[9]} ms per call"
            "<br>repeats: %{customdata[3]}<br>tokens/s: %{customdata[4]}" + HOVER_TAIL + "<extra></extra>",
            **line_style(arch, backend, colors, backends, rows),
        ))
    _add_failures(fig, group, ok, colors)
    return base_layout(fig, title, y_title, group.rows["seq_len"], ys, "ms")


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
            customdata=customdata(rows),
            hovertemplate=HOVER_HEAD + "status: <b>%{customdata[6]}</b><br>%{customdata[7]}<extra></extra>",
        ))


def memory_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Peak memory (GiB) vs seq_len, or None when no ok row reports memory; with the device's
    capacity as a labelled horizontal line where the rows record it (``env_device_mem_bytes``)."""
    fig = curve_figure(group, colors, backends, "peak_mem_bytes", 1 / _GIB,
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
    vals = to_float(rows["env_device_mem_bytes"])
    vals = vals[vals > 0]
    return float(vals.max()) if len(vals) else None


def activation_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Bytes autograd saves for the backward pass (MiB) vs seq_len, for fwd_bwd groups whose rows
    count them: the training-memory scaling of each family, without allocator noise."""
    return curve_figure(group, colors, backends, "activation_bytes", 1 / _MIB, "saved for backward: %{y:,.4g} MiB",
                        "Activations saved for backward", "saved activations (MiB)", "MiB")


def throughput_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Tokens/s vs seq_len, or None when no ok row reports throughput."""
    return curve_figure(group, colors, backends, "tokens_per_s", 1.0,
                        "tokens/s: %{y:,.4g}<br>median: %{customdata[6]} ms", "Throughput", "tokens/s")


def tflops_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Achieved TFLOP/s vs seq_len (the FlashAttention papers' view): how well each kernel uses
    the device as the sequence grows; None when the rows count no FLOPs."""
    if _is_decode(group):
        return None
    return curve_figure(group, colors, backends, "achieved_tflops", 1.0,
                        "achieved: %{y:.4g} TFLOP/s", "Achieved TFLOP/s", "achieved TFLOP/s", "TFLOP/s")


def energy_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Energy per token (mJ) vs seq_len, or None when no ok row has a measured energy."""
    ok = group.ok
    if "energy_j_per_token" in ok:  # the sources of the rows drawn, as the title's label
        ok = ok[to_float(ok["energy_j_per_token"]) > 0]
    source = ", ".join(sorted({text(v) for v in ok.get("energy_source", pd.Series(dtype=object)).dropna()}))
    return curve_figure(group, colors, backends, "energy_j_per_token", 1e3, "energy: %{y:,.4g} mJ per token",
                        f"Energy per token ({source or 'measured'})", "energy per token (mJ)", "mJ")


def state_figure(group: Group, colors: dict[str, str], backends: dict[str, int]) -> go.Figure | None:
    """Decode state / KV-cache bytes (MiB) vs seq_len, for prefill and decode groups."""
    if text(group.rows["mode"].iloc[0]) not in ("prefill", "decode"):
        return None
    return curve_figure(group, colors, backends, "state_bytes", 1 / _MIB, "state: %{y:,.4g} MiB",
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
    for arch, backend, label, rows in split_lines(ok):
        style = line_style(arch, backend, colors, backends)
        fig.add_trace(go.Scatter(
            x=rows["arithmetic_intensity"], y=rows["achieved_tflops"], mode="markers", name=html.escape(label),
            marker={"color": style.get("line", {}).get("color"), "size": 9},
            customdata=customdata(rows),
            hovertemplate=HOVER_HEAD.replace("seq_len: %{x}", "seq_len: %{customdata[11]}")
            + "intensity: %{x:.3g} FLOP/B<br>achieved: %{y:.3g} TFLOP/s<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(
        title={"text": html.escape(f"Roofline: {group.label}")},
        xaxis={"type": "log", "title": {"text": "arithmetic intensity (FLOPs / byte, lower-bound traffic)"}},
        yaxis={"type": "log", "title": {"text": "achieved TFLOP/s"}},
        height=FIG_HEIGHT, template="plotly_white", hovermode="closest",
        legend=LEGEND, margin={"l": 60, "r": 20, "t": 60, "b": 80},
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
        for arch, backend, name, line in split_lines(at):
            line = line.sort_values("batch")
            fig.add_trace(go.Scatter(
                x=line["batch"], y=line["time_median_s"] * 1e3, name=html.escape(name), customdata=customdata(line),
                hovertemplate=HOVER_HEAD + "batch: %{x}<br>median: %{y:.4g} ms" + HOVER_TAIL + "<extra></extra>",
                **line_style(arch, backend, colors, backends, line),
            ))  # fmt: skip
        base_layout(fig, f"Latency vs batch: {label}", "median time per call (ms)", at["batch"],
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
    backends = style_index(data["backend"])
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
