"""Repeat-until-stable timing of a callable.

Protocol: ``warmup`` untimed calls (compilation, autotuning and allocator growth stay out
of the numbers), continued until ``warmup_s`` seconds of warm-up have passed (an idle GPU runs
at a fraction of its clock until it has been busy for a while: the H200 here idled at 345 of
1980 MHz), then timed calls until at least ``min_repeats`` samples exist and the
spread (IQR / median) is under ``target_rel_iqr``, or ``budget_s`` of timed work is
spent, or ``max_repeats`` samples exist. Every raw sample is kept.

An optional ``setup`` runs before each call, outside the timed region.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of CUDA events around each call,
with L2 flushed (untimed) before each call unless ``flush_l2=False``; the host does not wait
for each call, it synchronises once per spread check and at the end (as ``do_bench`` does), so
the GPU's queue stays full.
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


class _CpuTimer:
    """``launch`` times one call at once; ``collect`` hands over the times since the last collect."""

    def __init__(self, fn: Callable[[], object], setup: Callable[[], None] | None):
        self.fn, self.setup, self.pending = fn, setup, []

    def launch(self) -> None:
        if self.setup:
            self.setup()
        t0 = time.perf_counter()
        self.fn()
        self.pending.append(time.perf_counter() - t0)

    def collect(self) -> list[float]:
        out, self.pending = self.pending, []
        return out


class _CudaTimer:
    """``launch`` enqueues one call between two CUDA events (after an untimed L2 flush) and does
    not wait; ``collect`` synchronises once and reads every pending pair, as do_bench does, so
    the GPU's queue stays full and the host's launch gaps stay out of the samples."""

    def __init__(self, fn: Callable[[], object], setup: Callable[[], None] | None, flush_l2: bool, device: str):
        import torch

        self.torch, self.fn, self.setup, self.pending = torch, fn, setup, []
        self.scratch = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if flush_l2 else None

    def launch(self) -> None:
        if self.setup:
            self.setup()
        if self.scratch is not None:  # evict the inputs from L2, as triton's do_bench does
            self.scratch.zero_()
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        self.fn()
        end.record()
        self.pending.append((start, end))

    def collect(self) -> list[float]:
        if not self.pending:
            return []
        self.pending[-1][1].synchronize()
        out = [start.elapsed_time(end) / 1e3 for start, end in self.pending]
        self.pending = []
        return out


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
    timer = _CudaTimer(fn, setup, flush_l2, device) if cuda else _CpuTimer(fn, setup)
    return run_protocol(timer, warmup, warmup_s, min_repeats, max_repeats, budget_s, target_rel_iqr,
                        "cuda_events" if cuda else "perf_counter")  # fmt: skip


def run_protocol(timer, warmup: int, warmup_s: float, min_repeats: int, max_repeats: int, budget_s: float,
                 target_rel_iqr: float, timer_name: str, clock: Callable[[], float] = time.perf_counter) -> TimingStats:  # fmt: skip
    """The module's protocol over a timer with ``launch()`` and ``collect()``. Times are read back
    (one synchronisation on a GPU) only where the protocol needs them: during warm-up, at the
    spread checks (geometric intervals, so bookkeeping stays out of the gaps between calls), once
    the budget is spent, and at the end."""
    t_warm = clock()
    warmed = 0
    while warmed < warmup or clock() - t_warm < warmup_s:
        timer.launch()
        timer.collect()  # wait for it: warm-up time is the device's, not the launcher's
        warmed += 1
    samples: list[float] = []
    launched = 0
    t_start = clock()
    next_check = min_repeats
    while launched < max_repeats:
        timer.launch()
        launched += 1
        if launched < min_repeats:
            continue
        over = clock() - t_start >= budget_s
        if not (over or launched >= next_check or launched >= max_repeats):
            continue
        samples += timer.collect()
        if clock() - t_start >= budget_s:
            break
        if launched >= next_check:
            if _rel_iqr(samples) <= target_rel_iqr:
                break
            next_check = max(next_check + 1, int(next_check * 1.25))
    samples += timer.collect()
    return summarize(samples, warmup_calls=warmed, timer=timer_name)
