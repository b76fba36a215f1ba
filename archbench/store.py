"""Results on disk: one directory per run, rows appended as cells finish.

    results/<suite>/<run-id>/
        run.json     the suite (as run), environment, start/end time, status counts
        rows.jsonl   one JSON object per finished cell, flushed and fsynced when written
        logs/        each worker process's stdout/stderr
        report.html  written at the end of the run

A row has the cell's fields at top level (``key``, ``arch``, ``backend``, ``mode``,
``dtype``, ``device``, ``batch``, ``seq_len``, ...), then ``status`` (ok, oom, timeout,
error, unsupported, skipped) and ``error``, then the measurements (``time_median_s``,
``time_p10_s``, ``time_p90_s``, ``repeats``, ``time_samples_s``, ``tokens_per_s``,
``peak_mem_bytes``, ``mem_method``, ...) and ``env`` (a dict). Rows are never rewritten;
a cell rerun (``--resume`` retries failed cells) appends a new row and ``load`` keeps the
last row of each key within a run.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pandas as pd

ROWS = "rows.jsonl"
RUN = "run.json"
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


class RunDir:
    """Append-only writer (and reader) for one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows_path = self.path / ROWS
        self.run_path = self.path / RUN

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "logs").mkdir(exist_ok=True)
        return self

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rows(self) -> list[dict]:
        return read_rows(self.rows_path)

    def done_keys(self, rounds: int = 1) -> set[str]:
        """Keys whose latest row is ok: what ``--resume`` skips. With ``rounds`` > 1 a timing
        cell counts only once its pooled row of that many rounds is there (a run stopped between
        rounds measures it again from its first round)."""
        latest: dict[str, dict] = {}
        for r in self.rows():
            latest[r.get("key")] = r
        def done(r: dict) -> bool:
            if r.get("status") != "ok":
                return False
            return rounds == 1 or r.get("mode") == "task" or (r.get("rounds") == rounds and r.get("round") is None)
        return {k for k, r in latest.items() if done(r)}

    def append(self, row: dict) -> None:
        line = json.dumps(row, default=_json_default, allow_nan=True)
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_meta(self) -> dict:
        if not self.run_path.is_file():
            return {}
        return json.loads(self.run_path.read_text())

    def write_meta(self, meta: dict) -> None:
        tmp = self.run_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=_json_default))
        os.replace(tmp, self.run_path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "model_dump"):
        return o.model_dump()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a rows.jsonl; a torn last line (a run killed mid-write) is ignored."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run dir, a rows.jsonl, or any folder above run dirs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == ROWS:
            found.append(p.parent)
        elif (p / ROWS).is_file() or (p / RUN).is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(r.parent for r in p.rglob(ROWS)))
        else:
            raise FileNotFoundError(f"no run found at {p} (expected a run directory holding {ROWS})")
    return list(dict.fromkeys(found))


def latest_run(root: str | os.PathLike) -> Path | None:
    """The most recent run directory directly under ``root`` (results/<suite>)."""
    r = Path(root)
    if not r.is_dir():
        return None
    runs = sorted(d for d in r.iterdir() if d.is_dir() and ((d / RUN).is_file() or (d / ROWS).is_file()))
    return runs[-1] if runs else None


def load(*paths: str | os.PathLike, all_rows: bool = False) -> pd.DataFrame:
    """A DataFrame of the rows of one or many runs (``env`` flattened to ``env_*`` columns).

    By default only the last row of each key within a run is kept (a retried cell
    replaces its failed attempt; rows without a key are all kept); ``all_rows=True`` keeps
    every attempt.
    """
    if len(paths) == 1 and isinstance(paths[0], (list, tuple)):
        paths = tuple(paths[0])
    records = []
    for run_dir in find_run_dirs(paths):
        rows = read_rows(run_dir / ROWS)
        if not all_rows:  # rows without a key (recipe rows, hand-written ones) are all kept
            latest = {}
            for i, r in enumerate(rows):
                latest[r.get("key") or ("", i)] = r
            rows = list(latest.values())
        for r in rows:
            r = dict(r)
            env = r.pop("env", None) or {}
            for k, v in env.items():
                r[f"env_{k}"] = v
            r.setdefault("run_dir", str(run_dir))
            records.append(r)
    return pd.DataFrame.from_records(records)


def load_meta(*paths: str | os.PathLike) -> list[dict]:
    """The run.json of each run under ``paths``."""
    return [RunDir(d).read_meta() | {"run_dir": str(d)} for d in find_run_dirs(paths)]
