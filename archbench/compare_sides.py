"""The two sides of a comparison: a run directory or a baseline file, read as one record per cell.

A *side* is either a run directory (``rows.jsonl`` + ``run.json``, the latest row per cell
key) or a baseline JSON written by ``save_baseline`` (the same per-cell facts, checked in
next to the code they guard). ``load_side`` refuses (``CompareError``, one line) a path that
holds neither, or several runs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archbench.fields import CELL_FIELDS
from archbench.store import ROWS, RUN, RunDir, describe_skipped, find_run_dirs, now_iso

BASELINE_SCHEMA = "archbench-baseline"
BASELINE_VERSION = 1

#: The fields that identify a cell (``archbench.fields``: comparing results imports no model code).
IDENTITY_FIELDS = CELL_FIELDS
#: Environment facts a baseline keeps, and whose differences a comparison notes.
ENV_SUMMARY_FIELDS = (
    "device_name", "torch", "cuda", "driver", "python", "cpu", "cpu_count", "git_rev", "archbench",
    "triton", "flash_linear_attention", "fla_core", "mamba_ssm", "flash_attn", "causal_conv1d", "transformers",
)  # fmt: skip


class CompareError(ValueError):
    """Inputs that cannot be compared; the message is one line and says what to do."""


@dataclass
class CellRecord:
    """What one side knows about one cell."""

    key: str
    identity: dict[str, Any]
    status: str
    error: str | None = None
    median_s: float | None = None
    samples_s: tuple[float, ...] = ()
    peak_mem_bytes: float | None = None
    energy_j_per_call: float | None = None
    device_name: str | None = None
    round_medians_s: tuple[float, ...] = ()  # per-round medians of an A/B run (``ab_round_medians_s``)

    def value(self, metric: str) -> float | None:
        return {"latency": self.median_s, "memory": self.peak_mem_bytes, "energy": self.energy_j_per_call}[metric]

    def to_json(self) -> dict:
        return {
            "identity": self.identity,
            "status": self.status,
            "error": self.error,
            "time_median_s": self.median_s,
            "time_samples_s": list(self.samples_s),
            "peak_mem_bytes": self.peak_mem_bytes,
            "energy_j_per_call": self.energy_j_per_call,
            "device_name": self.device_name,
        }


@dataclass
class Side:
    """One side of a comparison: a run directory or a baseline file, as per-key records."""

    source: str
    kind: str  # run | baseline
    run_id: str | None
    suite: str | None
    device_name: str | None
    env: dict[str, Any]
    cells: dict[str, CellRecord]
    created_at: str | None = None
    ab_id: str | None = None  # the A/B run this side belongs to: two sides with the same id were measured in pairs
    skipped_note: str | None = None  # lines of its rows files the store's reader could not use (torn, not JSON)

    def describe(self) -> str:
        bits = [self.kind]
        if self.run_id:
            bits.append(f"run {self.run_id}")
        if self.env.get("git_rev"):
            bits.append(f"git {self.env['git_rev']}")
        bits.append(self.device_name or "device unknown")
        return ", ".join(bits)


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _record(key: str, row: dict, identity: dict | None = None) -> CellRecord:
    env = row.get("env") or {}
    samples = tuple(float(s) for s in (row.get("time_samples_s") or []) if _number(s) is not None)
    median = _number(row.get("time_median_s"))
    if median is None and samples:
        median = float(np.median(samples))
    ident = identity if identity is not None else {f: row[f] for f in IDENTITY_FIELDS if f in row}
    return CellRecord(
        key=key,
        identity=dict(ident),
        status=str(row.get("status") or "error"),
        error=row.get("error"),
        median_s=median,
        samples_s=samples,
        peak_mem_bytes=_number(row.get("peak_mem_bytes")),
        energy_j_per_call=_number(row.get("energy_j_per_call")),
        device_name=row.get("device_name") or env.get("device_name"),
        round_medians_s=tuple(float(m) for m in (row.get("ab_round_medians_s") or []) if _number(m) is not None),
    )


def _summarize_env(env: dict) -> dict:
    return {k: env[k] for k in ENV_SUMMARY_FIELDS if env.get(k) is not None}


def _load_run(run_dir: Path) -> Side:
    rd = RunDir(run_dir)
    latest: dict[str, dict] = {}
    for row in rd.rows():
        if row.get("key") is not None:
            latest[str(row["key"])] = row
    meta = rd.read_meta()
    env = meta.get("env") or next((r["env"] for r in latest.values() if r.get("env")), {})
    cells = {k: _record(k, r) for k, r in latest.items()}
    device = env.get("device_name") or next((c.device_name for c in cells.values() if c.device_name), None)
    first = next(iter(latest.values()), {})
    return Side(
        source=str(run_dir),
        kind="run",
        run_id=meta.get("run_id") or first.get("run_id") or run_dir.name,
        suite=meta.get("suite") or first.get("suite"),
        device_name=device,
        env=_summarize_env(env),
        cells=cells,
        created_at=meta.get("started_at"),
        ab_id=meta.get("ab_id"),
        skipped_note=describe_skipped(rd.skipped_lines),
    )


def _load_baseline(path: Path, data: dict, name: str) -> Side:
    version = data.get("schema_version")
    if not isinstance(version, int) or version > BASELINE_VERSION:
        raise CompareError(
            f"{name}: {path} is baseline schema version {version!r}, this archbench reads up to "
            f"{BASELINE_VERSION}; upgrade archbench or re-save the baseline with `archbench baseline save`"
        )
    cells = {}
    for key, c in (data.get("cells") or {}).items():
        cells[str(key)] = _record(str(key), c, identity=c.get("identity") or {})
    source = data.get("source_run") or {}
    return Side(
        source=str(path),
        kind="baseline",
        run_id=source.get("run_id"),
        suite=source.get("suite"),
        device_name=data.get("device"),
        env=dict(data.get("env") or {}),
        cells=cells,
        created_at=data.get("created_at"),
    )


def load_side(path: str | os.PathLike, name: str = "input") -> Side:
    """A run directory (or its rows.jsonl) or a baseline JSON, as a ``Side``.

    ``name`` (BASE, HEAD, RUN_DIR) only labels error messages.
    """
    p = Path(path)
    if not p.exists():
        raise CompareError(
            f"{name}: nothing at {p}; pass a run directory (holding {ROWS}) or a baseline JSON from `archbench baseline save`"
        )
    if p.is_file() and p.name != ROWS:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
            raise CompareError(
                f"{name}: {p} is not an archbench baseline JSON; pass a run directory or a file from `archbench baseline save`"
            )
        return _load_baseline(p, data, name)
    try:
        dirs = find_run_dirs([p])
    except FileNotFoundError as e:
        raise CompareError(f"{name}: {e}") from None
    if not dirs:
        raise CompareError(f"{name}: no run under {p}; pass a run directory holding {ROWS} or {RUN}")
    if len(dirs) > 1:
        raise CompareError(
            f"{name}: {p} holds {len(dirs)} runs; name one run directory, e.g. {dirs[-1]} (the latest by name)"
        )
    return _load_run(dirs[0])



def json_safe(v: Any) -> Any:
    """``v`` with every non-finite float as None and tuples as lists, at any depth (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (tuple, list)):
        return [json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    return v


def save_baseline(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the cells of one run as a baseline JSON at ``path`` (parents created, overwritten)."""
    p = Path(run_dir)
    if p.is_file() and p.name != ROWS:
        raise CompareError(f"RUN_DIR: {p} is a file; pass the run directory (holding {ROWS}) to save as a baseline")
    side = load_side(p, "RUN_DIR")
    if side.kind != "run":
        raise CompareError(f"RUN_DIR: {p} is already a baseline; pass a run directory")
    if not side.cells:
        raise CompareError(f"RUN_DIR: {side.source} has no rows yet; run the suite first (`archbench run SUITE`)")
    data = {
        "schema": BASELINE_SCHEMA,
        "schema_version": BASELINE_VERSION,
        "created_at": now_iso(),
        "device": side.device_name,
        "env": side.env,
        "source_run": {"run_id": side.run_id, "suite": side.suite, "path": side.source},
        "cells": {k: c.to_json() for k, c in sorted(side.cells.items())},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
