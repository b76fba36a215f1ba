"""The worker process: runs cells sent by the runner, one at a time, and answers with rows.

Protocol over a ``multiprocessing`` pipe: the worker sends ``("ready", pid)`` once its
imports are done, then for each cell dict it receives it sends back one result dict
(``status``, ``error`` and the measurement fields), preceded by any number of
``("progress", info)`` messages from long cells (training); ``None`` tells it to exit. Its stdout
and stderr go to a log file (with faulthandler on), so a hard crash leaves a traceback the
runner can quote (``crash_summary``: the fatal error and the crashing thread's innermost frames).

A worker never outlives its runner, however the runner ends (docs/reliability.md): on Linux the
kernel sends it SIGKILL when the runner dies (``prctl(PR_SET_PDEATHSIG)``), and everywhere a
watchdog thread exits the process when the *lifeline* pipe, whose write end only the runner
holds, reaches end of file. Ctrl-C, SIGTERM and SIGHUP are the runner's to handle: it records
what it has and kills its workers.

Where it runs is set before it starts: ``CUDA_VISIBLE_DEVICES`` in its environment pins it to one
GPU (``pool.gpu_slots``), and ``ARCHBENCH_WORKER_CORES`` names the CPU cores it pins itself to
first thing, before torch starts its thread pools (``pool.cpu_slots``, ``--workers``).
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import sys
import threading
import traceback

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
ERROR_FRAMES = 3  # innermost traceback frames an error row keeps (the full traceback is in the log)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
CORES_ENV = "ARCHBENCH_WORKER_CORES"  # comma list of CPU cores the worker pins itself to


def classify(exc: BaseException, log_path: str | None = None) -> tuple[str, str]:
    """Map an exception to (status, error text). An error's text is its one-line message, then
    the innermost frames of its traceback (the failing line of user or kernel code last), then
    where the full worker log is."""
    from archbench.spec import Unsupported

    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom", text
    if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS):
        return "oom", text
    lines = [text if len(text) <= 2000 else text[:2000] + " ..."]
    for fr in traceback.extract_tb(exc.__traceback__)[-ERROR_FRAMES:]:
        code = f": {fr.line.strip()}" if fr.line else ""
        lines.append(f"  at {fr.filename}:{fr.lineno} in {fr.name}{code}")
    if log_path:
        lines.append(f"full traceback: {log_path}")
    return "error", "\n".join(lines)


_FATAL = re.compile(r"^Fatal Python error: .*$", re.M)
_STACK = re.compile(r"^(?:Current thread 0x[0-9a-f]+|Thread 0x[0-9a-f]+|Stack) \(most recent call first\):\n((?:  .*\n?)+)", re.M)


def crash_summary(log_text: str, log_path: str | None = None, n_frames: int = 4) -> str:
    """What faulthandler wrote for a hard crash (segfault, abort), cut to what a user acts on:
    the fatal error line and the crashing thread's innermost frames (its list of loaded
    extension modules left out), then the log's path. Without faulthandler output: the log's tail."""
    fatal = _FATAL.findall(log_text)
    stacks = list(_STACK.finditer(log_text))
    if fatal or stacks:
        current = [m for m in stacks if m.group(0).startswith("Current thread")]
        stack = (current or stacks)[-1].group(1).rstrip("\n").splitlines()[:n_frames] if stacks else []
        out = [fatal[-1] if fatal else "crashed"] + [f"  {line.strip()}" for line in stack]
    else:
        tail = log_text.strip()[-600:]
        out = [f"log tail: {tail}"] if tail else []
    if log_path:
        out.append(f"full log: {log_path}")
    return "\n".join(out)


def die_with_parent(parent_pid: int | None, lifeline=None) -> None:
    """Make this process end when its parent does: ``PR_SET_PDEATHSIG`` on Linux, and a watchdog
    thread that exits when ``lifeline`` (a pipe whose write end only the parent holds) closes."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still holds
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the death signal was armed
    if lifeline is not None:
        threading.Thread(target=_watch_lifeline, args=(lifeline,), name="archbench-lifeline", daemon=True).start()


def pin_cores(cores: str | None) -> list[int] | None:
    """Restrict this process (and the threads it starts later) to ``cores`` ("0,1"); None and
    an OS without affinity change nothing. Returns the cores now allowed."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
    return sorted(os.sched_getaffinity(0))


def _watch_lifeline(lifeline) -> None:  # pragma: no cover - runs in a child
    try:
        while True:
            lifeline.recv()  # the parent never writes: this returns only at end of file
    except (EOFError, OSError):
        os._exit(1)


def main(conn, log_path: str | None, plugins: list[str], lifeline=None, parent_pid: int | None = None) -> None:  # pragma: no cover - runs in a child
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the runner's to handle: it kills its workers itself
    die_with_parent(parent_pid, lifeline)
    pin_cores(os.environ.get(CORES_ENV))
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # torch and NVML number GPUs alike
    from archbench import allocator

    allocator.enable()  # huge pages for large CPU tensors, as in the CLI (before torch is imported)
    if log_path:
        log = open(log_path, "a", buffering=1)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        faulthandler.enable(file=log)
        print(f"worker pid {os.getpid()} (runner pid {parent_pid})", flush=True)
    import archbench
    from archbench import registry
    from archbench.bench import run_cell

    code_path = os.path.dirname(os.path.dirname(os.path.abspath(archbench.__file__)))

    registry.load_plugins(plugins)
    _warm_up_runtime()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            cell = conn.recv()
        except EOFError:  # the runner is gone
            return
        if cell is None:
            return
        what = f"recipe {cell.get('recipe')}" if cell.get("mode") == "recipe" else f"{cell.get('arch')}/{cell.get('backend')} {cell.get('mode')}"
        print(f"cell {cell.get('key')}: {what}", flush=True)
        try:
            result = {"status": "ok", "error": None, **run_cell(cell, progress=lambda info: conn.send(("progress", info)))}
            result["code_path"] = code_path  # which copy of archbench measured this (A/B runs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
            status, text = classify(exc, log_path)
            traceback.print_exc()
            result = {"status": status, "error": text}
        finally:
            _free_memory(cell.get("device", "cpu"))
        conn.send(result)


def _warm_up_runtime() -> None:
    """Start torch's thread pools and autograd engine once, so the first cell's time and
    memory do not carry one-off process start-up costs; then take every object alive now (the
    imported modules: torch, its compiler, archbench, the plugins) out of the garbage collector's
    view (``gc.freeze``). The full collection before each cell (``bench``) and after it (here)
    then scans only what cells create: with torch's compiler imported, a full collection of
    everything takes a few hundred milliseconds of CPU, once or twice per cell."""
    import gc

    import torch
    import torch._dynamo  # noqa: F401 - every mixer cell resets it; imported here, it is frozen with the rest

    a = torch.randn(64, 64, requires_grad=True)
    (a @ a).sum().backward()
    del a
    gc.collect()
    gc.freeze()


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
