"""Worker processes as the runner sees them: where each runs (``Slot``) and the handle on one
(``Worker``).

A slot is a place for one worker: a GPU it is pinned to by ``CUDA_VISIBLE_DEVICES`` at spawn
(``gpu_slots``, ``--gpus``), a disjoint set of CPU cores it pins itself to before importing
torch (``cpu_slots``, ``--workers``), or simply this CPU. A ``Worker`` is *spawned* (never
forked: CUDA and threads do not survive a fork), says when it has imported everything, and is
killed with a reason (``death_reason``, ``crash_report``) when it dies or overruns a cell.

A worker may run another copy of archbench (``code_path``: the A/B runs of ``archbench ab``);
that copy may be older than this one, with the worker module at ``archbench/worker.py`` rather
than ``archbench/run/worker.py``, so the module a worker starts from is looked up in the copy it
runs (``worker_module``).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from archbench.run import worker as worker_mod

WORKER_START_TIMEOUT_S = 180.0
POLL_S = 0.05
WORKER_MODULES = ("archbench.run.worker", "archbench.worker")  # this layout first, then older checkouts'


class WorkerStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: ``env`` is set in its environment at spawn (``CUDA_VISIBLE_DEVICES``
    pins it to a GPU), ``cores`` are the CPU cores it may use (it pins itself before importing
    torch), ``gpu`` is the GPU's index on this machine, and ``facts`` join the env of its rows."""

    name: str = "worker"
    env: tuple[tuple[str, str], ...] = ()
    cores: tuple[int, ...] | None = None
    gpu: int | None = None
    facts: tuple[tuple[str, object], ...] = ()


def gpu_slots(gpus: list[int], facts: dict[int, dict] | None = None) -> list[Slot]:
    """One slot per GPU index (as this process numbers its GPUs), pinned with
    ``CUDA_VISIBLE_DEVICES`` (cells then see it as ``cuda`` / ``cuda:0``); ``facts[g]`` (index,
    UUID) join the env of the rows measured on GPU ``g``."""
    from archbench.measure.env import physical_gpu  # a runner itself limited to some GPUs passes on their names

    facts = facts or {}
    return [Slot(f"gpu{g}", env=(("CUDA_VISIBLE_DEVICES", str(physical_gpu(g))),), gpu=g,
                 facts=tuple(sorted((facts.get(g) or {"gpu_index": g}).items()))) for g in gpus]  # fmt: skip


def cpu_slots(n: int, cores: list[list[int]] | None = None) -> list[Slot]:
    """``n`` slots on this CPU, each on its own set of cores when ``cores`` is given (``--workers``)."""
    return [Slot(f"cpu{k}", cores=tuple(cores[k]) if cores else None) for k in range(n)]


def slots_for(gpus: str | None, workers: int | None, cells) -> list[Slot] | None:
    """The slots of ``--gpus`` (one per GPU, pinned; checked against the cells' devices) or
    ``--workers`` (disjoint cores); None for the default single worker. Raises ``PlanError``."""
    from archbench.run.plan import PlanError, core_sets, parse_gpus, visible_gpus

    if gpus:
        fake = bool(os.environ.get("ARCHBENCH_FAKE_GPUS"))
        chosen = parse_gpus(gpus, visible_gpus())
        pinned = sorted({c.device for c in cells if c.device.startswith("cuda:")})
        if pinned and not fake:
            raise PlanError(f"--gpus schedules every cell over the GPUs, but the suite pins cells to {pinned[0]}; "
                            "set its device to cuda (or --device cuda)")
        if not fake and any(c.device == "cpu" for c in cells):
            raise PlanError("--gpus runs CUDA cells, but the suite's cells are on the cpu; add --device cuda, or use --workers N on a CPU")
        return gpu_slots(chosen, facts=None if fake else {g: gpu_facts(g) for g in chosen})
    if workers:
        return cpu_slots(workers, core_sets(workers))
    return None


def gpu_facts(index: int) -> dict:
    """What rows measured on GPU ``index`` say about it: index, UUID, clocks, power limit, driver."""
    from archbench.measure.env import gpu_identity, nvml_device_info, physical_gpu

    target = physical_gpu(index)
    facts = nvml_device_info(index)
    facts.update(gpu_identity(target) if isinstance(target, int) else {"gpu_uuid": target})
    return facts


