"""Repeat-until-stable timing of a callable.

Protocol: ``warmup`` untimed calls (compilation, autotuning and allocator growth stay out
of the numbers), continued until ``warmup_s`` seconds of warm-up have passed (an idle GPU runs
at a fraction of its clock until it has been busy for a while: the H200 here idled at 345 of
1980 MHz), then timed calls until at least ``min_repeats`` samples exist and the
spread (IQR / median) is under ``target_rel_iqr``, or ``budget_s`` of timed work is
spent, or ``max_repeats`` samples exist. Every raw sample is kept.

An optional ``setup`` runs before each call, outside the timed region.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of CUDA events around each call,
synchronised once per call before its elapsed time is read, with L2 flushed (untimed)
before each call unless ``flush_l2=False``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


NOISY_REL_IQR = 0.10  # a cell whose IQR/median exceeds this is flagged noisy in its row


@dataclass
class TimingStats:
    samples_s: list[float]
    median_s: float
    p10_s: float
    p90_s: float
    iqr_s: float
    rel_iqr: float
    mean_s: float
    min_s: float
    repeats: int
    warmup_calls: int
    timer: str

    def as_row(self) -> dict:
        d = asdict(self)
        return {
            "time_median_s": d["median_s"],
            "time_p10_s": d["p10_s"],
            "time_p90_s": d["p90_s"],
            "time_iqr_s": d["iqr_s"],
            "time_rel_iqr": d["rel_iqr"],
            "time_mean_s": d["mean_s"],
            "time_min_s": d["min_s"],
            "repeats": d["repeats"],
            "warmup_calls": d["warmup_calls"],
            "timer": d["timer"],
            "noisy": d["rel_iqr"] > NOISY_REL_IQR,
            "time_samples_s": d["samples_s"],
        }


def summarize(samples: list[float], warmup_calls: int = 0, timer: str = "perf_counter") -> TimingStats:
    if not samples:
        raise ValueError("no timing samples")
    a = np.asarray(samples, dtype=float)
    p10, q1, med, q3, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    iqr = float(q3 - q1)
    return TimingStats(
        samples_s=[float(s) for s in samples],
        median_s=float(med),
        p10_s=float(p10),
        p90_s=float(p90),
        iqr_s=iqr,
        rel_iqr=iqr / float(med) if med > 0 else float("inf"),
        mean_s=float(statistics.fmean(samples)),
        min_s=float(a.min()),
        repeats=len(samples),
        warmup_calls=warmup_calls,
        timer=timer,
    )


def _rel_iqr(samples: list[float]) -> float:
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float(q3 - q1) / float(med) if med > 0 else float("inf")


L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 (H100: 50 MB)


def _cuda_call_timer(
    fn: Callable[[], object], setup: Callable[[], None] | None, flush_l2: bool, device: str
) -> Callable[[], float]:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    scratch = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if flush_l2 else None

    def timed() -> float:
        if setup:
            setup()
        if scratch is not None:  # evict the inputs from L2, as triton's do_bench does
            scratch.zero_()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return timed


def _cpu_call_timer(fn: Callable[[], object], setup: Callable[[], None] | None) -> Callable[[], float]:
    def timed() -> float:
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return timed


def time_fn(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    setup: Callable[[], None] | None = None,
    flush_l2: bool = True,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 200,
    budget_s: float = 2.0,
    target_rel_iqr: float = 0.05,
    warmup_s: float = 0.0,
) -> TimingStats:
    """Time ``fn`` following the module's protocol and return its statistics.

    ``setup``, when given, runs untimed before every call (e.g. restoring a decode state).
    ``flush_l2`` (CUDA only) overwrites a 256 MiB scratch buffer before each call, so a
    small working set is not timed from a warm L2 cache.
    """
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats (got {min_repeats}, {max_repeats})")
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
    timed = _cuda_call_timer(fn, setup, flush_l2, device) if cuda else _cpu_call_timer(fn, setup)
    t_warm = time.perf_counter()
    warmed = 0
    while warmed < warmup or time.perf_counter() - t_warm < warmup_s:
        timed()
        warmed += 1
    samples: list[float] = []
    t_start = time.perf_counter()
    next_check = min_repeats  # the spread is checked at geometric intervals, not after every call,
    while len(samples) < max_repeats:  # to keep bookkeeping out of the gaps between timed calls
        samples.append(timed())
        if len(samples) < min_repeats:
            continue
        if time.perf_counter() - t_start >= budget_s:
            break
        if len(samples) >= next_check:
            if _rel_iqr(samples) <= target_rel_iqr:
                break
            next_check = max(next_check + 1, int(next_check * 1.25))
    return summarize(samples, warmup_calls=warmed, timer="cuda_events" if cuda else "perf_counter")
