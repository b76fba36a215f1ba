"""Real checkpoints: each model's quality beside its speed, and the trade-off between them.

A ``level: checkpoint`` suite measures one model in several cells: its speed (``prefill``,
``decode``, ``fwd_bwd``: tokens/s, latency, the decode state's bytes) and its quality (``bpb``:
bits per byte on a text; ``lm_eval``: one lm-evaluation-harness task each, its metric, stderr
and document limit). No single row says how good *and* how fast a model is; this module joins
them per model (the rows' ``model`` column).

Rows are joined only within one device model and dtype (``groups.config_frame``): a bf16 model
on an H100 is not the same measurement as the fp32 model on a CPU, in speed or (slightly) in
quality. Per such group, one entry per model holds its architecture and parameters, its bits
per byte, each task's score with its stderr and limit, and its speed at every measured
(mode, batch, length). The Pareto views put each quality metric against the throughput and
against the decode state's bytes at the longest length measured; a model is on the front when
no other model is both at least as good and at least as cheap, one of them strictly.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from archbench.report.accuracy import pareto_front
from archbench.report.groups import config_frame
from archbench.report.plotting import FIG_HEIGHT, arch_colors
from archbench.report.rows import mode_rank
from archbench.report.values import fmt_num, number, text
from archbench.schema import QUALITY_MODES

SPEED_MODES = ("prefill", "decode", "fwd_bwd")  # the timed modes a checkpoint's quality table shows beside it
BPB = "bits per byte"


@dataclass
class ModelEntry:
    """What the report knows of one checkpoint in one (device, dtype) group."""

    label: str  # the model's short name (the rows' arch after ``rows.prepare``)
    model: str  # as the suite named it: a hub id or a local directory
    architecture: str = ""
    family: str = ""
    params: float | None = None
    implementation: str = ""
    bpb: dict[str, Any] | None = None  # {value, seq_len, text, status}
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {metric, score, stderr, limit, n, status}
    speed: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)  # (mode, batch, T) -> facts


@dataclass(frozen=True, eq=False)
class CheckpointGroup:
    """The checkpoint models measured on one device model in one dtype."""

    device: str
    dtype: str
    models: list[ModelEntry]
    tasks: list[str]  # eval tasks, in first-seen order
    speeds: list[tuple[str, int, int]]  # measured (mode, batch, T), in display order

    @property
    def label(self) -> str:
        return f"device={self.device or '?'}, dtype={self.dtype or '?'}"

    @property
    def several_batches(self) -> bool:
        return len({b for _, b, _ in self.speeds}) > 1

    def speed_point(self) -> tuple[str, int, int] | None:
        """The (mode, batch, T) the Pareto views read throughput at: prefill (else decode, else
        fwd_bwd) at the batch and length most models measured, the longest among ties."""
        for mode in SPEED_MODES:
            keys = [k for k in self.speeds if k[0] == mode]
            if keys:
                count = {k: sum(k in m.speed and m.speed[k]["tokens_per_s"] is not None for m in self.models) for k in keys}
                return max(keys, key=lambda k: (count[k], k[2], -k[1]))
        return None

    def state_point(self) -> tuple[str, int, int] | None:
        """Where the decode state is read: the longest decode (else prefill) length measured."""
        for mode in ("decode", "prefill"):
            keys = [k for k in self.speeds if k[0] == mode and any(
                m.speed.get(k, {}).get("state_bytes") is not None for m in self.models)]  # fmt: skip
            if keys:
                return max(keys, key=lambda k: (k[2], -k[1]))
        return None


def checkpoint_groups(data: pd.DataFrame) -> list[CheckpointGroup]:
    """Checkpoint rows (``level: checkpoint`` with a ``model``) of a prepared DataFrame, joined
    per model within each (device model, dtype); groups with no quality row are left out."""
    if data.empty or "level" not in data or "model" not in data:
        return []
    rows = data[data["level"].map(text).eq("checkpoint") & data["model"].map(lambda v: text(v) != "")]
    if rows.empty:
        return []
    configs = config_frame(rows)
    out = []
    for (device, dtype), idx in configs.groupby(["device", "dtype"], sort=True).groups.items():
        g = rows.loc[idx]
        if not g["mode"].isin(QUALITY_MODES).any():
            continue
        models: dict[str, ModelEntry] = {}
        tasks: list[str] = []
        for _, r in g.iterrows():
            label = text(r["arch"])
            m = models.setdefault(label, ModelEntry(label, text(r["model"])))
            m.architecture = m.architecture or text(r.get("model_architecture"))
            m.family = m.family or text(r.get("family"))
            m.params = m.params if m.params is not None else number(r.get("params"))
            m.implementation = m.implementation or text(r.get("implementation"))
            _add(m, r, tasks)
        speeds = sorted({k for m in models.values() for k in m.speed},
                        key=lambda k: (mode_rank(k[0]), k[1], k[2]))  # fmt: skip
        entries = sorted(models.values(), key=lambda m: (m.params is None, m.params or 0, m.label))
        out.append(CheckpointGroup(text(device), text(dtype), entries, tasks, speeds))
    return out


def _add(m: ModelEntry, r: pd.Series, tasks: list[str]) -> None:
    """One row's facts into its model's entry (the later of two rows of one cell wins)."""
    mode, status = text(r["mode"]), text(r["status"])
    ok = status == "ok"
    if mode == "bpb":
        value = number(r.get("bits_per_byte")) if ok else None
        if m.bpb is None or value is not None or m.bpb["value"] is None:
            m.bpb = {"value": value, "seq_len": number(r.get("seq_len")), "text": text(r.get("text")), "status": status,
                     "bytes_per_token": number(r.get("bytes_per_token"))}  # fmt: skip
    elif mode == "lm_eval":
        task = text(r.get("eval_task")) or "?"
        if task not in tasks:
            tasks.append(task)
        score = number(r.get("eval_score")) if ok else None
        if task not in m.evals or score is not None:
            m.evals[task] = {"metric": text(r.get("eval_metric")), "score": score, "stderr": number(r.get("eval_stderr")),
                             "limit": number(r.get("eval_limit")), "n": number(r.get("eval_n_samples")), "status": status}  # fmt: skip
    elif mode in SPEED_MODES:
        T, B = number(r.get("seq_len")), number(r.get("batch"))
        if T is None or B is None:
            return
        tps = number(r.get("tokens_per_s")) if ok else None
        per_token = number(r.get("latency_per_token_s")) if ok else None
        if per_token is None and ok and mode == "decode" and tps:
            per_token = B / tps
        key = (mode, int(B), int(T))
        if key not in m.speed or tps is not None:
            m.speed[key] = {"tokens_per_s": tps, "s_per_token": per_token, "status": status,
                            "state_bytes": number(r.get("state_bytes")) if ok else None,
                            "peak_mem_bytes": number(r.get("peak_mem_bytes")) if ok else None,
                            "noisy": bool(ok and ((number(r.get("time_rel_iqr")) or 0) > 0.10 or r.get("noisy") is True))}  # fmt: skip


# --------------------------------------------------------------------------- the table


def _speed_header(g: CheckpointGroup, key: tuple[str, int, int]) -> str:
    mode, b, t = key
    what = "decode ms/token" if mode == "decode" else f"{mode} tokens/s"
    return f"{what} ({'B=' + str(b) + ', ' if g.several_batches else ''}T={t:,})"


def _task_header(g: CheckpointGroup, task: str) -> str:
    metrics = {m.evals[task]["metric"] for m in g.models if task in m.evals and m.evals[task]["metric"]}
    limits = {m.evals[task]["limit"] for m in g.models if task in m.evals and m.evals[task]["limit"] is not None}
    head = f"{task} {'/'.join(sorted(metrics))}".strip()
    return head + (f" (limit {fmt_num(limits.pop(), ',.0f')})" if len(limits) == 1 else "")


def table(g: CheckpointGroup) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(headers, cells as plain text, per-cell notes) of the group's table, one row per model.

    Columns: model, architecture, params, bits per byte, each eval task's score ± stderr (with its
    limit in the header, or in the cell where the models differ), each measured speed (prefill
    tokens/s, decode ms per generated token), the decode state's bytes at the longest length, and
    the implementation transformers took. A cell that failed shows its status."""
    state = g.state_point()
    bpb_lens = {m.bpb["seq_len"] for m in g.models if m.bpb and m.bpb["seq_len"] is not None}
    bpb_head = BPB + (f" (T={fmt_num(bpb_lens.pop(), ',.0f')} windows)" if len(bpb_lens) == 1 else "")
    headers = ["model", "architecture", "params", bpb_head, *(_task_header(g, t) for t in g.tasks),
               *(_speed_header(g, k) for k in g.speeds)]  # fmt: skip
    if state:
        headers.append(f"state bytes ({state[0]}, T={state[2]:,})")
    headers.append("implementation")
    uniform_limit = {t: len({m.evals[t]["limit"] for m in g.models if t in m.evals}) <= 1 for t in g.tasks}
    body, notes = [], []
    for m in g.models:
        cells = [m.label, m.architecture, _params(m.params)]
        marks = ["", "", ""]
        b = m.bpb
        cells.append("" if b is None else (fmt_num(b["value"], ".3f") if b["value"] is not None else b["status"]))
        marks.append("")
        for t in g.tasks:
            e = m.evals.get(t)
            if e is None:
                cells.append("")
            elif e["score"] is None:
                cells.append(e["status"])
            else:
                s = fmt_num(e["score"], ".3f") + (f" ± {fmt_num(e['stderr'], '.3f')}" if e["stderr"] is not None else "")
                if not uniform_limit[t] and e["limit"] is not None:
                    s += f" (limit {fmt_num(e['limit'], ',.0f')})"
                cells.append(s)
            marks.append("")
        for k in g.speeds:
            s = m.speed.get(k)
            if s is None:
                cells.append("")
            elif s["status"] != "ok":
                cells.append(s["status"])
            elif k[0] == "decode":
                cells.append(fmt_num(s["s_per_token"], ".3g", 1e3))
            else:
                cells.append(fmt_num(s["tokens_per_s"], ",.0f"))
            marks.append("noisy" if s and s["noisy"] else "")
        if state:
            cells.append(fmt_num(m.speed.get(state, {}).get("state_bytes"), ",.0f"))
            marks.append("")
        cells.append(m.implementation)
        marks.append("")
        body.append(cells)
        notes.append(marks)
    return headers, body, notes


