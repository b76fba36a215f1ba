"""Where the fused-vs-reference tests can run their Triton kernels, and the markers that skip them.

fla's kernels, and mamba-ssm's Triton SSD kernels, run on a CUDA device, or, on a CPU, under
Triton's interpreter (``TRITON_INTERPRET=1``, patched for fla by ``triton_interpreter``): the
tests below take ``FLA_DEVICE`` / ``MAMBA_TRITON_DEVICE`` instead of a hard-coded ``"cuda"``, so
the same test checks the adapters on a CPU in CI-like runs and the kernels themselves on a GPU.

    TRITON_INTERPRET=1 python -m pytest -m fused     # the fused tests on a CPU (slow; see README)

Kernels written in CUDA C (flash-attn, mamba-ssm's selective scan, causal-conv1d) do not run
under the interpreter; their tests stay CUDA-only.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

import triton_interpreter

CUDA = torch.cuda.is_available()
INTERPRETED = not CUDA and triton_interpreter.active() and importlib.util.find_spec("triton") is not None


def _device_for(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return "cuda" if CUDA else ("cpu" if INTERPRETED else None)


class _NoCudaExtension(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError(f"{self.__name__} is mamba-ssm's CUDA extension, not built here (Triton interpreter run)")


def _mamba_triton_device() -> str | None:
    device = _device_for("mamba_ssm")
    if device == "cpu":
        # mamba_ssm's package __init__ imports its CUDA selective-scan extension, which a CPU
        # install (MAMBA_SKIP_CUDA_BUILD=TRUE) lacks; the Triton SSD kernels do not use it
        if importlib.util.find_spec("selective_scan_cuda") is None:
            sys.modules["selective_scan_cuda"] = _NoCudaExtension("selective_scan_cuda")
        try:
            importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        except Exception:  # noqa: BLE001 - any import failure means: not usable here
            return None
    return device


FLA_DEVICE = _device_for("fla")
MAMBA_TRITON_DEVICE = _mamba_triton_device()


def half(dtype: torch.dtype) -> torch.dtype:
    """``dtype``, except bf16 becomes fp16 under Triton's interpreter, which cannot compute in bf16
    (see ``triton_interpreter``); the GPU run of the same test checks bf16."""
    return torch.float16 if INTERPRETED and dtype == torch.bfloat16 else dtype


HOW = "a CUDA device, or TRITON_INTERPRET=1 with triton installed (Triton's CPU interpreter)"


def _fused(device: str | None, reason: str):
    """Mark a test ``fused`` (``pytest -m fused`` selects them all) and skip it where ``device`` is None."""
    skip = pytest.mark.skipif(device is None, reason=reason)
    return lambda test: pytest.mark.fused(skip(test))


needs_fla = _fused(FLA_DEVICE, f"fused fla kernels need the fla package (flash-linear-attention) and {HOW}")


def needs_cuda_module(module: str, what: str):
    """For kernels written in CUDA C (no interpreter): a CUDA device and ``module`` installed."""
    usable = CUDA and importlib.util.find_spec(module) is not None
    return _fused("cuda" if usable else None, f"{what} need a CUDA device and the {module} package")


needs_mamba_triton = _fused(MAMBA_TRITON_DEVICE, f"mamba-ssm's Triton SSD kernels need the mamba-ssm package and {HOW}")
