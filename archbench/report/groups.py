"""Comparable groups: which rows may be put on one axis, in one table, in one answer.

A latency is only comparable with another measured the same way: on the same device model
(an H100 is not an H200, even if both rows say ``cuda``), in the same dtype and mode, at the
same batch, model width, head layout, window, chunk and level, and timed the same way (eager
calls or CUDA-graph replays). Every figure, table and answer of the report is computed within
one such group; nothing is ever compared across groups.

A group's *label* names the fields every reader needs (mode, batch) and, beyond those, only
the fields that differ between the groups of this report, so a report of one configuration
reads ``mode=prefill, batch=1`` and a report of an H100 and an H200 run reads
``mode=prefill, batch=1, device=NVIDIA H200``. Its *fields* hold every value, for
``answers.json``.

Missing values are normalised before grouping so that rows which measured the same thing
group together: ``n_kv_heads`` missing means one KV head per query head; ``head_dim`` missing
means ``d_model / n_heads``; ``cuda_graph`` missing or false means eager calls (a GPU row whose
capture failed was timed eagerly); ``n_layers`` counts only for whole-model cells. Decode rows
are compared per generated token, so the number of tokens a decode call generates does not
split groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: (field name in labels and answers.json, what it means), in display order.
GROUP_FIELDS = (
    ("mode", "fwd / fwd_bwd / prefill / decode / task"),
    ("batch", "sequences per call"),
    ("device", "device model (GPU name, CPU model), not the index"),
    ("dtype", "compute dtype"),
    ("d_model", "model width"),
    ("n_heads", "query heads"),
    ("n_kv_heads", "key/value heads"),
    ("head_dim", "head dimension"),
    ("window", "attention window of windowed mixers"),
    ("chunk_size", "chunk length of chunked forms"),
    ("level", "mixer or whole model"),
    ("timing", "eager calls or CUDA-graph replays"),
    ("n_layers", "layers of a whole-model cell (level=model only)"),
)
FIELD_NAMES = tuple(name for name, _ in GROUP_FIELDS)
#: Always in a label: the axes a reader needs to read any number.
ALWAYS_LABELLED = ("mode", "batch")
#: Every other field appears in a label only when it differs between the report's groups.
_MODE_ORDER = ("fwd", "fwd_bwd", "prefill", "decode", "task")


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def value_text(value: Any) -> str:
    """A field value as label text ("" when missing; 2.0 -> "2")."""
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def device_model(df: pd.DataFrame) -> pd.Series:
    """The device model per row: the GPU's name on a GPU, the CPU's model on a CPU, else the
    device string the row names."""
    dev = _column(df, "device").map(value_text)
    gpu = _column(df, "env_device_name").map(value_text)
    cpu = _column(df, "env_cpu").map(value_text)
    out = []
    for d, g, c in zip(dev, gpu, cpu):
        if d.startswith("cuda") or d.startswith("mps"):
            out.append(g or d)
        elif d == "cpu" or not d:
            out.append(g or c or d)  # rows of a CPU run name the CPU in device_name
        else:
            out.append(g or d)
    return pd.Series(out, index=df.index, dtype=object)


def timing(df: pd.DataFrame) -> pd.Series:
    """``graph`` for rows timed as CUDA-graph replays, else ``eager``."""
    return _column(df, "cuda_graph").map(lambda v: "graph" if (not _missing(v) and bool(v)) else "eager")


def config_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every group field per row, as text, normalised (see the module docstring)."""
    out = pd.DataFrame(index=df.index)
    for name in FIELD_NAMES:
        if name == "device":
            out[name] = device_model(df)
        elif name == "timing":
            out[name] = timing(df)
        else:
            out[name] = _column(df, name).map(value_text)
    out["n_layers"] = [n if lvl == "model" else "" for n, lvl in zip(out["n_layers"], out["level"])]
    heads = out["n_heads"]
    out["n_kv_heads"] = [kv or h for kv, h in zip(out["n_kv_heads"], heads)]
    dims = []
    for hd, d, h in zip(out["head_dim"], out["d_model"], heads):
        if not hd and d and h:
            try:
                hd = value_text(float(d) / float(h))
            except (ValueError, ZeroDivisionError):
                pass
        dims.append(hd)
    out["head_dim"] = dims
    return out


@dataclass(frozen=True, eq=False)
class Group:
    """One comparable slice of the results: every row in it was measured the same way."""

    fields: dict[str, str]  # every group field -> its value ("" when the rows do not say)
    rows: pd.DataFrame  # all rows of the slice, any status
    labelled: tuple[str, ...] = field(default=ALWAYS_LABELLED)  # the fields its label names

    @property
    def mode(self) -> str:
        return self.fields.get("mode", "")

    @property
    def batch(self) -> str:
        return self.fields.get("batch", "")

    @property
    def label(self) -> str:
        """Plain text naming the fields that tell this group from the report's others."""
        return ", ".join(f"{k}={self.fields.get(k) or '?'}" for k in self.labelled)

    @property
    def description(self) -> str:
        """Every non-empty field, for hovers and titles."""
        return ", ".join(f"{k}={v}" for k, v in self.fields.items() if v)

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
        return r[r["status"].isin(("oom", "timeout", "error")) & (r["seq_len"] > 0)]


def distinguishing(configs: pd.DataFrame, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The group fields that take more than one value among the given rows."""
    return tuple(n for n in FIELD_NAMES if n not in exclude and configs[n].nunique(dropna=False) > 1)


def _order(g: Group):
    mode = g.mode
    rank = _MODE_ORDER.index(mode) if mode in _MODE_ORDER else len(_MODE_ORDER)
    batch = pd.to_numeric(g.batch, errors="coerce")
    return (rank, mode, math.inf if pd.isna(batch) else float(batch), tuple(g.fields.values()))


def comparable_groups(df: pd.DataFrame, plottable_only: bool = True) -> list[Group]:
    """The comparable groups of a prepared DataFrame (``rows.prepare``), in display order.

    With ``plottable_only`` a group needs at least one ok row with a seq_len and a time."""
    if df.empty:
        return []
    configs = config_frame(df)
    found = []
    for key, idx in configs.groupby(list(FIELD_NAMES), sort=False, dropna=False).groups.items():
        g = Group(dict(zip(FIELD_NAMES, key)), df.loc[idx])
        if not plottable_only or not g.ok.empty:
            found.append(g)
    # a label names what tells the groups shown apart, not what differs in rows never plotted
    shown = pd.DataFrame([g.fields for g in found], columns=list(FIELD_NAMES))
    labelled = ALWAYS_LABELLED + (distinguishing(shown, exclude=ALWAYS_LABELLED) if len(shown) else ())
    return sorted((Group(g.fields, g.rows, labelled) for g in found), key=_order)


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last row of each cell per run directory, where a cell is its key *and* how it was
    timed: runs written before the key held ``measure.cuda_graph`` gave an eager decode row and
    its CUDA-graph replay one key, and both are measurements to keep. Rows without a key are
    all kept. Use on ``store.load(..., all_rows=True)``."""
    if df.empty or "key" not in df.columns:
        return df
    run = _column(df, "run_dir").map(value_text) + "\x00" + _column(df, "run_id").map(value_text)
    ident = run + "\x00" + df["key"].map(value_text) + "\x00" + timing(df)
    keyed = df["key"].map(lambda k: not _missing(k) and str(k) != "")
    last = ~ident.duplicated(keep="last") | ~keyed
    return df[last].reset_index(drop=True)