def _params(p: float | None) -> str:
    if p is None:
        return ""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if p >= scale:
            return f"{p / scale:.3g}{suffix}"
    return f"{p:.0f}"


# --------------------------------------------------------------------------- Pareto views


def metrics(g: CheckpointGroup) -> list[tuple[str, bool, dict[str, tuple[float, float | None]]]]:
    """The quality metrics of the group: (name, higher is better, model -> (value, stderr))."""
    out = []
    bpb = {m.label: (m.bpb["value"], None) for m in g.models if m.bpb and m.bpb["value"] is not None}
    if bpb:
        out.append((BPB, False, bpb))
    for t in g.tasks:
        vals = {m.label: (m.evals[t]["score"], m.evals[t]["stderr"]) for m in g.models
                if t in m.evals and m.evals[t]["score"] is not None}  # fmt: skip
        if vals:
            out.append((_task_header(g, t), True, vals))
    return out


def pareto_figure(g: CheckpointGroup, x: str) -> go.Figure | None:
    """Each quality metric against throughput (``x="tokens_per_s"``, more is better) or against
    the decode state's bytes (``x="state_bytes"``, less is better), one marker per model with
    its name; the Pareto front as a dashed step line. Buttons switch the metric. None when fewer
    than two models have both numbers for any metric."""
    point = g.speed_point() if x == "tokens_per_s" else g.state_point()
    if point is None:
        return None
    xs = {m.label: m.speed.get(point, {}).get(x) for m in g.models}
    colors = arch_colors(pd.DataFrame({"arch": [m.label for m in g.models], "family": [m.family for m in g.models]}))
    fig = go.Figure()
    buttons, spans, pts_all = [], [], []
    for name, higher, vals in metrics(g):
        pts = [(lab, xs[lab], v, e) for lab, (v, e) in vals.items() if xs.get(lab) is not None and xs[lab] > 0]
        if len(pts) < 2:
            continue
        pts_all += pts
        first = len(fig.data)
        for lab, xv, v, e in pts:
            fig.add_trace(go.Scatter(
                x=[xv], y=[v], mode="markers+text", name=html.escape(lab), text=[html.escape(lab)],
                textposition="top center", marker={"size": 11, "color": colors.get(lab, "#999999")},
                error_y={"type": "data", "array": [e or 0.0], "visible": e is not None},
                hovertemplate=f"<b>{html.escape(lab)}</b><br>{html.escape(name)}: %{{y:.4g}}"
                              + (f" ± {e:.3g}" if e is not None else "") + "<br>x: %{x:,.4g}<extra></extra>",
            ))  # fmt: skip
        sign = 1.0 if x == "state_bytes" else -1.0  # pareto_front keeps the smallest x: negate throughput
        front = pareto_front([sign * p[1] for p in pts], [p[2] for p in pts], higher)
        if front:
            fr = sorted((pts[i] for i in front), key=lambda p: p[1])
            fig.add_trace(go.Scatter(
                x=[p[1] for p in fr], y=[p[2] for p in fr], mode="lines", name="Pareto front", hoverinfo="skip",
                line={"color": "black", "dash": "dash", "width": 1}, line_shape="hv" if x == "state_bytes" else "vh",
            ))  # fmt: skip
        spans.append((name, higher, first, len(fig.data)))
    if not spans:
        return None
    for name, higher, a, b in spans:
        visible = [a <= i < b for i in range(len(fig.data))]
        title = name + ("" if higher else " (lower is better)")
        buttons.append({"label": html.escape(name), "method": "update",
                        "args": [{"visible": visible}, {"yaxis.title.text": html.escape(title)}]})  # fmt: skip
    name0, higher0, a0, b0 = spans[0]
    for i, tr in enumerate(fig.data):
        tr.visible = a0 <= i < b0
    mode, batch, T = point
    if x == "tokens_per_s":
        x_title, what = f"{mode} tokens/s (B={batch}, T={T:,}; log)", "throughput"
    else:
        x_title, what = f"decode state bytes after T={T:,} tokens (B={batch}; log)", "state size"
    lo, hi = (math.log10(v) for v in (min(p[1] for p in pts_all), max(p[1] for p in pts_all)))
    pad = max(0.08, 0.12 * (hi - lo))  # room for the names written beside the markers
    fig.update_layout(
        title={"text": html.escape(f"Quality vs {what}: {g.label}"), "y": 0.97, "yanchor": "top"},
        xaxis={"type": "log", "title": {"text": x_title}, "range": [lo - pad, hi + pad]},
        yaxis={"title": {"text": html.escape(name0 + ("" if higher0 else " (lower is better)"))}},
        updatemenus=[{"type": "buttons", "direction": "right", "x": 0, "y": 1.02, "xanchor": "left", "yanchor": "bottom",
                      "buttons": buttons, "showactive": True}] if len(buttons) > 1 else [],
        height=FIG_HEIGHT, template="plotly_white", hovermode="closest", showlegend=False,
        margin={"l": 60, "r": 20, "t": 110, "b": 60},
    )  # fmt: skip
    return fig


