"""Schedule cells onto isolated worker processes and write a row for each.

Workers are *spawned* (never forked: CUDA and threads do not survive a fork) and reused
across cells while healthy, because starting one (importing torch) costs seconds. A cell
that raises comes back as a row with status error / oom / unsupported; a worker that dies
(segfault, abort, the kernel's OOM killer) or overruns the cell's ``timeout_s`` is killed,
its cell recorded as ``error`` / ``timeout`` with the tail of the worker's log, and a fresh
worker takes the next cell. Cells run one at a time so that they never contend for the
device they are timing.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from archbench import worker as worker_mod
from archbench.store import RunDir, now_iso
from archbench.suite import Cell

WORKER_START_TIMEOUT_S = 180.0
POLL_S = 0.05


class WorkerStartError(RuntimeError):
    pass


class Worker:
    """One spawned worker process and the pipe to it."""

    _counter = 0

    def __init__(self, log_dir: Path | None, plugins: list[str], code_path: str | None = None):
        """``code_path``: a directory holding another copy of the ``archbench`` package (a git
        revision, another checkout); the worker imports that code instead of this one (A/B runs)."""
        Worker._counter += 1
        self.log_path = str(log_dir / f"worker-{Worker._counter}.log") if log_dir else None
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_mod.main, args=(child, self.log_path, plugins), daemon=True)
        saved = list(sys.path)
        if code_path:  # the spawned child takes the parent's sys.path at start: put that code first
            sys.path.insert(0, str(code_path))
        try:
            self.proc.start()
        finally:
            sys.path[:] = saved
        child.close()
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.conn.poll(POLL_S):
                try:
                    msg = self.conn.recv()
                except EOFError:
                    break
                if msg and msg[0] == "ready":
                    return
            if not self.proc.is_alive():
                break
        self.kill()
        raise WorkerStartError(f"worker process failed to start ({self.death_reason()}){self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(timeout=10)
        except (OSError, BrokenPipeError):
            pass
        self.kill()

    def death_reason(self) -> str:
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (possibly the kernel's OOM killer)" if name == "SIGKILL" else ""
            return f"killed by {name}{hint}"
        return f"exit code {code}"

    def log_tail(self, n_chars: int = 1500) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        text = Path(self.log_path).read_text(errors="replace").strip()
        return ("; worker log tail: " + text[-n_chars:]) if text else ""


@dataclass
class RunSummary:
    counts: Counter = field(default_factory=Counter)
    skipped_done: int = 0
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return self.counts["error"] + self.counts["timeout"]


class Runner:
    """Runs cells one at a time on a reusable worker, appending a row per cell to ``run_dir``."""

    def __init__(
        self,
        cells: list[Cell],
        run_dir: RunDir,
        *,
        plugins: list[str] | None = None,
        base_row: dict | None = None,
        env: dict | None = None,
        on_start: Callable[[int, Cell], None] | None = None,
        on_row: Callable[[int, Cell, dict], None] | None = None,
        on_progress: Callable[[Cell, dict], None] | None = None,
        code_path: str | None = None,
    ):
        self.cells = cells
        self.run_dir = run_dir
        self.plugins = list(plugins or [])
        self.base_row = dict(base_row or {})
        if env is None:
            from archbench.measure.env import collect_env

            env = collect_env(cells[0].device if cells else "cpu")
        self.env = dict(env)
        self.on_start = on_start
        self.on_row = on_row
        self.on_progress = on_progress
        self.code_path = code_path
        self.worker: Worker | None = None

    def run(self, skip_keys: set[str] | frozenset = frozenset()) -> RunSummary:
        summary = RunSummary()
        oom_at: dict[tuple, int] = {}  # curve -> shortest seq_len that ran out of memory
        try:
            for i, cell in enumerate(self.cells):
                if cell.key in skip_keys:
                    summary.skipped_done += 1
                    continue
                if self.on_start:
                    self.on_start(i, cell)
                curve = cell.without_seq_len()
                if cell.stop_after_oom and curve in oom_at and cell.seq_len > oom_at[curve]:
                    t0 = time.monotonic()
                    reason = f"not run: this cell ran out of memory at seq_len={oom_at[curve]} (stop_after_oom)"
                    row = self._row(cell, now_iso(), t0, {"status": "skipped", "error": reason})
                else:
                    row = self._run_one(cell)
                if row["status"] == "oom":
                    oom_at[curve] = min(oom_at.get(curve, cell.seq_len), cell.seq_len)
                self.run_dir.append(row)
                summary.counts[row["status"]] += 1
                if self.on_row:
                    self.on_row(i, cell, row)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if self.worker is not None:
                self.worker.stop()
                self.worker = None
        return summary

    def _row(self, cell: Cell, started: str, t0: float, result: dict) -> dict:
        row = {"key": cell.key, **self.base_row, **cell.identity()}
        row.update(status=result.get("status", "error"), error=result.get("error"))
        row.update({k: v for k, v in result.items() if k not in ("status", "error")})
        row.update(
            timeout_s=cell.timeout_s,
            started_at=started,
            ended_at=now_iso(),
            wall_s=round(time.monotonic() - t0, 4),
            env={**self.env, **({"threads": row["threads_used"]} if row.get("threads_used") else {})},
        )
        return row

    def close(self) -> None:
        """Stop the worker (``run`` does this itself; for callers driving ``run_one``)."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def run_one(self, cell: Cell) -> dict:
        """Run one cell on this runner's worker and return its row (not written anywhere)."""
        return self._run_one(cell)

    def _run_one(self, cell: Cell) -> dict:
        started, t0 = now_iso(), time.monotonic()
        if self.worker is None or not self.worker.alive():
            try:
                self.worker = Worker(self.run_dir.logs, self.plugins, self.code_path)
            except WorkerStartError as e:
                self.worker = None
                return self._row(cell, started, t0, {"status": "error", "error": str(e)})
        w = self.worker
        payload = cell.model_dump()
        payload["key"] = cell.key
        try:
            w.conn.send(payload)
        except (OSError, BrokenPipeError) as e:
            self.worker = None
            w.kill()
            return self._row(cell, started, t0, {"status": "error", "error": f"could not send cell to worker: {e}"})
        deadline = time.monotonic() + cell.timeout_s
        while True:
            if w.conn.poll(POLL_S):
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    msg = None  # died while answering: fall through to the crash path
                if isinstance(msg, tuple) and msg and msg[0] == "progress":
                    if self.on_progress:
                        self.on_progress(cell, msg[1])
                    continue
                if msg is not None:
                    return self._row(cell, started, t0, msg)
            if not w.alive() or w.conn.closed:
                w.proc.join(timeout=5)
                self.worker = None
                err = f"worker died during the cell: {w.death_reason()}{w.log_tail()}"
                w.kill()
                return self._row(cell, started, t0, {"status": "error", "error": err})
            if time.monotonic() > deadline:
                w.kill()
                self.worker = None
                err = f"cell exceeded its timeout of {cell.timeout_s:g} s; worker killed{w.log_tail(400)}"
                return self._row(cell, started, t0, {"status": "timeout", "error": err})
