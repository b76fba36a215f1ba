"""Mamba-3's SISO state-space recurrence ("Mamba-3: Improved Sequence Modeling using State Space
Principles", Lahoti et al., 2026, arXiv 2603.15569; the reference layer is mamba-ssm's, which
fla's ``fla.layers.mamba3`` wraps).

Per head, state h_t in R^{N x P}, input x_t in R^{1 x P}, B_t, C_t in R^{1 x N}, step dt_t > 0,
log-decay a_t = A_t dt_t < 0 (A_t data-dependent), trapezoid weight lam_t in [0, 1]:

    alpha_t = exp(a_t),   beta_t = (1 - lam_t) dt_t alpha_t,   gamma_t = lam_t dt_t
    h_t = alpha_t h_{t-1} + beta_t B~_{t-1}^T x_{t-1} + gamma_t B~_t^T x_t      (exponential-trapezoidal rule)
    y_t = C~_t h_t + D x_t

lam = 1 is Mamba-2's (exponential-Euler) update; otherwise the input enters through the trapezoid
of the previous and the current token. The state is complex-valued in the paper: a rotation of
each pair of state channels by a data-dependent angle per step. That is the same as rotating B
and C by the cumulative angle (a "data-dependent RoPE"):

    Theta_t = Theta_0 + dtheta_1 + ... + dtheta_t          [A angles per head]
    B~_t = R(Theta_t) B_t,   C~_t = R(Theta_t) C_t         (R rotates channels (2i, 2i+1) by Theta_t[i], i < A)

so C~_t . B~_s = C_t R(Theta_s - Theta_t) B_s: the rotation of the state between s and t.

The decode state is (h, B~_{t-1}, x_{t-1}, Theta_t): the trapezoid needs the previous token's
rotated input (``Mamba3State``; mamba-ssm's ``ssm_state, k_state, v_state, angle_state``).

**Chunked form.** Unrolled, token s enters h_s with weight gamma_s and, through the next step,
h_{s+1} with beta_{s+1} = alpha_{s+1} nu_{s+1} (nu = (1 - lam) dt). So for t > s its weight in h_t
is (prod_{s < r <= t} alpha_r) w_s with w_s = gamma_s + nu_{s+1}, and for t = s it is gamma_s:

    y_t = sum_{s <= t} (prod alpha) (C~_t . B~_s) w_s x_s  -  (C~_t . B~_t) nu_{t+1} x_t  +  D x_t

The first sum is a scalar-decay linear recurrence (simple GLA, ``archbench.ops.gla.simple_gla``,
with q = C~, k = w B~, v = x, log-decay a, scale 1), whose chunked reference, segmenting and fla
kernel are reused; the second term is elementwise. In the last token of a call nu_{T+1} is taken
as 0, so the recurrence's final state is h_T exactly; a carried state enters as
h_0' = h_0 + nu_1 B~_0^T x_0 (then alpha_1 h_0' = alpha_1 h_0 + beta_1 B~_0^T x_0).

Layout: x [B, T, H, P], dt, a, lam [B, T, H], Bm, Cm [B, T, H, N] (per head), dtheta
[B, T, H, A] with 2 A <= N, D [H] or None. Accumulation is fp32 (fp64 stays fp64).
Backends: ``torch`` (the simple-GLA chunked reference) and ``fla`` (fla's ``chunk_simple_gla``
for the recurrence; rotation and trapezoid weights in torch). MIMO (rank > 1 inputs per head)
is not covered.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import record
from archbench.ops.prologue import resolve_backend
from archbench.ops.gla import simple_gla

BACKENDS = ("torch", "fla")


class Mamba3State(NamedTuple):
    """h [B, H, N, P]; k = B~_{t-1} [B, H, N]; v = x_{t-1} [B, H, P]; angle = Theta_t [B, H, A]."""

    h: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    angle: torch.Tensor


def rotate_pairs(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1), i < A, of x [..., N] by angle [..., A]; the rest pass."""
    A = angle.shape[-1]
    if A == 0:
        return x
    pairs = x[..., : 2 * A].unflatten(-1, (A, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
    return torch.cat([rot, x[..., 2 * A :]], dim=-1)


def _check(x, dt, a, lam, Bm, Cm, dtheta, D, initial_state) -> None:
    if x.dim() != 4:
        raise ValueError(f"mamba3 expects x [B, T, H, P], got {tuple(x.shape)}")
    b, T, H, P = x.shape
    for name, t in (("dt", dt), ("a", a), ("lam", lam)):
        if t.shape != (b, T, H):
            raise ValueError(f"mamba3 expects {name} [B, T, H] = {(b, T, H)}, got {tuple(t.shape)}")
    if Bm.dim() != 4 or Bm.shape[:3] != (b, T, H) or Cm.shape != Bm.shape:
        raise ValueError(
            f"mamba3 expects B and C [B, T, H, N] with B, T, H = {(b, T, H)}; got {tuple(Bm.shape)}, {tuple(Cm.shape)}"
        )
    N = Bm.shape[-1]
    if dtheta.dim() != 4 or dtheta.shape[:3] != (b, T, H) or 2 * dtheta.shape[-1] > N:
        raise ValueError(f"mamba3 expects dtheta [B, T, H, A] with 2 A <= N = {N}; got {tuple(dtheta.shape)}")
    if D is not None and D.shape != (H,):
        raise ValueError(f"mamba3 expects D [H] = ({H},), got {tuple(D.shape)}")
    if initial_state is not None:
        want = ((b, H, N, P), (b, H, N), (b, H, P), (b, H, dtheta.shape[-1]))
        got = tuple(tuple(t.shape) for t in initial_state)
        if got != want:
            raise ValueError(f"mamba3 expects initial_state (h, k, v, angle) of shapes {want}, got {got}")


def mamba3(
    x: Tensor, dt: Tensor, a: Tensor, lam: Tensor, Bm: Tensor, Cm: Tensor, dtheta: Tensor, D: Tensor | None = None,
    initial_state: Mamba3State | None = None, output_final_state: bool = False, chunk_size: int = 64,
    backend: str = "torch",
) -> tuple[Tensor, Mamba3State | None]:
    """Chunked Mamba-3 SISO; returns ``(y [B, T, H, P] in x's dtype, final Mamba3State or None)``."""
    resolve_backend("mamba3", backend, x, choices=BACKENDS)
    _check(x, dt, a, lam, Bm, Cm, dtheta, D, initial_state)
    b, T, H, P = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    record("fla.chunk_simple_gla+mamba3" if backend == "fla" else "torch.mamba3_chunked")
    dt, a, lam = dt.to(acc), a.to(acc), lam.to(acc)
    theta0 = (
        initial_state.angle.to(acc) if initial_state is not None else x.new_zeros(b, H, dtheta.shape[-1], dtype=acc)
    )
    theta = theta0[:, None] + dtheta.to(acc).cumsum(dim=1)  # [B, T, H, A]
    Bt = rotate_pairs(Bm.to(acc), theta)
    Ct = rotate_pairs(Cm.to(acc), theta)
    nu = (1.0 - lam) * dt
    nu_next = F.pad(nu[:, 1:], (0, 0, 0, 1))  # nu_{t+1}, 0 after the last token
    w = lam * dt + nu_next
    h0 = None
    if initial_state is not None:
        h0 = (
            initial_state.h.to(acc)
            + nu[:, 0, :, None, None] * initial_state.k.to(acc)[..., :, None] * initial_state.v.to(acc)[..., None, :]
        )
    xa = x.to(acc)
    kernel_dtype = acc if backend == "torch" else x.dtype
    y, h = simple_gla(
        Ct.to(kernel_dtype), (Bt * w[..., None]).to(kernel_dtype), x.to(kernel_dtype), a, scale=1.0,
        initial_state=h0, output_final_state=output_final_state, chunk_size=chunk_size, backend=backend,
    )  # fmt: skip
    y = y.to(acc) - ((Ct * Bt).sum(-1) * nu_next)[..., None] * xa
    if D is not None:
        y = y + D.to(acc)[:, None] * xa
    if not output_final_state:
        return y.to(x.dtype), None
    return y.to(x.dtype), Mamba3State(h.to(acc), Bt[:, -1], xa[:, -1], theta[:, -1])


def mamba3_step(
    x: Tensor, dt: Tensor, a: Tensor, lam: Tensor, Bm: Tensor, Cm: Tensor, dtheta: Tensor, state: Mamba3State,
    D: Tensor | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One decode step: x [B, H, P], dt, a, lam [B, H], Bm, Cm [B, H, N], dtheta [B, H, A].
    Returns ``(y [B, H, P], new state)`` (states in fp32, fp64 when they are)."""
    record("torch.mamba3_step")
    acc = torch.promote_types(state.h.dtype, torch.float32)
    dt, a, lam, xa = dt.to(acc), a.to(acc), lam.to(acc), x.to(acc)
    theta = state.angle.to(acc) + dtheta.to(acc)
    Bt = rotate_pairs(Bm.to(acc), theta)
    Ct = rotate_pairs(Cm.to(acc), theta)
    alpha = torch.exp(a)[..., None, None]
    prev = state.k.to(acc)[..., :, None] * state.v.to(acc)[..., None, :]
    cur = Bt[..., :, None] * xa[..., None, :]
    h = (
        alpha * state.h.to(acc)
        + (alpha * ((1.0 - lam) * dt)[..., None, None]) * prev
        + (lam * dt)[..., None, None] * cur
    )
    y = torch.einsum("bhn,bhnp->bhp", Ct, h)
    if D is not None:
        y = y + D.to(acc)[:, None] * xa
    return y.to(x.dtype), Mamba3State(h, Bt, xa, theta)


def empty_state(batch: int, heads: int, d_state: int, head_dim: int, angles: int, dtype, device=None) -> Mamba3State:
    """The state before the first token: zero memory, zero previous input, zero angle."""
    z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
    return Mamba3State(
        z(batch, heads, d_state, head_dim), z(batch, heads, d_state), z(batch, heads, head_dim), z(batch, heads, angles)
    )
