"""The device's measured roofs: peak matmul throughput and memory bandwidth.

Measured, not taken from a datasheet: a square matmul in the cell's dtype (compute roof)
and a large device-to-device copy (bandwidth roof), each timed with ``time_fn``. A row's
``achieved_tflops`` divided by the compute roof gives ``pct_peak_flops``; with analytic
bytes (a later addition to the registry) the same roofs give the memory-bound side.
Cached per (device, dtype) for the life of the process.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from archbench.measure.timing import time_fn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@lru_cache(maxsize=None)
def measure_peaks(device: str, dtype: str, budget_s: float = 0.3) -> dict:
    cuda = device.startswith("cuda")
    n = 8192 if cuda else 1024
    a = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    mm = time_fn(lambda: torch.mm(a, b), device=device, warmup=2, min_repeats=5, budget_s=budget_s)
    copy_bytes = (1 << 30) if cuda else (64 << 20)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cp = time_fn(lambda: dst.copy_(src), device=device, warmup=2, min_repeats=5, budget_s=budget_s)
    return {
        "peak_tflops": 2 * n**3 / mm.median_s / 1e12,
        "peak_gbps": 2 * copy_bytes / cp.median_s / 1e9,  # read + write
        "peak_method": f"mm {n}x{n} {dtype}; copy {copy_bytes >> 20} MiB",
    }