def worker_module(code_path: str | None) -> str:
    """The module a worker running the ``code_path`` copy of archbench starts from (this code's
    own when None): the first of ``WORKER_MODULES`` that copy has."""
    if not code_path:
        return worker_mod.__name__
    for name in WORKER_MODULES:
        if (Path(code_path) / (name.replace(".", "/") + ".py")).is_file():
            return name
    return WORKER_MODULES[0]  # a copy with neither: the child's import error is the worker's start error


class _ModuleAttr:
    """``module.name``, looked up where it is unpickled: a spawned child imports it from its own
    ``sys.path`` (the ``code_path`` copy first), which may lay out its modules unlike this one."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        return getattr(importlib.import_module(self.module), self.name)(*args)

    def __reduce__(self):
        return getattr, (_Module(self.module), self.name)


class _Module:
    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return importlib.import_module, (self.name,)


def _knows_lifeline(code_path: str | None) -> bool:
    """Whether the worker a ``code_path`` copy of archbench runs takes the lifeline arguments."""
    if not code_path:
        return True
    try:
        return "lifeline" in (Path(code_path) / (worker_module(code_path).replace(".", "/") + ".py")).read_text()
    except OSError:
        return True


class Worker:
    """One spawned worker process and the pipe to it."""

    _counter = 0

    def __init__(self, log_dir: Path | None, plugins: list[str], code_path: str | None = None, slot: Slot | None = None,
                 wait: bool = True):
        """``code_path``: a directory holding another copy of the ``archbench`` package (a git
        revision, another checkout); the worker imports that code instead of this one (A/B runs).
        ``slot``: the environment and cores the worker is pinned to. ``wait=False`` returns at
        once: call ``wait_ready`` (several workers then start side by side)."""
        Worker._counter += 1
        self.log_path = str((log_dir / f"worker-{Worker._counter}.log").absolute()) if log_dir else None
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        lifeline, self._lifeline = ctx.Pipe(duplex=False)  # the child watches for its end of file
        args = (child, self.log_path, plugins, lifeline, os.getpid())
        if not _knows_lifeline(code_path):
            args = args[:3]  # an A/B side checked out from before workers took a lifeline
        module = worker_module(code_path)
        target = worker_mod.main if module == worker_mod.__name__ else _ModuleAttr(module, "main")
        self.proc = ctx.Process(target=target, args=args, daemon=True)
        saved, saved_env = list(sys.path), dict(os.environ)
        if code_path:  # the spawned child takes the parent's sys.path at start: put that code first
            sys.path.insert(0, str(code_path))
        if slot is not None:  # ...and its environment: pinned before it imports anything
            os.environ.update(dict(slot.env))
            if slot.cores:
                os.environ[worker_mod.CORES_ENV] = ",".join(map(str, slot.cores))
        try:
            self.proc.start()
        finally:
            sys.path[:] = saved
            if slot is not None:
                os.environ.clear()
                os.environ.update(saved_env)
        child.close()
        lifeline.close()
        self._started = time.monotonic()
        self.ready = False
        if wait:
            self.wait_ready()

    def wait_ready(self) -> "Worker":
        """Block until the worker has imported everything and said so; ``WorkerStartError`` if it
        dies or takes longer than ``WORKER_START_TIMEOUT_S`` from its start."""
        deadline = self._started + WORKER_START_TIMEOUT_S
        while not self.ready and time.monotonic() < deadline:
            if self.conn.poll(POLL_S):
                try:
                    msg = self.conn.recv()
                except EOFError:
                    break
                if msg and msg[0] == "ready":
                    self.ready = True
                    return self
            if not self.proc.is_alive():
                break
        if self.ready:
            return self
        self.kill()
        raise WorkerStartError(f"worker process failed to start ({self.death_reason()}){self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()
        self._lifeline.close()

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

    def crash_report(self) -> str:
        """For a worker that died: the fatal error and crashing frames faulthandler logged, and the log's path."""
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        return "\n" + worker_mod.crash_summary(Path(self.log_path).read_text(errors="replace"), self.log_path)
