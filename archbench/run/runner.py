"""Schedule cells onto isolated worker processes and write a row for each.

Workers (``archbench.run.pool``) are reused across cells while healthy, because starting one
(importing torch) costs seconds. A cell that raises comes back as a row with status error / oom /
unsupported; a worker that dies (segfault, abort, the kernel's OOM killer) or overruns the cell's
``timeout_s`` is killed, its cell recorded as ``error`` / ``timeout`` with the tail of the
worker's log, and a fresh worker takes the next cell. Cells run one at a time so that they never
contend for the device they are timing.

Workers live in *slots* (``pool.Slot``): where a worker runs and what its rows say about it. On
one CPU, with ``jobs`` > 1 slots, *task* cells (training runs, whose result is an accuracy, not a
time) run up to ``jobs`` at a time, each on its slot's disjoint set of cores when the slot has
one (``--workers``) or with ``cpu_count // jobs`` threads (``--jobs``) unless the cell sets
``threads``; the task cells go first, the longest first, then the timing cells run alone, as
always. With one slot per GPU (``--gpus``), each worker is pinned to its GPU by
``CUDA_VISIBLE_DEVICES`` at spawn and every cell, timing or task, goes to the next idle GPU,
longest expected first (``archbench.run.plan``): a GPU runs one cell at a time, so timing cells
never share one, and each row's env names the GPU's index and UUID. Rows are appended as cells
finish.

Each cell goes to its worker as a dict of its fields plus ``key`` and, when the runner writes a
run directory, ``artifacts_dir`` (``<run dir>/artifacts/<cell key>``: where a cell may keep
files; created by whoever writes there, not part of the key).

Workers never outlive the runner (``archbench.run.worker.die_with_parent``: a death signal armed
by the kernel, and a lifeline pipe whose write end only the runner holds). When the run is
stopped (Ctrl-C, SIGTERM, SIGHUP: ``archbench.run.signals`` turns each into
``KeyboardInterrupt``) the cells in flight get no row, their workers are killed at once, and the
rows written so far stand.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Callable

from archbench.run import plan, pooling
from archbench.run.pool import POLL_S, Slot, Worker, WorkerStartError, cpu_slots
from archbench.store import RunDir, now_iso
from archbench.suite import Cell

ARTIFACTS = "artifacts"  # <run dir>/artifacts/<cell key>: files a cell keeps


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
    slot: int = 0


def schedule(todo, longest_first: bool = False):
    """The order of a run on several slots. On one CPU (``longest_first`` False): every task cell
    first, so the pool never drains for a timing cell in between, the longest first (so the run
    does not end on one long cell training alone on its share of the threads), then the timing
    cells in suite order. On GPUs (``longest_first``): every cell by expected cost, longest first."""
    if longest_first:
        cells = [c for _, c in todo]
        return [todo[k] for k in plan.longest_first(cells)]
    return sorted(todo, key=lambda item: (item[1].mode != "task", -plan.task_cost(item[1]) if item[1].mode == "task" else 0))


class Runner:
    """Runs cells on a reusable worker (task cells ``jobs`` at a time), appending a row per cell to ``run_dir``
    (``run_one`` alone also works without one: its rows are returned, not written)."""

    def __init__(
        self,
        cells: list[Cell],
        run_dir: RunDir | None,
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
        slots: list[Slot] | None = None,
    ):
        """``slots``: where workers run (``gpu_slots``, ``cpu_slots``); default ``jobs`` slots on this CPU."""
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1 (got {jobs})")
        if int(rounds) < 1:
            raise ValueError(f"rounds must be >= 1 (got {rounds})")
        self.slots = list(slots) if slots else cpu_slots(int(jobs))
        self.jobs = len(self.slots)
        self.on_gpus = all(s.gpu is not None for s in self.slots)  # each slot its own device: nothing runs alone
        if self.on_gpus and self.jobs > 1 and int(rounds) > 1:
            raise ValueError("rounds > 1 pools a cell's rounds on one device; run on one GPU, or shard the sweep")
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
        todo = []
        for i, cell in enumerate(self.cells):
            if cell.key in skip_keys:
                summary.skipped_done += 1
            else:
                todo.append((i, cell))
        if self.jobs > 1:
            todo = schedule(todo, longest_first=self.on_gpus)
        todo = deque(todo)
        idle = list(range(self.jobs))  # slots with no cell in flight
        workers: dict[int, Worker] = {}  # slot -> its worker, reused while healthy
        active: list[_InFlight] = []
        try:
            self._oom_at.clear()
            if self.jobs > 1 and self.on_gpus:
                self._start_workers(min(self.jobs, len(todo)), workers)
            def dispatch() -> None:
                while todo and idle and self._may_start(todo[0][1], active):
                    i, cell = todo.popleft()
                    slot = idle.pop(0)
                    f = self._start(i, cell, slot, workers, summary)
                    if f is None:
                        idle.insert(0, slot)  # recorded without running: the slot is still free
                    else:
                        active.append(f)

            while todo or active:
                dispatch()
                if not active:
                    continue
                wait([f.worker.conn for f in active], timeout=POLL_S)
                finished = []
                for f in list(active):
                    row = self._check(f)
                    if row is None:
                        continue
                    active.remove(f)
                    if not f.worker.alive():
                        workers.pop(f.slot, None)
                    idle.append(f.slot)
                    idle.sort()
                    if row["status"] == "oom":
                        curve = f.cell.without_seq_len()
                        self._oom_at[curve] = min(self._oom_at.get(curve, f.cell.seq_len), f.cell.seq_len)
                    finished.append((f, row))
                if self.on_gpus:
                    dispatch()  # the freed GPUs get their next cells before the rows are written (fsync)
                for f, row in finished:
                    self._record(f.index, f.cell, row, summary)
            self.worker = workers.pop(0, None)  # rounds 2..N run on the first slot's worker
            for w in workers.values():
                w.stop()
            workers.clear()
            self._more_rounds()
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            for f in active:
                f.worker.kill()
            for w in workers.values():
                w.kill() if summary.interrupted else w.stop()
            if self.worker is not None:
                self.worker.kill() if summary.interrupted else self.worker.stop()  # a stopped run waits for no cell
                self.worker = None
        return summary

    def _start_workers(self, n: int, workers: dict[int, Worker]) -> None:
        """Start the first ``n`` slots' workers side by side (each spends seconds importing torch)
        rather than one after another; one that fails is left out, and ``_start`` tries again and
        records why."""
        starting = {}
        for slot in range(n):
            try:
                starting[slot] = Worker(self._logs, self.plugins, self.code_path, slot=self.slots[slot], wait=False)
            except (OSError, WorkerStartError):
                continue
        try:
            for slot, w in starting.items():
                try:
                    workers[slot] = w.wait_ready()
                except WorkerStartError:
                    pass
        except BaseException:  # stopped while they start: none of them may outlive the run
            for w in starting.values():
                w.kill()
            raise

    def _may_start(self, cell: Cell, active: list[_InFlight]) -> bool:
        """Whether ``cell`` may start beside the cells in flight: always on its own GPU; on a
        shared CPU only task cells run together, and a timing cell runs alone."""
        if not active or self.on_gpus:
            return True
        return cell.mode == "task" and all(f.cell.mode == "task" for f in active)

    def _start(self, i: int, cell: Cell, slot: int, workers: dict[int, Worker], summary: RunSummary) -> _InFlight | None:
        """Send ``cell`` to slot ``slot``'s worker (a fresh one if it has none). None when the cell
        was recorded without running: skipped after its curve ran out of memory, or no worker."""
        if self.on_start:
            self.on_start(i, cell)
        started, t0 = now_iso(), time.monotonic()
        curve = cell.without_seq_len()
        if cell.stop_after_oom and curve in self._oom_at and cell.seq_len > self._oom_at[curve]:
            reason = f"not run: this cell ran out of memory at seq_len={self._oom_at[curve]} (stop_after_oom)"
            self._record(i, cell, self._row(cell, started, t0, {"status": "skipped", "error": reason}), summary)
            return None
        where = self.slots[slot]
        worker = workers.get(slot)
        if worker is None or not worker.alive():
            try:
                worker = workers[slot] = Worker(self._logs, self.plugins, self.code_path, slot=where)
            except WorkerStartError as e:
                workers.pop(slot, None)
                self._record(i, cell, self._row(cell, started, t0, {"status": "error", "error": str(e)}, where), summary)
                return None
        threads = None
        if cell.mode == "task" and not cell.threads and self.jobs > 1 and not self.on_gpus:
            threads = len(where.cores) if where.cores else max(1, (os.cpu_count() or 1) // self.jobs)
        sent = self._send(cell, worker, threads)
        if sent is not None:
            workers.pop(slot, None)
            self._record(i, cell, self._row(cell, started, t0, sent, where), summary)
            return None
        return _InFlight(i, cell, worker, started, t0, t0 + cell.timeout_s, slot)

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
        row (``archbench.run.pooling``: the samples of every ok round)."""
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

    def _send(self, cell: Cell, worker: Worker, threads: int | None = None) -> dict | None:
        """Send ``cell`` to ``worker``; an error result if it could not be sent (the worker is then killed)."""
        try:
            worker.conn.send(self.payload(cell, threads))
        except (OSError, BrokenPipeError) as e:
            worker.kill()
            return {"status": "error", "error": f"could not send cell to worker: {e}"}
        return None

    def payload(self, cell: Cell, threads: int | None = None) -> dict:
        """What a worker gets for ``cell``: its fields, its ``key``, ``artifacts_dir`` when this
        runner writes a run directory, and ``threads`` when the pool sets them."""
        payload = cell.model_dump()
        payload["key"] = cell.key
        if self.run_dir is not None:
            payload["artifacts_dir"] = str(self.run_dir.path / ARTIFACTS / cell.key)
        if threads:
            payload["threads"] = threads
        return payload

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
                return self._row(cell, f.started, f.t0, msg, self.slots[f.slot])
        if not w.alive() or w.conn.closed:
            w.proc.join(timeout=5)
            err = f"worker died during the cell: {w.death_reason()}{w.crash_report()}"
            w.kill()
            return self._row(cell, f.started, f.t0, {"status": "error", "error": err}, self.slots[f.slot])
        if time.monotonic() > f.deadline:
            w.kill()
            err = f"cell exceeded its timeout of {cell.timeout_s:g} s; worker killed{w.log_tail(400)}"
            err += f"\nfull log: {w.log_path}" if w.log_path else ""
            return self._row(cell, f.started, f.t0, {"status": "timeout", "error": err}, self.slots[f.slot])
        return None

    def _row(self, cell: Cell, started: str, t0: float, result: dict, slot: Slot | None = None) -> dict:
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
            env={**self.env, **dict(slot.facts if slot else ()), **({"threads": row["threads_used"]} if row.get("threads_used") else {})},
        )
        return row

    @property
    def _logs(self):
        return self.run_dir.logs if self.run_dir is not None else None

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
                self.worker = Worker(self._logs, self.plugins, self.code_path, slot=self.slots[0])
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
