"""Causal long convolutions and the diagonal state-space recurrence that generates one.

Gated-convolution mixers (H3, Hyena, BaseConv; Zoology's Figure 2) mix tokens with a filter as
long as the sequence. Per channel c, with u [B, T, C] and a filter h [T, C] (h_l the weight of
lag l):

    y_t = sum_{l=0}^{t} h_l * u_{t-l}  (+ D * u_t)

``causal_long_conv`` computes it in O(T log T) with a real FFT of size >= 2T (zero padding makes
the circular convolution linear, so nothing wraps around), in fp32 (fp64 for fp64 inputs).
``long_conv_step`` is the decode form: the inputs seen so far are the state (it grows by one
token per step, like a KV cache) and one output is the dot product of the history with the
reversed filter.

A diagonal linear SSM (S4D, Gu et al., 2022) is a long convolution with a fixed-size state. Per
channel c and state index n, with a_{c,n} in (0, 1):

    x_t = a * x_{t-1} + b * u_t,     y_t = sum_n c_n x_{t,n}
    => h_l = sum_n c_n b_n a_n^l

``diag_ssm_kernel`` builds h (from log a, so a^l = exp(l log a) stays stable at any length) and
the parallel form is ``causal_long_conv`` of that kernel; ``diag_ssm_step`` is the recurrence,
O(C N) per token with an O(C N) state. Layout [B, T, C] throughout.
"""

from __future__ import annotations

import torch

from archbench.ops.dispatch import record
from archbench.ops.prologue import resolve_backend

BACKENDS = ("torch",)


def _acc(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def causal_long_conv(
    u: torch.Tensor, h: torch.Tensor, D: torch.Tensor | None = None, backend: str = "torch"
) -> torch.Tensor:
    """y [B, T, C] = causal convolution of u [B, T, C] with h [L >= T, C] (first T taps used),
    plus ``D * u`` when D [C] is given."""
    resolve_backend("causal_long_conv", backend, u, choices=BACKENDS)
    if u.dim() != 3 or h.dim() != 2 or h.shape[1] != u.shape[2] or h.shape[0] < u.shape[1]:
        raise ValueError(f"causal_long_conv expects u [B, T, C] and h [L >= T, C] (got {tuple(u.shape)}, {tuple(h.shape)})")
    record("torch.causal_long_conv_fft")
    T = u.shape[1]
    acc = _acc(u, h)
    n = 1 << (2 * T - 1).bit_length()  # >= 2T - 1: the linear convolution's length, no wrap-around
    uf = torch.fft.rfft(u.to(acc), n=n, dim=1)
    hf = torch.fft.rfft(h[:T].to(acc), n=n, dim=0)
    y = torch.fft.irfft(uf * hf, n=n, dim=1)[:, :T]
    if D is not None:
        y = y + u.to(acc) * D.to(acc)
    return y.to(u.dtype)


def long_conv_step(
    u_t: torch.Tensor, history: torch.Tensor | None, h: torch.Tensor, D: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: u_t [B, C], history [B, t, C] (the earlier inputs, or None), h [>= t+1, C].
    Returns ``(y_t [B, C], history [B, t+1, C])``."""
    record("torch.long_conv_step")
    hist = u_t[:, None] if history is None else torch.cat([history, u_t[:, None].to(history.dtype)], dim=1)
    t = hist.shape[1]
    acc = _acc(hist, h)
    y = torch.einsum("btc,tc->bc", hist.to(acc), h[:t].flip(0).to(acc))
    if D is not None:
        y = y + u_t.to(acc) * D.to(acc)
    return y.to(u_t.dtype), hist


def diag_ssm_kernel(log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, length: int) -> torch.Tensor:
    """h [length, C] with h_l = sum_n c_n b_n exp(l log a_n); log_a, b, c [C, N] (log_a < 0)."""
    acc = _acc(log_a, b, c)
    lags = torch.arange(length, device=log_a.device, dtype=acc)
    powers = torch.exp(lags[:, None, None] * log_a.to(acc))  # [L, C, N]
    return (powers * (b * c).to(acc)).sum(-1)


def diag_ssm_state(u: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The recurrence's state after the inputs u [B, T, C]: x_n = sum_s a_n^{T-1-s} b_n u_s, [B, C, N]."""
    T = u.shape[1]
    acc = _acc(u, log_a, b)
    lags = torch.arange(T - 1, -1, -1, device=u.device, dtype=acc)
    powers = torch.exp(lags[:, None, None] * log_a.to(acc)) * b.to(acc)  # [T, C, N]
    return torch.einsum("btc,tcn->bcn", u.to(acc), powers)


def diag_ssm_step(
    u_t: torch.Tensor, state: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x = a * x + b * u_t; y = sum_n c_n x_n. u_t [B, C], state [B, C, N] -> (y [B, C], state)."""
    record("torch.diag_ssm_step")
    acc = _acc(state, u_t, log_a)
    state = state.to(acc) * torch.exp(log_a.to(acc)) + b.to(acc) * u_t.to(acc)[..., None]
    return (state * c.to(acc)).sum(-1).to(u_t.dtype), state
