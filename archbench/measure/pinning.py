"""Pin the measuring process to a fixed set of CPU cores for the duration of a cell.

torch's thread count fixes how many threads a CPU kernel uses, not where they run: the OS
may move them between cores (cold caches, a core shared with another job, an SMT sibling).
``pinned_cpus(True, n)`` restricts the process to the first ``n`` cores it is allowed on
(``os.sched_setaffinity``, Linux), restores the previous set afterwards, and yields the cores
used so the row can record them; elsewhere it yields ``None`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def pinned_cpus(enabled: bool, n: int) -> Iterator[list[int] | None]:
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = sorted(os.sched_getaffinity(0))
    chosen = before[: max(1, min(n, len(before)))]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)
