"""CUDA-graph replay: time a call without its CPU launch overhead.

A small kernel on a fast GPU can take less time than Python and the driver need to launch it,
so eager timing measures the launcher, not the kernel. Capturing the call once into a CUDA
graph and timing ``graph.replay()`` measures the GPU work alone (what a serving stack that
uses graphs, such as vLLM's decode, sees). The call is warmed up on a side stream first, as
capture requires; a call that cannot be captured (a host sync, data-dependent shapes, a
kernel that allocates in an uncapturable way) falls back to eager timing and the row says why.

Calls that need an untimed reset before each eager call (decode restores the context's state,
since a step may write its cache in place) are reset before each warm-up call and before the
capture, then replayed with no reset: a graph replays the same kernels on the same buffers
whatever they hold, so every replay is the same n steps at the same context length. Decode is
where this matters most: one token of a small model is a few hundred tiny kernels (on an H200 at
B=1 every family's eager decode ran at under 3% of its roofline, launch-bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Graphed:
    call: Callable[[], object]  # what to time: graph.replay, or the eager call on fallback
    used: bool  # the timed call is a graph replay
    reason: str | None = None  # why not, when not


def capture(
    call: Callable[[], object],
    device: str,
    warmup: int = 3,
    torch_module: Any = None,
    setup: Callable[[], None] | None = None,
) -> Graphed:
    """Warm ``call`` up on a side stream, capture it into a CUDA graph, return its replay.
    ``setup`` (a reset) runs before each warm-up call and before the capture, never between
    replays. ``torch_module`` is injectable so the control flow is tested without CUDA."""
    reset = setup or (lambda: None)
    if torch_module is None:
        import torch as torch_module
    torch = torch_module
    if not device.startswith("cuda"):
        return Graphed(call, False, "CUDA graphs need a CUDA device")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                reset()
                call()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        graph.replay()  # the first replay runs the captured work once, as a check
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - any capture failure means: time it eagerly
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - a broken capture can leave the device in error
            pass
        return Graphed(call, False, f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return Graphed(graph.replay, True)
