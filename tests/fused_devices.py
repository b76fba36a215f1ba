"""Where the fused-vs-reference tests can run their Triton kernels, and the markers that skip them.

fla's kernels run on a CUDA device, or, on a CPU, under Triton's interpreter
(``TRITON_INTERPRET=1``, patched for fla by ``triton_interpreter``): the tests below take
``FLA_DEVICE`` instead of a hard-coded ``"cuda"``, so the same test checks the adapters on a CPU
(CI runs it) and the kernels themselves on a GPU.

    TRITON_INTERPRET=1 python -m pytest -m fused     # the fused tests on a CPU (slow; see README)

Kernels written in CUDA C (flash-attn, mamba-ssm's selective scan, causal-conv1d) do not run
under the interpreter, nor do mamba-ssm's Triton SSD kernels (they enter ``torch.cuda.device``);
their tests stay CUDA-only (``needs_cuda_module``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import triton_interpreter

CUDA = torch.cuda.is_available()
INTERPRETED = not CUDA and triton_interpreter.active() and importlib.util.find_spec("triton") is not None


def _device_for(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return "cuda" if CUDA else ("cpu" if INTERPRETED else None)


FLA_DEVICE = _device_for("fla")


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
