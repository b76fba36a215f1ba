"""Accuracy vs efficiency: what each architecture can still do, and at what cost.

Task rows (``mode: task``) are grouped by what they were trained on (task, length, number of
key-value pairs). For each group the report shows a table (score +- spread over seeds, best
lr, the per-group breakdown such as accuracy per kv or per passkey depth) and a Pareto chart:
score against the decode state's bytes (the quantity Zoology's recall/memory trade-off is
about), and against measured decode latency per token where the same run has decode rows of
the same arch, width and length. The Pareto front (no other point is both leaner and more
accurate) is drawn as a step line.

Each group's heading says what its numbers can be compared with (the rows' ``comparable_to``,
``archbench.tasks.protocol``): "Zoology Fig. 2" only when every row was trained at that paper's
protocol, else "quick check, not comparable with Zoology Figure 2" or "not comparable ...", and the
table gives each row's reasons. ``zoology_facets`` draws MQAR the way Zoology's Figure 2 does:
accuracy against d_model, one panel per sequence length, one colour per architecture, each point
the best learning rate's mean over seeds with the seeds' spread as error bars.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from archbench.report.plotting import FIG_HEIGHT, arch_colors
from archbench.report.values import fmt_num, text

LOWER_IS_BETTER = ("bits_per_byte",)


def pareto_front(xs: Sequence[float], ys: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (x no larger and y no worse, one strictly),
    ordered by x. NaNs are never on the front."""
    pts = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if _finite(x) and _finite(y)]
    sign = 1.0 if higher_is_better else -1.0
    pts.sort(key=lambda p: (p[0], -sign * p[1]))
    front, best = [], -math.inf
    for x, y, i in pts:
        if sign * y > best:
            front.append(i)
            best = sign * y
    return front


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True, eq=False)
class TaskGroup:
    task: str
    seq_len: int
    num_kv_pairs: int | None
    rows: pd.DataFrame  # ok task rows of this group

    @property
    def label(self) -> str:
        kv = f", kv={self.num_kv_pairs}" if self.num_kv_pairs else ""
        comparable = self.comparable
        return f"task={self.task}, T={self.seq_len}{kv}" + (f" — {comparable}" if comparable else "")

    @property
    def comparable(self) -> str:
        """What the group's rows can be compared with, in short ('' for rows without the field)."""
        if "comparable_to" not in self.rows:
            return ""
        labels = {text(v).split(" (")[0] for v in self.rows["comparable_to"] if text(v)}
        if not labels:
            return ""
        return labels.pop() if len(labels) == 1 else "mixed protocols: " + "; ".join(sorted(labels))

    @property
    def metric(self) -> str:
        return text(self.rows["task_metric"].iloc[0]) or "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


def task_groups(data: pd.DataFrame) -> list[TaskGroup]:
    """ok task rows grouped by (task, seq_len, num_kv_pairs), in a stable order."""
    if data.empty or "mode" not in data or "task_score" not in data:
        return []
    rows = data[(data["mode"] == "task") & (data["status"] == "ok")].copy()
    rows = rows[rows["task_score"].map(_finite)]
    if rows.empty:
        return []
    rows["num_kv_pairs"] = rows.get("num_kv_pairs", pd.Series([None] * len(rows), index=rows.index))
    kv = rows["num_kv_pairs"].map(lambda v: int(v) if _finite(v) else 0)
    out = []
    for (task, T, k), idx in rows.groupby([rows["task"].map(text), rows["seq_len"].astype(int), kv], sort=True).groups.items():
        out.append(TaskGroup(task, int(T), int(k) or None, with_decode_latency(rows.loc[idx], data)))
    return out


