"""Which kernel actually ran.

Ops call ``record("<library>.<kernel>")`` where they dispatch (after ``backend="auto"`` is
resolved, and where a fused library picks one of several kernels). The bench wraps a
cell's call in ``recording()`` and stores the names it saw in the row's ``kernels``, so a
report can say "fla.chunk_gla" rather than just "fla", and a fallback never hides.
Recording is a set insertion; with no ``recording()`` active it is a no-op.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_active: list[set[str]] = []


def record(kernel: str) -> None:
    if _active:
        _active[-1].add(kernel)


@contextmanager
def recording() -> Iterator[set[str]]:
    seen: set[str] = set()
    _active.append(seen)
    try:
        yield seen
    finally:
        _active.pop()
        if _active:
            _active[-1].update(seen)
