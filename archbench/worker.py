"""The worker process: runs cells sent by the runner, one at a time, and answers with rows.

Protocol over a ``multiprocessing`` pipe: the worker sends ``("ready", pid)`` once its
imports are done, then for each cell dict it receives it sends back one result dict
(``status``, ``error`` and the measurement fields), preceded by any number of
``("progress", info)`` messages from long cells (training); ``None`` tells it to exit. Its stdout
and stderr go to a log file (with faulthandler on), so a hard crash leaves a traceback the
runner can quote.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import traceback

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to (status, one-paragraph error text)."""
    from archbench.spec import Unsupported

    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom", text
    if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS):
        return "oom", text
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return "error", text + where


def main(conn, log_path: str | None, plugins: list[str]) -> None:  # pragma: no cover - runs in a child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # torch and NVML number GPUs alike
    from archbench import allocator

    allocator.enable()  # huge pages for large CPU tensors, as in the CLI (before torch is imported)
    if log_path:
        log = open(log_path, "a", buffering=1)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        faulthandler.enable(file=log)
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
        print(f"cell {cell.get('key')}: {cell.get('arch')}/{cell.get('backend')} {cell.get('mode')}", flush=True)
        try:
            result = {"status": "ok", "error": None, **run_cell(cell, progress=lambda info: conn.send(("progress", info)))}
            result["code_path"] = code_path  # which copy of archbench measured this (A/B runs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
            status, text = classify(exc)
            traceback.print_exc()
            result = {"status": status, "error": text}
        finally:
            _free_memory(cell.get("device", "cpu"))
        conn.send(result)


def _warm_up_runtime() -> None:
    """Start torch's thread pools and autograd engine once, so the first cell's time and
    memory do not carry one-off process start-up costs."""
    import torch

    a = torch.randn(64, 64, requires_grad=True)
    (a @ a).sum().backward()


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