def with_decode_latency(rows: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Add ``decode_s_per_token``: the fastest ok decode row of the same arch, d_model and
    seq_len in the data (any backend), or NaN."""
    rows = rows.copy()
    rows["decode_s_per_token"] = math.nan
    if "latency_per_token_s" not in data:
        return rows
    dec = data[(data["mode"] == "decode") & (data["status"] == "ok")]
    if dec.empty:
        return rows
    best = dec.groupby([dec["arch"].map(text), dec["d_model"], dec["seq_len"]])["latency_per_token_s"].min()
    for i, r in rows.iterrows():
        rows.at[i, "decode_s_per_token"] = best.get((text(r["arch"]), r["d_model"], r["seq_len"]), math.nan)
    return rows


def _point_label(r: pd.Series) -> str:
    return f"{text(r['arch'])} d={int(r['d_model'])}" if _finite(r.get("d_model")) else text(r["arch"])


def pareto_figure(group: TaskGroup, x: str = "state_bytes") -> go.Figure | None:
    """Score vs ``x`` (state bytes or decode latency per token), one marker line per arch
    (its widths in order), the Pareto front as a dashed step line."""
    rows = group.rows[group.rows[x].map(_finite)] if x in group.rows else group.rows.iloc[0:0]
    if rows.empty:
        return None
    colors = arch_colors(group.rows)
    scale, x_title = (1.0, "decode state (bytes, log)") if x == "state_bytes" else (1e3, "decode latency per token (ms, log)")
    fig = go.Figure()
    for arch, cells in rows.groupby(rows["arch"].map(text), sort=True):
        cells = cells.sort_values(x)
        custom = [[_point_label(r), fmt_num(r["task_score_std"], ".3f"), fmt_num(r.get("best_lr"), ".3g"),
                   fmt_num(r.get("train_steps"), ".0f")] for _, r in cells.iterrows()]  # fmt: skip
        fig.add_trace(go.Scatter(
            x=cells[x] * scale, y=cells["task_score"], mode="lines+markers", name=html.escape(arch),
            line={"color": colors.get(arch), "width": 1.5}, marker={"size": 9}, customdata=custom,
            hovertemplate="%{customdata[0]}<br>score %{y:.4f} ± %{customdata[1]}<br>x %{x:.4g}"
                          "<br>best lr %{customdata[2]}, steps %{customdata[3]}<extra></extra>",
        ))  # fmt: skip
    front = pareto_front(list(rows[x]), list(rows["task_score"]), group.higher_is_better)
    if front:
        fr = rows.iloc[front]
        fig.add_trace(go.Scatter(
            x=fr[x] * scale, y=fr["task_score"], mode="lines", name="Pareto front", line_shape="hv",
            line={"color": "black", "dash": "dash", "width": 1}, hoverinfo="skip",
        ))  # fmt: skip
    what = "state size" if x == "state_bytes" else "decode latency"
    fig.update_layout(
        title={"text": html.escape(f"{group.metric} vs {what}: {group.label}")},
        xaxis={"type": "log", "title": {"text": x_title}},
        yaxis={"title": {"text": group.metric + (" (lower is better)" if not group.higher_is_better else "")}},
        height=FIG_HEIGHT, template="plotly_white", hovermode="closest",
        legend={"title": {"text": "arch"}}, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )  # fmt: skip
    return fig


def _runs(r: pd.Series) -> int:
    """How many training runs a task row summarises (every lr of its grid times its seeds)."""
    grid = r.get("lr_grid")
    if isinstance(grid, list) and grid:
        return sum(len(e.get("scores") or []) for e in grid if isinstance(e, dict)) or len(grid)
    return int(r["n_seeds"]) if _finite(r.get("n_seeds")) else 1


def training_note(entry: Mapping[str, Any]) -> str:
    """'' or ', diverged in d of n runs' (loss not finite: training stopped) and/or ', stopped at
    max_train_s in k of n runs' (the wall-time cap ended the run before its schedule did) for a
    task-table entry."""
    notes = []
    for field, what in (("diverged", "diverged"), ("out_of_time", "stopped at max_train_s")):
        k = int(entry.get(field) or 0)
        if k:
            notes.append(f", {what} in {k} of {entry.get('runs') or k} runs")
    return "".join(notes)


def task_table(group: TaskGroup) -> pd.DataFrame:
    """One row per (arch, backend, d_model, n_layers): score, spread, best lr, steps, state
    bytes, how many of its training runs diverged or hit the time cap, and the per-group breakdown columns (e.g.
    ``kv=4``, ``T=512 depth=0.50``)."""
    out = []
    for _, r in group.rows.iterrows():
        entry = {
            "arch": text(r["arch"]), "backend": text(r["backend"]),
            "d_model": int(r["d_model"]) if _finite(r.get("d_model")) else None,
            "n_layers": int(r["n_layers"]) if _finite(r.get("n_layers")) else None,
            "score": float(r["task_score"]), "std": r.get("task_score_std"), "n_seeds": r.get("n_seeds"),
            "best_lr": r.get("best_lr"), "steps": r.get("train_steps"), "state_bytes": r.get("state_bytes"),
            "decode_ms": r["decode_s_per_token"] * 1e3 if _finite(r.get("decode_s_per_token")) else None,
            "diverged": int(r["diverged"]) if _finite(r.get("diverged")) else 0,
            "out_of_time": int(r["out_of_time"]) if _finite(r.get("out_of_time")) else 0, "runs": _runs(r),
        }  # fmt: skip
        if text(r.get("comparable_to")):
            entry["comparable_to"] = text(r.get("comparable_to"))
        by = r.get("task_by_group")
        if isinstance(by, dict) and len(by) > 1:
            entry.update({f"[{k}]": v for k, v in by.items()})
        out.append(entry)
    df = pd.DataFrame(out)
    return df.sort_values(["d_model", "score"], ascending=[True, not group.higher_is_better], kind="stable")


def zoology_facets(data: pd.DataFrame) -> go.Figure | None:
    """MQAR accuracy vs d_model, one panel per sequence length (Zoology's Figure 2 layout): one
    line per architecture, each point the best lr's mean over seeds, error bars the seeds'
    min..max. None when the data has no ok MQAR rows at two or more widths."""
    groups = [g for g in task_groups(data) if g.task == "mqar"]
    rows = pd.concat([g.rows for g in groups]) if groups else None
    if rows is None or rows["d_model"].nunique() < 2:
        return None
    lengths = sorted({int(T) for T in rows["seq_len"]})
    colors = arch_colors(rows)
    titles = []
    for T in lengths:
        kvs = sorted({int(k) for k in rows[rows["seq_len"] == T]["num_kv_pairs"] if _finite(k)})
        titles.append(f"L={T}" + (f", kv={'/'.join(map(str, kvs))}" if kvs else ""))
    fig = make_subplots(rows=1, cols=len(lengths), shared_yaxes=True, subplot_titles=[html.escape(t) for t in titles])
    for col, T in enumerate(lengths, start=1):
        panel = rows[rows["seq_len"] == T]
        for arch, cells in panel.groupby(panel["arch"].map(text), sort=True):
            cells = cells.sort_values("d_model")
            y = cells["task_score"].astype(float)
            lo = cells.get("task_score_min", y).map(lambda v: float(v) if _finite(v) else math.nan)
            hi = cells.get("task_score_max", y).map(lambda v: float(v) if _finite(v) else math.nan)
            fig.add_trace(go.Scatter(
                x=cells["d_model"].astype(int), y=y, mode="lines+markers", name=html.escape(arch),
                legendgroup=arch, showlegend=col == 1, line={"color": colors.get(arch)},
                error_y={"type": "data", "symmetric": False, "array": (hi - y).clip(lower=0).fillna(0).tolist(),
                         "arrayminus": (y - lo).clip(lower=0).fillna(0).tolist()},
                customdata=[[fmt_num(r.get("best_lr"), ".3g"), fmt_num(r.get("n_seeds"), ".0f")] for _, r in cells.iterrows()],
                hovertemplate=f"{html.escape(arch)} L={T}<br>d_model %{{x}}: %{{y:.3f}}"
                              "<br>best lr %{customdata[0]}, seeds %{customdata[1]}<extra></extra>",
            ), row=1, col=col)  # fmt: skip
        fig.update_xaxes(type="log", tickvals=sorted({int(d) for d in rows["d_model"]}), title_text="d_model", row=1, col=col)
    comparable = sorted({g.comparable for g in groups if g.comparable})
    title = "MQAR accuracy vs model width (best over lr; bars: seed min..max)"
    fig.update_layout(
        title={"text": html.escape(title + (f" — {'; '.join(comparable)}" if comparable else ""))},
        yaxis={"title": {"text": "accuracy"}, "range": [0, 1.02]},
        height=FIG_HEIGHT, template="plotly_white", legend={"title": {"text": "arch"}},
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
    )  # fmt: skip
    return fig
