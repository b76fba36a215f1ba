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

Crash consistency (docs/reliability.md). A writer holds an exclusive ``flock`` on
``rows.jsonl.lock`` for the whole run (the kernel drops it if the holder dies, so a killed run never
leaves a stale lock); the file names the holder's pid and host for the one-line refusal a second
writer gets. Each row is one ``write`` + ``fsync``, so a crash can tear only the last line: the
next writer finds it on opening (``RunDir.acquire``), moves the fragment to ``rows.jsonl.torn`` and
appends after a clean newline. Readers never fail on a bad line: they skip it and report it
(``scan_rows``, ``skipped_lines``, ``load(...).attrs["skipped_lines"]``, ``describe_skipped``).

A run directory may hold several rows files: ``rows.jsonl`` and per-shard
``rows-<i>of<N>.jsonl``, one writer each (lock ``rows-<i>of<N>.jsonl.lock``); readers merge them
all. A sharded run keeps the plan of the whole sweep in ``run.json`` (written once, by whichever
process gets there first: ``claim_run_meta``) and each shard's own state in
``shard-<i>of<N>.json`` (its cells, status, pid and host), so that no two processes ever rewrite
one file; ``archbench status`` reads them with the locks (``lock_held``) to tell a running shard
from a dead one.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pandas as pd

from archbench.schema import STATUSES, check_row  # noqa: F401 - STATUSES re-exported for readers of the store

ROWS = "rows.jsonl"
RUN = "run.json"
ROWS_RE = re.compile(r"^rows(?:-(\d+)of(\d+))?\.jsonl$")  # rows.jsonl, rows-<i>of<N>.jsonl
SHARD_META_RE = re.compile(r"^shard-(\d+)of(\d+)\.json$")  # one shard's state
TORN = ".torn"  # rows.jsonl.torn: fragments of torn last lines, set aside
LOCK = ".lock"  # rows.jsonl.lock: flock'ed by the one writer of rows.jsonl
RUN_ID_RE = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


class StoreError(Exception):
    """A run directory that cannot be used; the message is one line and says what to do."""


class RunLocked(StoreError):
    """Another live process writes this run directory."""


def create_run_dir(root: str | os.PathLike) -> Path:
    """A new, empty run directory under ``root`` named by the time, made with an exclusive mkdir:
    runs started in the same second get ``<id>-2``, ``<id>-3``, ... and never share a directory."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create {root}: {e.strerror or e}; choose a writable --results-dir or --out") from None
    base = new_run_id()
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise StoreError(f"cannot create {path}: {e.strerror or e}; choose a writable --results-dir or --out") from None
    raise StoreError(f"{root}: 10000 runs started in the second {base}; choose an --out")


def _run_order(d: Path) -> tuple:
    """Sort key of run directories: by time, then by the collision suffix (``-2`` before ``-10``)."""
    m = RUN_ID_RE.match(d.name)
    return (m.group(1), int(m.group(2) or 1), "") if m else (d.name, 0, d.name)


def rows_file_name(shard: tuple[int, int] | None = None) -> str:
    """``rows.jsonl``, or ``rows-<i>of<N>.jsonl`` for shard i of N (each shard has its own writer)."""
    return ROWS if shard is None else f"rows-{shard[0]}of{shard[1]}.jsonl"


def rows_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every rows file of a run directory: ``rows.jsonl`` first, then the shards in order."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if ROWS_RE.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (p.name != ROWS, [int(x) for x in ROWS_RE.match(p.name).groups() if x]))


@dataclass(frozen=True)
class SkippedLine:
    """A line of a rows file that readers left out: where, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.reason})"


def describe_skipped(skipped: Iterable[SkippedLine | dict], limit: int = 3) -> str | None:
    """One line for users: how many lines were skipped and where (None when none were)."""
    items = [s if isinstance(s, SkippedLine) else SkippedLine(**s) for s in skipped]
    if not items:
        return None
    shown = ", ".join(map(str, items[:limit])) + (f" and {len(items) - limit} more" if len(items) > limit else "")
    return f"skipped {len(items)} unreadable line(s) of rows files: {shown}"


