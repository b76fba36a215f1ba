"""pytest-benchmark timings of every reference op (``backend="torch"``) at one small shape.

    python -m pytest benchmarks --benchmark-autosave                        # time, save under .benchmarks/
    python -m pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:20%
    python -m pytest benchmarks --benchmark-disable                         # each op once: a quick correctness run
    ARCHBENCH_BENCH_DEVICE=cuda python -m pytest benchmarks                 # on a GPU node

Shape: B=1, T=512, H=4, D=64, fp32 (selective scan: 256 channels, N=16), a few ms per call on a
2-core CPU. Every op is timed forward only under ``torch.no_grad()``; two of them, GLA and
gated DeltaNet, also forward+backward against a fixed output gradient. CUDA kernels run
asynchronously, so the timed callable ends with the device's barrier (``device_sync``):
``torch.cuda.synchronize`` on a GPU, nothing on the CPU. The same wrapper runs on every device,
so the CPU run exercises the code path a GPU run takes; only the barrier differs. On the CPU the
thread count is fixed (``ARCHBENCH_BENCH_THREADS``, default 1) so that saved runs compare: one
thread, because two OpenMP threads on a busy 2-core machine stall at every barrier and turn a
3 ms op into 100+ ms ones (see regression.py).

These tests live outside ``tests/``: the default ``python -m pytest`` (testpaths = tests) does not
collect them. For a comparison that holds across machines see ``regression.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from inputs import Case, Shape, device_sync, op_cases

DEVICE = os.environ.get("ARCHBENCH_BENCH_DEVICE", "cpu")
THREADS = int(os.environ.get("ARCHBENCH_BENCH_THREADS", "1"))
SHAPE = Shape(batch=1, seq_len=512, heads=4, head_dim=64)
OPS = tuple(op_cases(Shape(seq_len=8, heads=1, head_dim=4, scan_dim=4)))  # the names; building is cheap
FWD_BWD = ("gla", "gated_delta_rule")


def synced(fn: Callable[[], torch.Tensor], sync: Callable[[], None]) -> Callable[[], torch.Tensor]:
    """``fn`` followed by the device barrier, so a timer stops when the device's work has finished."""

    def run() -> torch.Tensor:
        out = fn()
        sync()
        return out

    return run


def forward(case: Case) -> Callable[[], torch.Tensor]:
    """The op's forward pass without autograd bookkeeping."""

    def run() -> torch.Tensor:
        with torch.no_grad():
            return case.fn()

    return run


def forward_backward(case: Case) -> Callable[[], torch.Tensor]:
    """Forward and backward against a fixed random output gradient; input gradients are reset each call."""
    with torch.no_grad():
        out = case.fn()
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)

    def run() -> torch.Tensor:
        for t in case.inputs:
            t.grad = None
        out = case.fn()
        out.backward(grad)
        return out.detach()

    return run


@pytest.fixture(scope="module", autouse=True)
def device_threads() -> Iterator[None]:
    if torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"ARCHBENCH_BENCH_DEVICE={DEVICE} but torch sees no CUDA device; unset it to run on the CPU", 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fwd_cases() -> dict[str, Case]:
    return op_cases(SHAPE, device=DEVICE)


@pytest.fixture(scope="module")
def grad_cases() -> dict[str, Case]:
    return op_cases(SHAPE, device=DEVICE, requires_grad=True)


def _run(benchmark, group: str, name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    benchmark.group = group
    benchmark.extra_info.update(op=name, device=DEVICE, threads=torch.get_num_threads(), dtype="float32")
    benchmark.extra_info.update(shape=f"B={SHAPE.batch} T={SHAPE.seq_len} H={SHAPE.heads} D={SHAPE.head_dim}")
    timed = synced(fn, device_sync(DEVICE))
    if benchmark.enabled:
        timed()  # warm-up: allocator, kernel caches and (on a GPU) lazy initialisation stay out of the numbers
    return benchmark(timed)


@pytest.mark.parametrize("name", OPS)
def test_forward(benchmark, fwd_cases: dict[str, Case], name: str) -> None:
    out = _run(benchmark, "forward", name, forward(fwd_cases[name]))
    assert out.shape[:2] == (SHAPE.batch, SHAPE.seq_len)
    assert torch.isfinite(out).all(), f"{name} forward produced non-finite values"


@pytest.mark.parametrize("name", FWD_BWD)
def test_forward_backward(benchmark, grad_cases: dict[str, Case], name: str) -> None:
    case = grad_cases[name]
    _run(benchmark, "forward+backward", name, forward_backward(case))
    for t in case.inputs:
        assert t.grad is not None and torch.isfinite(t.grad).all(), f"{name}: missing or non-finite input gradient"


def test_device_sync_chosen_by_device() -> None:
    assert device_sync("cuda") is torch.cuda.synchronize
    assert device_sync(torch.device("cuda", 0)) is torch.cuda.synchronize
    assert device_sync("cpu") is not torch.cuda.synchronize
    assert device_sync("cpu")() is None  # a no-op that needs no CUDA


def test_synced_waits_after_the_call() -> None:
    events: list[str] = []
    timed = synced(lambda: events.append("op") or torch.zeros(1), lambda: events.append("sync"))
    out = timed()
    assert events == ["op", "sync"] and out.shape == (1,)
