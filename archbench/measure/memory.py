"""Peak memory of a region of code.

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``); method ``cuda_allocator_peak``.
CPU: the process's resident set size sampled by a background thread every
``interval_s`` (``/proc/self/statm`` on Linux), the maximum seen; method
``rss_sampled_<interval>ms``. Sampling can miss a spike shorter than the interval, so the
method is always recorded next to the number.

Also here: the GPU memory NVML charges to this process (allocator cache and CUDA context
included, what ``nvidia-smi`` shows), and the bytes autograd saves for the backward pass
(``SavedTensors``: every tensor a forward saves, each storage counted once, parameters left out).
"""

from __future__ import annotations

import os
import resource
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (monotone) max RSS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that memory a previous
    cell freed but the allocator kept does not hide this cell's growth in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def current_memory(device: str) -> int:
    """Bytes in use now: CUDA allocator bytes on GPU, resident set size on CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated(device))
    return _rss_bytes()


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` and ``pm.method``."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.001):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.cuda = device.startswith("cuda")
        self.method = "cuda_allocator_peak" if self.cuda else f"rss_sampled_{interval_s * 1e3:g}ms"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())


def nvml_process_bytes(device_index: int = 0, pid: int | None = None, pynvml=None) -> tuple[int | None, str | None]:
    """GPU memory NVML charges to process ``pid`` (default: this one) on GPU ``device_index``,
    or (None, why not)."""
    pid = os.getpid() if pid is None else pid
    if pynvml is None:
        try:
            import pynvml
        except ImportError:
            return None, "nvidia-ml-py is not installed"
    try:
        from archbench.measure.env import nvml_handle  # torch's index -> the pinned GPU

        handle = nvml_handle(pynvml, device_index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as e:  # noqa: BLE001 - no driver, no permission, old driver
        return None, f"NVML gives no process list ({type(e).__name__}: {e})"
    for proc in procs:
        if int(proc.pid) == pid:
            used = getattr(proc, "usedGpuMemory", None)
            if used is None:
                return None, "NVML lists this process without its memory (no permission to read it)"
            return int(used), None
    return None, f"NVML does not list process {pid} (a PID namespace hides it, or it holds no CUDA context)"


class SavedTensors:
    """``with SavedTensors(exclude=params) as st: loss.backward()`` then ``st.bytes``: what autograd
    keeps between forward and backward (``torch.autograd.graph.saved_tensors_hooks``). Views of one
    storage count once; storages in ``exclude`` (the parameters) are not activations. Tensors a
    custom autograd Function keeps as plain ``ctx`` attributes instead of ``save_for_backward``
    are not seen."""

    method = "autograd_saved_tensors"

    def __init__(self, exclude=()):
        self._exclude = {_storage_key(t) for t in exclude}
        self._seen: set = set()
        self.bytes = 0
        self._hooks = None

    def _pack(self, t):
        key = _storage_key(t)
        if key not in self._seen and key not in self._exclude:
            self._seen.add(key)
            self.bytes += key[2]
        return t

    def __enter__(self) -> "SavedTensors":
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _storage_key(t) -> tuple[str, int, int]:
    st = t.untyped_storage()
    return (str(t.device), st.data_ptr(), st.nbytes())
