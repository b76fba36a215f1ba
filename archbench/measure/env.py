"""The environment a measurement was taken in: device, library versions, host, git revision."""

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


def collect_env(device: str = "cpu") -> dict:
    """A flat dict of facts that a row carries under ``env``."""
    import torch

    env = {
        "device_name": device_name(device),
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
    for dist in OPTIONAL_PACKAGES:
        v = package_version(dist)
        if v:
            env[dist.replace("-", "_")] = v
    return env


def _cuda_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvml_device_info(index: int = 0, pynvml=None) -> dict:
    """Driver, clocks, power limit and the other processes on GPU ``index``, from NVML.

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
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
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