def figures(g: CheckpointGroup) -> list[tuple[str, go.Figure]]:
    """(kind, figure) of the group's Pareto views that have two or more models to compare."""
    out = []
    for x in ("tokens_per_s", "state_bytes"):
        fig = pareto_figure(g, x)
        if fig is not None:
            out.append((x, fig))
    return out



# --------------------------------------------------------------------------- rendering


def quality_section(groups: list[CheckpointGroup], figure_div) -> str:
    """The page's "Checkpoints: quality beside speed" section; ``figure_div(fig, div_id, kind)``
    embeds a figure (``embed.figure_div``). Empty when no group has a quality row."""
    if not groups:
        return ""
    parts = []
    for gi, g in enumerate(groups):
        headers, body, notes = table(g)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        rows = []
        for cells, marks in zip(body, notes):
            tds = []
            for j, (c, mark) in enumerate(zip(cells, marks)):
                cls = ' class="num"' if 2 <= j < len(cells) - 1 else ""
                flag = ' <span class="mark" title="noisy: IQR / median above 10%">†</span>' if mark else ""
                tds.append(f"<td{cls}>{html.escape(c)}{flag}</td>")
            rows.append("<tr>" + "".join(tds) + "</tr>")
        parts.append(f"<h3>{html.escape(g.label)}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        parts += [figure_div(fig, f"ckpt-{gi}-{kind}", "pareto") for kind, fig in figures(g)]
    return (
        '<section id="checkpoints"><h2>Checkpoints: quality beside speed</h2>'
        "<p>Each pretrained model's quality (bits per byte on the named text, tokenizer accounted for, lower is "
        "better; each lm-evaluation-harness task's score ± its standard error, at the document limit shown) next "
        "to its speed on the same device and dtype (prefill tokens/s, decode ms per generated token with the "
        "model's own cache, the decode state's bytes). Rows from another device model or dtype are never joined. "
        "The charts put each quality metric (buttons) against throughput and against the decode state's size; "
        "the dashed line is the Pareto front, the models no other model beats on both axes. † rests on a noisy "
        "cell (IQR / median above 10%).</p>" + "".join(parts) + "</section>"
    )


def markdown_lines(groups: list[CheckpointGroup], md) -> list[str]:
    """The same tables as Markdown; ``md`` escapes a cell (``summary._md``)."""
    lines: list[str] = []
    for g in groups:
        headers, body, notes = table(g)
        lines += [f"### Checkpoints, {md(g.label)}: quality beside speed", "",
                  "| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]  # fmt: skip
        for cells, marks in zip(body, notes):
            lines.append("| " + " | ".join(md(c) + (" †" if m else "") for c, m in zip(cells, marks)) + " |")
        lines.append("")
    return lines
