"""Long sequences in cache-sized segments, the state carried between them.

Every recurrent op is exact under splitting: running t in [0, t1) and then [t1, T) with the
first part's final state as the second's initial state gives the same output as one call. The
chunked references use that: past ``SEGMENT_LEN`` tokens they run segment by segment, so their
whole-sequence temporaries (chunk states, intra-chunk matrices) stay small enough to live in
cache. On a 2-core CPU at B=1, H=8, D=64, T=16384 this made the delta rule and SSD references
about 2x faster; at short T nothing changes (one segment).

The inputs are cut with ``torch.split``, not by slicing: under autograd a slice's backward
writes its gradient into a zero-filled tensor of the whole input's size, once per segment
(quadratic in T), while a split has one backward node that concatenates the pieces.
"""

from __future__ import annotations

from typing import Callable

import torch

SEGMENT_LEN = 1024  # tokens per segment (rounded to a whole number of chunks)

Run = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


def by_segments(
    run: Run,
    seqs: tuple[torch.Tensor, ...],
    initial_state: torch.Tensor | None,
    chunk_size: int,
    seg_len: int | None = None,
):
    """``run(*pieces, state) -> (o [B, t, ...], final_state)`` over the sequences ``seqs`` (each
    [B, T, ...], cut along dim 1 into the same segments) in order, the state carried along.

    Returns ``(o [B, T, ...], final_state)``; one call when T fits one segment. Segments are a
    whole number of ``chunk_size`` chunks, so chunk boundaries fall where one call puts them.
    """
    T = seqs[0].shape[1]
    seg = max(chunk_size, (seg_len or SEGMENT_LEN) // chunk_size * chunk_size)
    if T <= seg:
        return run(*seqs, initial_state)
    outs, state = [], initial_state
    for pieces in zip(*(x.split(seg, dim=1) for x in seqs)):
        o, state = run(*pieces, state)
        outs.append(o)
    return torch.cat(outs, dim=1), state