class RunDir:
    """Append-only writer (and reader) for one run directory."""

    def __init__(self, path: str | os.PathLike, shard: tuple[int, int] | None = None):
        """``shard`` (i, N): this writer appends to ``rows-<i>of<N>.jsonl``; reading merges every rows file."""
        self.path = Path(path)
        self.shard = shard
        self.rows_path = self.path / rows_file_name(shard)
        self.run_path = self.path / RUN
        self.meta_path = self.run_path if shard is None else self.path / shard_meta_name(shard)  # this writer's state
        self.lock_path = self.rows_path.with_name(self.rows_path.name + LOCK)
        self.skipped_lines: list[SkippedLine] = []  # what the last ``rows()`` left out
        self._lock_fd: int | None = None

    def create(self) -> "RunDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "logs").mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write the run directory {self.path}: {e.strerror or e}; choose a writable --out") from None
        return self

    def has_rows(self) -> bool:
        return bool(rows_files(self.path))

    # ---- one writer ----------------------------------------------------------------------

    def acquire(self) -> str | None:
        """Become this rows file's only writer (an exclusive, non-blocking ``flock`` held until
        ``release`` or the process's death), then set aside a torn last line. Returns a warning
        when a line was set aside. Raises ``RunLocked`` naming the holder's pid and host."""
        import fcntl

        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot write the run directory {self.path}: {e.strerror or e}; choose a writable --out") from None
        for attempt in range(4):  # a few tries: ``lock_held`` (archbench status) takes it for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt < 3:
                    time.sleep(0.05)
                    continue
                holder = _lock_holder(fd)
                os.close(fd)
                what = "" if self.shard is None else f" (shard {self.shard[0]}/{self.shard[1]})"
                raise RunLocked(
                    f"{self.path}{what} is being written by another archbench run ({holder}); wait for it to end, or choose another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._lock_fd = fd
        return self.repair()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def repair(self) -> str | None:
        """Set aside a torn last line of this writer's rows file (a crash mid-write): the fragment
        is appended to ``<rows file>.torn`` and the file cut back to its last newline, so the next
        row starts on a line of its own. A last line that is whole JSON but lost only its newline
        is kept. Call it holding the lock; returns a warning, or None when nothing was torn."""
        p = self.rows_path
        if not p.is_file() or p.stat().st_size == 0:
            return None
        with open(p, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1  # 0 when the file is one torn line
            fragment = data[cut:]
            try:
                whole = isinstance(json.loads(fragment), dict)
            except ValueError:
                whole = False
            if not whole:
                torn = p.with_name(p.name + TORN)
                with open(torn, "ab") as t:
                    t.write(fragment + b"\n")
                    t.flush()
                    os.fsync(t.fileno())
                f.truncate(cut)
            else:
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        if whole:
            return None
        line = data.count(b"\n", 0, cut) + 1
        return f"{p}: line {line} was torn by a crash mid-write ({len(fragment)} bytes); set aside in {torn.name}"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rows(self) -> list[dict]:
        """Every row of every rows file of the run (shards merged); bad lines are skipped and
        listed in ``self.skipped_lines``."""
        rows, self.skipped_lines = [], []
        for p in rows_files(self.path):
            got, skipped = scan_rows(p)
            rows.extend(got)
            self.skipped_lines.extend(skipped)
        return rows

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
        """One row: a single ``write`` of the whole line and its newline, then ``fsync``. A row the
        row contract refuses (no status of ``STATUSES``; no key, unless it names its recipe or
        model: ``archbench.schema.check_row``) raises a one-line ValueError and is not written."""
        check_row(row)
        data = (json.dumps(row, default=_json_default, allow_nan=True) + "\n").encode("utf-8")
        try:
            fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:  # a regular file takes it whole; loop only on a short write
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot append a row to {self.rows_path}: {e.strerror or e}; free space or fix permissions, then --resume") from None

    def read_meta(self) -> dict:
        """This writer's state: run.json, or a shard's ``shard-<i>of<N>.json``."""
        if not self.meta_path.is_file():
            return {}
        return json.loads(self.meta_path.read_text())

    def write_meta(self, meta: dict) -> None:
        tmp = self.meta_path.with_name(f"{self.meta_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=_json_default))
        os.replace(tmp, self.meta_path)

    def update_meta(self, **fields) -> dict:
        """Set ``fields`` in this writer's state file (read, updated, replaced whole); returns it."""
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)
        return meta

    def shards_complete(self) -> bool:
        """Whether the run is complete as far as this writer can tell: an unsharded run when its
        writer ends; a sharded one when every shard's state file says ``complete``."""
        if not self.shard:
            return True
        n = RunDir(self.path).read_meta().get("shards") or self.shard[1]
        metas = shard_metas(self.path)
        return all(metas.get((i, n), {}).get("status") == "complete" for i in range(n))

    def claim_run_meta(self, meta: dict) -> tuple[dict, bool]:
        """Write run.json as ``meta`` unless it exists (atomically: the first of many shards
        starting at once wins); returns what run.json holds and whether this call wrote it."""
        tmp = self.run_path.with_name(f"{RUN}.{os.getpid()}.claim")
        tmp.write_text(json.dumps(meta, indent=2, default=_json_default))
        try:
            os.link(tmp, self.run_path)  # fails if run.json exists, on NFS too
            return meta, True
        except FileExistsError:
            return json.loads(self.run_path.read_text()), False
        finally:
            tmp.unlink(missing_ok=True)


def shard_meta_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}of{shard[1]}.json"


def shard_metas(run_dir: str | os.PathLike) -> dict[tuple[int, int], dict]:
    """Every shard's state file of a run directory, by (i, N); a damaged one reads as {}."""
    out = {}
    d = Path(run_dir)
    for p in sorted(d.glob("shard-*of*.json")) if d.is_dir() else ():
        m = SHARD_META_RE.match(p.name)
        if not m:
            continue
        try:
            out[(int(m.group(1)), int(m.group(2)))] = json.loads(p.read_text())
        except (OSError, ValueError):
            out[(int(m.group(1)), int(m.group(2)))] = {}
    return dict(sorted(out.items()))


def lock_held(lock_path: str | os.PathLike) -> bool | None:
    """Whether a live process holds this rows file's lock (a shared ``flock`` tried for an
    instant; writers retry, so the probe never turns one away). None when there is no lock file."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "model_dump"):
        return o.model_dump()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def scan_rows(path: str | os.PathLike) -> tuple[list[dict], list[SkippedLine]]:
    """The rows of one rows file, and the lines left out: not JSON (a torn last line, a
    damaged one), or JSON that is not an object."""
    p = Path(path)
    if not p.is_file():
        return [], []
    rows, skipped = [], []
    with open(p, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = i == len(lines)  # no newline after it: a write cut short
        try:
            row = json.loads(raw)
        except ValueError:
            skipped.append(SkippedLine(str(p), i, "torn last line" if last else "not JSON"))
            continue
        if not isinstance(row, dict):
            skipped.append(SkippedLine(str(p), i, f"a JSON {type(row).__name__}, not an object"))
            continue
        rows.append(row)
    return rows, skipped


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a rows file; unreadable lines (a torn last line: a run killed mid-write) are
    skipped (``scan_rows`` says which)."""
    return scan_rows(path)[0]


def skipped_lines(*paths: str | os.PathLike) -> list[SkippedLine]:
    """The unreadable lines of every rows file of the runs under ``paths`` (for ``report``,
    ``compare`` and ``export`` to print with ``describe_skipped``)."""
    out: list[SkippedLine] = []
    for d in find_run_dirs(paths):
        for p in rows_files(d):
            out.extend(scan_rows(p)[1])
    return out


def _lock_holder(fd: int) -> str:
    """Who holds a run's lock, as the holder wrote it (it may not have written yet: retry briefly)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "holder unknown"


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run dir, a rows.jsonl, or any folder above run dirs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and ROWS_RE.match(p.name):
            found.append(p.parent)
        elif rows_files(p) or (p / RUN).is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted({r.parent for r in p.rglob("rows*.jsonl") if ROWS_RE.match(r.name)}))
        else:
            raise FileNotFoundError(f"no run found at {p} (expected a run directory holding {ROWS})")
    return list(dict.fromkeys(found))


def latest_run(root: str | os.PathLike) -> Path | None:
    """The most recent run directory directly under ``root`` (results/<suite>)."""
    r = Path(root)
    if not r.is_dir():
        return None
    runs = sorted((d for d in r.iterdir() if d.is_dir() and ((d / RUN).is_file() or rows_files(d))), key=_run_order)
    return runs[-1] if runs else None


def load(*paths: str | os.PathLike, all_rows: bool = False) -> pd.DataFrame:
    """A DataFrame of the rows of one or many runs (``env`` flattened to ``env_*`` columns).

    By default only the last row of each key within a run is kept (a retried cell
    replaces its failed attempt; rows without a key are all kept); ``all_rows=True`` keeps
    every attempt. Rows of every rows file of a run (shards) are merged. Rows of cells that
    left the suite when a run was resumed with ``--allow-changed`` get ``stale = True``.

    ``df.attrs["skipped_lines"]`` lists the lines left out (dicts: path, line, reason);
    ``describe_skipped`` turns it into the one line to print.
    """
    if len(paths) == 1 and isinstance(paths[0], (list, tuple)):
        paths = tuple(paths[0])
    records = []
    skipped: list[SkippedLine] = []
    for run_dir in find_run_dirs(paths):
        rd = RunDir(run_dir)
        rows = rd.rows()
        skipped.extend(rd.skipped_lines)
        try:
            stale = set(rd.read_meta().get("stale_keys") or ())
        except ValueError:  # a damaged run.json labels nothing; the rows stand on their own
            stale = set()
        for shard_meta in shard_metas(run_dir).values():
            stale |= set(shard_meta.get("stale_keys") or ())
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
            if r.get("key") in stale:
                r["stale"] = True
            records.append(r)
    df = pd.DataFrame.from_records(records)
    df.attrs["skipped_lines"] = [dict(vars(s)) for s in skipped]
    return df


def load_meta(*paths: str | os.PathLike) -> list[dict]:
    """The run.json of each run under ``paths``."""
    return [RunDir(d).read_meta() | {"run_dir": str(d)} for d in find_run_dirs(paths)]
