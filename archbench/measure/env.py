"""The environment a measurement was taken in: device, library versions, host, git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

OPTIONAL_PACKAGES = ("triton", "flash-linear-attention", "fla-core", "mamba-ssm", "flash-attn", "causal-conv1d")


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


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
        "archbench": package_version("archbench"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["driver"] = _nvidia_driver()
    for dist in OPTIONAL_PACKAGES:
        v = package_version(dist)
        if v:
            env[dist.replace("-", "_")] = v
    return env


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or unusable: the driver is simply not recorded
        return None
