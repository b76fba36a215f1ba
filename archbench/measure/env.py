"""The environment a measurement was taken in: device, library versions, host, git revision;
and the signs that the machine was busy while it was measured (load average, other processes on
the GPU), which the CLI names when most cells of a run come out noisy."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

from archbench import allocator

OPTIONAL_PACKAGES = (
    "triton", "flash-linear-attention", "fla-core", "mamba-ssm", "flash-attn", "causal-conv1d", "transformers",
)  # fmt: skip


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_version() -> str | None:
    import archbench

    return getattr(archbench, "__version__", None)


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """The git revision of the checkout holding ``path`` (default: this package), '+dirty' if modified."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
        return "cuda (unavailable)"
    return cpu_model()


def device_memory_bytes(device: str) -> int | None:
    """The device's total memory: the GPU's (``torch.cuda.get_device_properties``), else the host's
    physical RAM; None where neither can be read. The report draws it as the capacity line."""
    try:
        if device.startswith("cuda"):
            import torch

            return int(torch.cuda.get_device_properties(device).total_memory) if torch.cuda.is_available() else None
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, RuntimeError, ValueError):
        return None


def collect_env(device: str = "cpu") -> dict:
    """A flat dict of facts that a row carries under ``env``."""
    import torch

    env = {
        "device_name": device_name(device),
        "device_mem_bytes": device_memory_bytes(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_rev": git_revision(),
        "archbench": package_version("archbench") or _source_version(),  # run from a checkout: PYTHONPATH
    }
    env.update(allocator.facts())  # huge-page allocation of large CPU tensors (archbench.allocator)
    if device.startswith("cuda") and torch.cuda.is_available():
        env.update(nvml_device_info(_cuda_index(device)))
        target = physical_gpu(_cuda_index(device))
        if isinstance(target, int):
            env.update(gpu_identity(target))
        else:
            env["gpu_uuid"] = target
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        env["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for dist in OPTIONAL_PACKAGES:
        v = package_version(dist)
        if v:
            env[dist.replace("-", "_")] = v
    return env


def _cuda_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def physical_gpu(index: int = 0, visible: str | None = None) -> int | str:
    """The GPU that torch's ``cuda:<index>`` is, as NVML names it: its index on the machine, or
    its UUID where ``CUDA_VISIBLE_DEVICES`` lists UUIDs. NVML ignores ``CUDA_VISIBLE_DEVICES``, so
    in a process pinned to GPU 3 torch's ``cuda:0`` is NVML's device 3 (with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which archbench's workers set, both count in bus order)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if not visible or not visible.strip():
        return index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        return index
    entry = entries[index]
    return int(entry) if entry.isdigit() else entry


def nvml_handle(pynvml, index: int = 0):
    """NVML's handle of torch's ``cuda:<index>`` in this process (``physical_gpu``)."""
    pynvml.nvmlInit()
    target = physical_gpu(index)
    if isinstance(target, int):
        return pynvml.nvmlDeviceGetHandleByIndex(target)
    return pynvml.nvmlDeviceGetHandleByUUID(target)


def gpu_identity(index: int, pynvml=None) -> dict:
    """What a row says about the GPU it ran on: ``gpu_index`` (on the machine, as ``nvidia-smi``
    numbers it) and ``gpu_uuid`` (stable across reboots and renumbering), from NVML; the index
    alone where NVML cannot be read."""
    out: dict = {"gpu_index": index}
    if pynvml is None:
        try:
            import pynvml
        except ImportError:
            return out
    try:
        pynvml.nvmlInit()
        out["gpu_uuid"] = _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index)))
    except Exception:  # noqa: BLE001 - no NVML (driver, container): the index still says where
        pass
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvml_device_info(index: int = 0, pynvml=None) -> dict:
    """Driver, clocks, power limit and the other processes on torch's GPU ``index`` (the GPU this
    process sees as ``cuda:<index>``, ``physical_gpu``), from NVML.

    Each field is read on its own: a GPU or driver that lacks one just leaves it out.
    ``gpu_other_processes`` lists the PIDs other than this one holding the GPU, the
    signal that timings may be disturbed.
    """
    if pynvml is None:
        try:
            import pynvml
        except ImportError:
            return {"nvml": "nvidia-ml-py is not installed"}
    try:
        h = nvml_handle(pynvml, index)
    except Exception as e:
        return {"nvml": f"unavailable ({type(e).__name__})"}
    info: dict = {}
    reads = {
        "driver": lambda: _text(pynvml.nvmlSystemGetDriverVersion()),
        "gpu_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "gpu_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "gpu_max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
        "gpu_power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "gpu_temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "gpu_other_processes": lambda: sorted(
            {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)} - {os.getpid()}
        ),
    }
    for key, read in reads.items():
        try:
            info[key] = read()
        except Exception:  # not supported on this GPU / driver: leave the field out
            continue
    return info


def busy_warning(env: dict) -> str | None:
    """A warning when other processes hold the GPU during a run, else None."""
    others = env.get("gpu_other_processes") or []
    if others:
        return f"other processes are using the GPU (pids {', '.join(map(str, others))}): timings may be disturbed"
    return None


NOISY_REL_IQR = 0.10  # a timed cell is noisy when its IQR exceeds this fraction of its median (as the report draws it)


def noisy_rows(rows: list[dict]) -> list[dict]:
    """The timed rows flagged ``noisy`` or whose IQR / median exceeds ``NOISY_REL_IQR``."""
    return [r for r in rows if r.get("noisy") or (r.get("time_rel_iqr") or 0) > NOISY_REL_IQR]


def load_average() -> tuple[float, int] | None:
    """The 1-minute load average and the CPU count, or None where the OS has no load average."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):
        return None


def busy_signs(device: str = "cpu", load: tuple[float, int] | None = None, gpu: dict | None = None) -> str | None:
    """What says the machine is busy now, in words: a load average above the CPU count (less one
    for the run itself), other processes holding the GPU. None when nothing does."""
    signs = []
    load = load if load is not None else load_average()
    if load is not None:
        avg, cpus = load
        if avg > max(1.0, cpus - 1):
            signs.append(f"load average {avg:.1f} on {cpus} CPU(s)")
    if device.startswith("cuda"):
        info = gpu if gpu is not None else nvml_device_info(_cuda_index(device))
        others = info.get("gpu_other_processes") or []
        if others:
            signs.append(f"other processes on the GPU: pids {', '.join(map(str, others))}")
    return "; ".join(signs) or None
