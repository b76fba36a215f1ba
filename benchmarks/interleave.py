"""Round-robin timing, shared by op_speed.py and regression.py.

On a shared machine slow phases last seconds. Timing each op's repeats back to back lets one
phase land on one op and move its ratio to the others by 20-30%; visiting every op once per
round (the starting op rotating from round to round) spreads such phases over all of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def round_robin_medians(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    calls: dict[str, int] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds per call of each callable over ``rounds`` rounds that visit every one once
    (``round_robin_samples``, then the median of each callable's samples)."""
    return {name: statistics.median(s) for name, s in round_robin_samples(fns, rounds, calls, sync).items()}


def round_robin_samples(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    calls: dict[str, int] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each callable in each of ``rounds`` rounds that visit every one once:
    entry ``r`` of every list was measured in round ``r``.

    A sample is ``calls[name]`` back-to-back calls (1 by default) divided by their count; ``sync``
    ends each sample (a CUDA synchronise on a GPU). Warm the callables up before calling this.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = fns[name], (calls or {}).get(name, 1)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
    return samples
