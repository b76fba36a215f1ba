"""The result rows as the report reads them: every expected column present and typed.

``prepare`` turns whatever rows it is given (one per measured cell) into the frame every
section and figure reads; ``noisy_mask`` and ``reference_mask`` mark the rows whose numbers
must not pass for a fused kernel's clean measurement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from archbench.report.values import is_missing, text
from archbench.schema import FAILED_STATUSES, STATUSES  # noqa: F401 - the report's statuses are the rows'

#: A cell is noisy when its interquartile range exceeds this fraction of its median.
NOISY_REL_IQR = 0.10
#: Backend names that are pure-PyTorch references in the catalogue (the backend each
#: ArchSpec flags as its reference); a ``reference_backend`` column, when the rows carry one, decides instead.
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
        out[col] = to_float(out[col]) if col in out.columns else np.nan
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


def to_float(series: pd.Series) -> pd.Series:
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


def noisy_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows whose timing spread is large: flagged ``noisy`` or IQR / median above 10%."""
    flag = rows["noisy"].map(lambda v: not is_missing(v) and bool(v)) if "noisy" in rows else False
    rel = to_float(rows["time_rel_iqr"]) if "time_rel_iqr" in rows else pd.Series(np.nan, index=rows.index)
    return (rel > NOISY_REL_IQR) | flag


def reference_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows measured on a pure-PyTorch reference backend rather than a fused kernel."""
    by_name = rows["backend"].map(lambda b: text(b) in REFERENCE_BACKEND_NAMES)
    if "reference_backend" not in rows:
        return by_name
    known = rows["reference_backend"].map(lambda v: None if is_missing(v) else bool(v))
    return pd.Series([n if k is None else k for k, n in zip(known, by_name)], index=rows.index, dtype=bool)

