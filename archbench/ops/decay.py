"""When cumulative decays may be factored through a chunk start.

The chunked forms of the gated recurrences (GLA, the gated delta rule, DPLR / RWKV-7) need,
inside a chunk, the pairwise weights exp(G_i - G_j) (j <= i) of a cumulative log-decay G that
falls along the chunk (G_0 = 0 >= G_i >= G_last). The cheap way is to factor them,
exp(G_i - m) * exp(m - G_j), which turns the weighted scores into one plain matmul of rescaled
rows. It is exact up to rounding (each factor carries its own relative error, so the dot
products are as accurate as the pairwise form) but only while the factors stay representable.
Through the chunk start (m = 0) a factor reaches e^{range}, range = -G_last; through the middle
of the range (m = G_last / 2) only e^{range / 2}, which doubles the range the trick covers at the
cost of one more small multiply (``midpoint``). ``SAFE_LOG_RANGE`` bounds a factor's exponent,
per accumulation dtype: e^40, and e^-80 (a squared factor, as in the gradient of a reciprocal),
are far from fp32's overflow and denormal limits. Chunks spanning more (strong decays) take each
op's exact pairwise or recursive path instead.

Those exact paths form exp(x) for exponents x <= 0 that strong decays push far below zero:
``exp_nonpositive`` floors them first, so that no subnormal float (many times slower in CPU
arithmetic) enters a product.
"""

from __future__ import annotations

import math

import torch

SAFE_LOG_RANGE = {torch.float32: 40.0, torch.float64: 300.0}


def factor_safe(span: torch.Tensor, dtype: torch.dtype) -> bool:
    """True when every log-decay range in ``span`` (>= 0; e.g. -G at each chunk's end) is safe
    to factor through the chunk start in ``dtype`` (one host read-back)."""
    with torch.no_grad():
        return span.numel() == 0 or bool(span.max() <= SAFE_LOG_RANGE.get(dtype, 40.0))


def midpoint_limit(dtype: torch.dtype) -> float:
    """The largest range safe to factor through its middle (each factor's exponent up to half of it)."""
    return 2.0 * SAFE_LOG_RANGE.get(dtype, 40.0)


def midpoint_safe(span: torch.Tensor, dtype: torch.dtype) -> bool:
    """True when every range in ``span`` is safe to factor through its middle (one host read-back)."""
    with torch.no_grad():
        return span.numel() == 0 or bool(span.max() <= midpoint_limit(dtype))


def exp_nonpositive(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """exp(x) for log-decays x <= 0, with entries where ``mask`` is True set to exactly 0.

    The mask is applied BEFORE the exp (as -inf), so nothing above a causal diagonal is
    ever exponentiated. Exponents are clamped from below at half the log of the smallest
    normal float (about -43.7 in fp32, -354 in fp64, i.e. factors >= 1e-19 / 1e-154):
    those terms are negligible next to the diagonal ones (which are 1), and the clamp
    keeps subnormal floats, which make CPU arithmetic many times slower, out of every
    product (a product of two clamped factors is still a normal float).
    """
    x = x.clamp(min=0.5 * math.log(torch.finfo(x.dtype).tiny))
    if mask is not None:
        x = x.masked_fill(mask, float("-inf"))
    return x.exp()
