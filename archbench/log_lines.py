"""Progress as plain lines, for logs.

When stderr is not a terminal (CI, nohup, a batch job on a GPU node) a rich progress bar draws
nothing until it ends, so a training cell or a recipe stage that runs for minutes looks hung.
There, progress events print a line instead: the first event of each bar, then at most one
line every ``ARCHBENCH_LOG_EVERY_S`` seconds (default 30) per bar.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Hashable

DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("ARCHBENCH_LOG_EVERY_S", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


class Throttle:
    """``due(key)``: True for a key's first event, then once ``every`` seconds have passed."""

    def __init__(self, every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.every = every_s() if every is None else every
        self.clock = clock
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        return True
