"""Which kernel actually ran.

Ops call ``record("<library>.<kernel>")`` where they dispatch (after ``backend="auto"`` is
resolved, and where a fused library picks one of several kernels). The bench wraps a
cell's call in ``recording()`` and stores the names it saw in the row's ``kernels``, so a
report can say "fla.chunk_gla" rather than just "fla", and a fallback never hides.
Recording is a set insertion; with no ``recording()`` active it is a no-op.

``step_backend`` resolves the backend of a one-token decode step (``*_step`` ops): ``torch``
(the reference update), ``fla`` (flash-linear-attention's ``fused_recurrent_*`` kernel at T=1,
which is what fla's own layers run to decode, called through ``fla_step``), or ``auto`` (fla for
CUDA tensors when it is importable, else torch).

``graph_capturing`` says whether a CUDA graph is being captured on the current stream: the
references that pick a faster path from their data (a host read-back of decay spans) take their
always-exact path then, since a capture allows no read-back and a replay would freeze the choice.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from archbench.ops.prologue import resolve_backend
from archbench.spec import triton_interpreted

STEP_BACKENDS = ("torch", "fla", "auto")

_active: list[set[str]] = []


def graph_capturing(x: torch.Tensor) -> bool:
    """True while ``x``'s CUDA stream is capturing a graph (never on a CPU)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


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


def step_backend(name: str, backend: str, x: torch.Tensor) -> str:
    """``torch`` or ``fla`` for a decode step on ``x``'s device (see the module docstring)."""
    return resolve_backend(name, backend, x, choices=STEP_BACKENDS)


def fla_step(kernel: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, scale: float,
             **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's fused recurrent ``kernel`` on one token: q, k, v [B, H, D] as one-token sequences (k and v
    in q's dtype), ``inputs`` as given (already [B, 1, ...]), the state in fp32; returns
    ``(o [B, H, V] in v's dtype, the new state)``."""
    o, S = kernel(
        q[:, None], k[:, None].to(q.dtype), v[:, None].to(q.dtype), **inputs,
        scale=scale, initial_state=state.float(), output_final_state=True,
    )  # fmt: skip
    return o[:, 0].to(v.dtype), S


def triton_runs_on(x: torch.Tensor) -> bool:
    """Whether an explicitly chosen Triton kernel can run on ``x`` (see the module docstring)."""
    return x.is_cuda or triton_interpreted()
