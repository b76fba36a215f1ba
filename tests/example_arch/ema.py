"""Damped exponential moving average, per channel (the EMA of Mega, Ma et al., 2022, arXiv 2209.10655).

For x in [B, T, D] and a decay a in (0, 1)^D, with h_{-1} the initial state:

    h_t = a * h_{t-1} + (1 - a) * x_t          (elementwise over D)

Chunked form: inside a chunk of C tokens starting after state h, with u_s = (1 - a) x_s,

    h_t = a^(t+1) h + sum_{s <= t} a^(t-s) u_s

a [C, C, D] lower-triangular Toeplitz product per chunk, then the state carried to the next
chunk: O(T C D) time, O(C^2 D) memory. The step form is the recurrence itself.
"""

from __future__ import annotations

import torch


def ema(x: torch.Tensor, a: torch.Tensor, initial_state: torch.Tensor | None = None,
        output_final_state: bool = False, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns ``(h [B, T, D], final state [B, D] or None)``."""
    B, T, D = x.shape
    h = initial_state if initial_state is not None else x.new_zeros(B, D)
    C = max(1, min(chunk_size, T))
    idx = torch.arange(C, device=x.device)
    lag = (idx[:, None] - idx[None, :]).clamp_min(0).to(x.dtype)  # t - s
    powers = a ** lag[..., None]  # [C, C, D]
    weights = powers * (idx[:, None] >= idx[None, :])[..., None]  # causal Toeplitz
    carry = a ** (idx.to(x.dtype)[:, None] + 1)  # a^(t+1) [C, D]
    outs = []
    for xc in x.split(C, dim=1):
        c = xc.shape[1]
        hc = torch.einsum("tsd,bsd->btd", weights[:c, :c], (1 - a) * xc) + carry[:c] * h[:, None]
        outs.append(hc)
        h = hc[:, -1]
    return torch.cat(outs, dim=1), (h if output_final_state else None)


def ema_step(x_t: torch.Tensor, a: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``x_t [B, D]``, ``state [B, D]`` -> ``(h_t, h_t)``."""
    h = a * state + (1 - a) * x_t
    return h, h
