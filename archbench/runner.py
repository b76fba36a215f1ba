"""Schedule cells onto isolated worker processes and write a row for each.

Workers are *spawned* (never forked: CUDA and threads do not survive a fork) and reused
across cells while healthy, because starting one (importing torch) costs seconds. A cell
that raises comes back as a row with status error / oom / unsupported; a worker that dies
(segfault, abort, the kernel's OOM killer) or overruns the cell's ``timeout_s`` is killed,
its cell recorded as ``error`` / ``timeout`` with the tail of the worker's log, and a fresh
worker takes the next cell. Cells run one at a time so that they never contend for the
device they are timing.

With ``jobs`` > 1, *task* cells (training runs, whose result is an accuracy, not a time) run up
to ``jobs`` at a time on a pool of workers, each given ``cpu_count // jobs`` threads unless the
cell sets ``threads``; the task cells go first, then the timing cells run alone on their own
worker, as always. Rows are appended as cells finish.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from archbench import pooling
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


@dataclass
class _InFlight:
    """A cell sent to a worker and not yet answered."""

    index: int
    cell: Cell
    worker: Worker
    started: str
    t0: float
    deadline: float


def task_cost(cell: Cell) -> float:
    """A task cell's training work, up to a constant: optimiser steps x learning rates x seeds x
    tokens per step x width x depth (attention's extra T factor ignored): enough to order cells."""
    train = cell.train
    if train is None:
        return 0.0
    lrs = len(train.lr) if isinstance(train.lr, list) else 1
    return float(train.steps * lrs * train.seeds * train.batch_size * cell.seq_len * cell.d_model * max(1, cell.n_layers))


def schedule(todo):
    """The order of a pooled run (``jobs`` > 1): every task cell first, so the pool never drains
    for a timing cell in between, the longest first (so the run does not end on one long cell
    training alone on its share of the threads), then the timing cells in suite order."""
    return sorted(todo, key=lambda item: (item[1].mode != "task", -task_cost(item[1]) if item[1].mode == "task" else 0))


class Runner:
    """Runs cells on a reusable worker (task cells ``jobs`` at a time), appending a row per cell to ``run_dir``."""

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
        jobs: int = 1,
        rounds: int = 1,
    ):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1 (got {jobs})")
        if int(rounds) < 1:
            raise ValueError(f"rounds must be >= 1 (got {rounds})")
        self.jobs = int(jobs)
        self.rounds = int(rounds)
        self._round_rows: dict[str, list[dict]] = {}  # timing cells' rows, round by round
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
        self._oom_at: dict[tuple, int] = {}  # curve -> shortest seq_len that ran out of memory

    def run(self, skip_keys: set[str] | frozenset = frozenset()) -> RunSummary:
        summary = RunSummary()
        todo = deque()
        for i, cell in enumerate(self.cells):
            if cell.key in skip_keys:
                summary.skipped_done += 1
            else:
                todo.append((i, cell))
        if self.jobs > 1:
            todo = deque(schedule(todo))
        pool: list[Worker] = []  # idle workers of the task pool
        active: list[_InFlight] = []
        try:
            self._oom_at.clear()
            while todo or active:
                while todo and len(active) < self.jobs and self.jobs > 1 and todo[0][1].mode == "task":
                    i, cell = todo.popleft()
                    self._start_pooled(i, cell, pool, active, summary)
                if todo and not active and (self.jobs == 1 or todo[0][1].mode != "task"):
                    i, cell = todo.popleft()  # one cell alone: every timing cell, and everything when jobs = 1
                    if self.on_start:
                        self.on_start(i, cell)
                    self._record(i, cell, self._exclusive(cell), summary)
                    continue
                if active:
                    wait([f.worker.conn for f in active], timeout=POLL_S)
                    for f in list(active):
                        row = self._check(f)
                        if row is not None:
                            active.remove(f)
                            if f.worker.alive():
                                pool.append(f.worker)
                            self._record(f.index, f.cell, row, summary)
            self._more_rounds()
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            for f in active:
                f.worker.kill()
            for w in pool:
                w.stop()
            if self.worker is not None:
                self.worker.stop()
                self.worker = None
        return summary

    def _exclusive(self, cell: Cell) -> dict:
        """The row of a cell run alone, or of a longer length skipped after its curve ran out of memory."""
        curve = cell.without_seq_len()
        if cell.stop_after_oom and curve in self._oom_at and cell.seq_len > self._oom_at[curve]:
            reason = f"not run: this cell ran out of memory at seq_len={self._oom_at[curve]} (stop_after_oom)"
            return self._row(cell, now_iso(), time.monotonic(), {"status": "skipped", "error": reason})
        row = self._run_one(cell)
        if row["status"] == "oom":
            self._oom_at[curve] = min(self._oom_at.get(curve, cell.seq_len), cell.seq_len)
        return row

    @property
    def total_steps(self) -> int:
        """Cells to run, counting every round of a timing cell (what a progress bar counts)."""
        timed = sum(c.mode != "task" for c in self.cells)
        return len(self.cells) + (self.rounds - 1) * timed

    def _more_rounds(self) -> None:
        """Rounds 2..N of the timing cells whose first round was ok, in passes over the suite that
        alternate direction (last to first, then first to last, ...), so that a slow phase of a
        shared machine, or a drift over the run, falls on every cell alike. Each round's row is
        appended as it comes (a stopped run keeps them), and after a cell's last round its pooled
        row (``archbench.pooling``: the samples of every ok round)."""
        if self.rounds == 1:
            return
        order = [(i, c) for i, c in enumerate(self.cells) if (self._round_rows.get(c.key) or [{}])[0].get("status") == "ok"]
        for r in range(2, self.rounds + 1):
            for i, cell in reversed(order) if r % 2 == 0 else order:
                if self.on_start:
                    self.on_start(i, cell)
                row = self._exclusive(cell)
                row.update(round=r, rounds=self.rounds)
                rows = self._round_rows[cell.key]
                rows.append(row)
                self.run_dir.append(row)
                if r == self.rounds:
                    self.run_dir.append({**pooling.pool_rows(rows), "round": None})
                if self.on_row:
                    self.on_row(i, cell, row)

    def _record(self, i: int, cell: Cell, row: dict, summary: RunSummary) -> None:
        if self.rounds > 1 and cell.mode != "task":
            row.update(round=1, rounds=self.rounds)
            self._round_rows[cell.key] = [row]
        self.run_dir.append(row)
        summary.counts[row["status"]] += 1
        if self.on_row:
            self.on_row(i, cell, row)

    def _start_pooled(self, i: int, cell: Cell, pool: list[Worker], active: list[_InFlight], summary) -> None:
        """Send a task cell to an idle pool worker (a new one if none), with its share of the threads."""
        if self.on_start:
            self.on_start(i, cell)
        started, t0 = now_iso(), time.monotonic()
        try:
            worker = pool.pop() if pool else Worker(self.run_dir.logs, self.plugins, self.code_path)
        except WorkerStartError as e:
            self._record(i, cell, self._row(cell, started, t0, {"status": "error", "error": str(e)}), summary)
            return
        threads = None if cell.threads else max(1, (os.cpu_count() or 1) // self.jobs)
        sent = self._send(cell, worker, threads)
        if sent is not None:
            self._record(i, cell, self._row(cell, started, t0, sent), summary)
            return
        active.append(_InFlight(i, cell, worker, started, t0, t0 + cell.timeout_s))

    def _send(self, cell: Cell, worker: Worker, threads: int | None = None) -> dict | None:
        """Send ``cell`` to ``worker``; an error result if it could not be sent (the worker is then killed)."""
        payload = cell.model_dump()
        payload["key"] = cell.key
        if threads:
            payload["threads"] = threads
        try:
            worker.conn.send(payload)
        except (OSError, BrokenPipeError) as e:
            worker.kill()
            return {"status": "error", "error": f"could not send cell to worker: {e}"}
        return None

    def _check(self, f: _InFlight) -> dict | None:
        """The cell's row once it is answered, dies or overruns its timeout (the worker is then killed); else
        None after passing on any progress messages."""
        w, cell = f.worker, f.cell
        while w.conn.poll(0):
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                break  # died while answering: the crash path below
            if isinstance(msg, tuple) and msg and msg[0] == "progress":
                if self.on_progress:
                    self.on_progress(cell, msg[1])
                continue
            if msg is not None:
                return self._row(cell, f.started, f.t0, msg)
        if not w.alive() or w.conn.closed:
            w.proc.join(timeout=5)
            err = f"worker died during the cell: {w.death_reason()}{w.log_tail()}"
            w.kill()
            return self._row(cell, f.started, f.t0, {"status": "error", "error": err})
        if time.monotonic() > f.deadline:
            w.kill()
            err = f"cell exceeded its timeout of {cell.timeout_s:g} s; worker killed{w.log_tail(400)}"
            return self._row(cell, f.started, f.t0, {"status": "timeout", "error": err})
        return None

    def _row(self, cell: Cell, started: str, t0: float, result: dict) -> dict:
        row = {"key": cell.key, **self.base_row, **cell.identity()}
        if cell.backend_choice:
            row["backend_choice"] = cell.backend_choice
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
        sent = self._send(cell, w)
        if sent is not None:
            self.worker = None
            return self._row(cell, started, t0, sent)
        f = _InFlight(-1, cell, w, started, t0, time.monotonic() + cell.timeout_s)
        while True:
            w.conn.poll(POLL_S)
            row = self._check(f)
            if row is not None:
                if not w.alive():
                    self.worker = None
                return row
