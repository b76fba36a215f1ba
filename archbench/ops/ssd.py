"""State-space duality (SSD): the Mamba2 recurrence (Dao & Gu, 2024, "Transformers are SSMs").

Per head h (with group g(h) = h // (H / G), so groups of consecutive heads share B and C),
state h_t in R^{N x P}, x_t in R^{1 x P}, B_t, C_t in R^{1 x N}, scalar dt_t > 0, scalar A < 0:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t
    y_t = C_t h_t + D x_t

This is ``simple_gla`` with q = C, k = dt B, v = x, log-gate g = dt A and scale 1: a scalar
decay per head and step. Unrolled, y = (L o C B^T) (dt x) + D x with the 1-semiseparable mask
L[t, s] = exp(a_{s+1} + ... + a_t) for s <= t (a_t = dt_t A), the "attention-like" dual form.

Layout: x [B, T, H, P], dt [B, T, H] (already positive: softplus applied by the layer),
A [H], B and C [B, T, G, N] with H % G == 0, D [H] (optional), state [B, H, N, P].

Reference (``backend="torch"``; past 1024 tokens it runs in segments with the state carried
between them, ``archbench.ops.segments``, so its temporaries stay cache-sized):
the SSD block decomposition. Cut the sequence into chunks of
Q tokens and let c_t = a_1 + ... + a_t be the cumulative log-decay inside a chunk.

1. intra-chunk (diagonal blocks): y_t += sum_{s <= t} (C_t . B_s) exp(c_t - c_s) dt_s x_s. For
   the heads whose every chunk range -c_end is safe to factor through its middle m
   (``archbench.ops.decay``: up to 80 in fp32), exp(c_t - c_s) = exp(c_t - m) exp(m - c_s) and
   the heads of a group share one masked C B^T, applied to their rescaled inputs in one matmul;
   for the others (strong decays: in a Mamba2 layer, the heads with large A dt) the segment sums
   c_t - c_s are masked to -inf above the diagonal *before* the exp, so only exponents <= 0 are
   ever formed (and floored at -70: below that fp32 turns denormal, which is slow on CPUs, and
   e^-70 is nothing next to the terms that matter). A freshly initialised Mamba2 mixer at
   d_model 512, T=16384: 720 -> 625 ms (2.5x -> 2.2x the linear-attention mixer);
2. chunk states: S_j = sum_s exp(c_end - c_s) dt_s B_s^T x_s, the state each chunk leaves
   behind when it starts from zero;
3. inter-chunk recurrence: h_j = exp(c_end,j) h_{j-1} + S_j, a short loop over chunks
   (T / Q steps on [B, H, N, P] tensors);
4. off-diagonal blocks: y_t += exp(c_t) C_t h_{j-1}.

Cost O(T Q (N + P) + T N P) per head, memory O(T Q + (T / Q) N P); B C^T is formed once per
group, not per head. Accumulation is fp32 (fp64 stays fp64); outputs come back in x's dtype.

Fused backends:
  ``mamba_ssm``  mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined (Triton), whose
                 states are [B, H, P, N]: transposed on the way in and out.
  ``fla``        fla.ops.simple_gla.chunk_simple_gla with q = C, k = dt B, v = x, g = dt A.
  ``auto``       mamba_ssm, then fla, on CUDA tensors when importable; torch otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import midpoint_limit
from archbench.ops.dispatch import graph_capturing, record, step_backend
from archbench.ops.prologue import check_chunk_size, resolve_backend
from archbench.ops.segments import by_segments
from archbench.spec import fla_gated_grad_refused

BACKENDS = ("torch", "mamba_ssm", "fla", "auto")


def _check(x, dt, A, B, C, D, initial_state) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"ssd expects x [B, T, H, P], got shape {tuple(x.shape)}")
    b, T, H, P = x.shape
    if dt.shape != (b, T, H):
        raise ValueError(f"ssd expects dt [B, T, H] = {(b, T, H)}, got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"ssd expects A [H] = ({H},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, T) or C.shape != B.shape:
        raise ValueError(
            f"ssd expects B and C [B, T, G, N] with B, T = {b}, {T}; got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    G, N = B.shape[2], B.shape[3]
    if H % G:
        raise ValueError(f"ssd: heads ({H}) must be a multiple of groups ({G})")
    if D is not None and D.shape != (H,):
        raise ValueError(f"ssd expects D [H] = ({H},), got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, H, N, P):
        raise ValueError(f"ssd expects initial_state [B, H, N, P] = {(b, H, N, P)}, got {tuple(initial_state.shape)}")
    return b, T, H, P, G, N


def ssd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, output_final_state: bool = False, chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """Returns ``(y [B, T, H, P], final_state [B, H, N, P] or None)``."""
    # auto: mamba_ssm, then fla unless its gated backward is wrong on this GPU/triton (spec.fla_gated_backward)
    takes = lambda package: package != "fla" or not fla_gated_grad_refused(x, dt, A, B, C)  # noqa: E731
    backend = resolve_backend("ssd", backend, x, choices=BACKENDS, fused=("mamba_ssm", "fla"), takes=takes)
    check_chunk_size(chunk_size)
    _check(x, dt, A, B, C, D, initial_state)
    record({"mamba_ssm": "mamba_ssm.mamba_chunk_scan_combined", "fla": "fla.chunk_simple_gla"}.get(backend, "torch.ssd_chunked"))
    if backend == "mamba_ssm":
        return _ssd_mamba_ssm(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
    if backend == "fla":
        return _ssd_fla(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
    y, S = by_segments(
        lambda x, dt, B, C, s: _ssd_torch(x, dt, A, B, C, D, s, True, chunk_size),
        (x, dt, B, C), initial_state, chunk_size,
    )  # fmt: skip
    return y, (S if output_final_state else None)


def _ssd_torch(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size):
    b, T, H, P, G, N = _check(x, dt, A, B, C, D, initial_state)
    R = H // G  # heads per group
    acc = torch.promote_types(x.dtype, torch.float32)
    Q = min(chunk_size, max(T, 1))
    nc = max(-(-T // Q), 1)
    pad = nc * Q - T

    def chunks(t: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [B, nc, Q, ...] in acc
        t = t.to(acc)
        if pad:  # zero dt and inputs: decay 1, no contribution, so the final state is exact
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(b, nc, Q, *t.shape[2:])

    xc = chunks(x).view(b, nc, Q, G, R, P)
    Bc, Cc = chunks(B), chunks(C)  # [b, z, l, g, n]
    dtc = chunks(dt).view(b, nc, Q, G, R)
    # log-decays, heads first: [b, g, r, z, l]
    dth = dtc.permute(0, 3, 4, 1, 2)
    a = dth * A.to(acc).view(G, R, 1, 1)
    acs = a.cumsum(-1)
    # exponents are floored at -70 (fp32; -700 in fp64): e^-70 ~ 4e-31 is zero for all purposes,
    # and it keeps exp and the products after it out of the denormal range, which costs 3-20x on CPUs
    floor = -700.0 if acc == torch.float64 else -70.0

    # 1. diagonal blocks
    y = _diagonal_blocks(acs, dth, xc, torch.einsum("bzsgn,bzlgn->bgzsl", Cc, Bc), floor)

    # 2. chunk states from zero: sum_s exp(c_end - c_s) dt_s B_s^T x_s
    w_end = torch.exp((acs[..., -1:] - acs).clamp_min(floor)) * dth  # [b, g, r, z, l]
    xw = xc * w_end.permute(0, 3, 4, 1, 2)[..., None]
    states = torch.einsum("bzlgn,bzlgrp->bgrznp", Bc, xw)  # [b, g, r, z, n, p]

    # 3. inter-chunk recurrence over chunk states
    chunk_decay = torch.exp(acs[..., -1].clamp_min(floor))[..., None, None]  # [b, g, r, z, 1, 1]
    if initial_state is not None:
        h = initial_state.to(acc).view(b, G, R, N, P)
    else:
        h = x.new_zeros(b, G, R, N, P, dtype=acc)
    prev = []
    for decay_z, state_z in zip(chunk_decay.unbind(3), states.unbind(3)):  # unbind: one backward node
        prev.append(h)
        h = decay_z * h + state_z
    h_prev = torch.stack(prev, dim=3)  # state entering each chunk

    # 4. off-diagonal blocks: exp(c_t) C_t h_{j-1}
    y_off = torch.einsum("bzsgn,bgrznp->bzsgrp", Cc, h_prev)
    y = y + y_off * torch.exp(acs.clamp_min(floor)).permute(0, 3, 4, 1, 2)[..., None]

    y = y.reshape(b, nc * Q, H, P)[:, :T]
    if D is not None:
        y = y + D.to(acc)[:, None] * x.to(acc)
    final_state = h.reshape(b, H, N, P) if output_final_state else None
    return y.to(x.dtype), final_state


def _diagonal_blocks(acs, dth, xc, CB, floor: float) -> torch.Tensor:
    """y_s = sum_{l <= s in chunk} (C_s . B_l) exp(c_s - c_l) dt_l x_l for every chunk and head.

    acs, dth [b, g, r, z, Q] (cumulative log-decay, steps), xc [b, z, Q, g, r, P], CB [b, g, z, Q, Q]
    (C B^T, once per group). Returns [b, z, Q, g, r, P]. Heads whose every chunk spans a range safe
    to factor through its middle m (``archbench.ops.decay``) take exp(c_s - m) exp(m - c_l): the
    heads of a group share one masked C B^T, applied to their rescaled inputs in one matmul. The
    other heads (strong decays: in Mamba2 the ones with large A dt) get masked segment sums, then
    exp (exponents <= 0 only, floored), and replace their rows of the factored result. While a
    CUDA graph is captured there is no read-back: every head takes the segment sums.
    """
    b, g, r, z, Q = acs.shape
    causal = torch.ones(Q, Q, dtype=torch.bool, device=acs.device).tril()
    limit = midpoint_limit(acs.dtype)
    cap = 0.5 * limit  # a safe factor's largest exponent
    if graph_capturing(acs):
        unsafe = list(range(g * r))
    else:
        with torch.no_grad():  # each head's largest chunk range, read back once
            spans = (-acs[..., -1]).amax((0, 3)).flatten().tolist()
        unsafe = [h for h, s in enumerate(spans) if s > limit]
    y = None
    if len(unsafe) < g * r:
        # factored. Both exponents are clipped to [-cap, cap] (a no-op for safe heads): the unsafe
        # heads' rows are computed here too and replaced below, and they must stay finite, since
        # their zero gradient times an infinite factor would be NaN in every gradient
        m = 0.5 * acs[..., -1:]  # [b, g, r, z, 1]
        to_heads = lambda t: t.permute(0, 3, 4, 1, 2)[..., None]  # noqa: E731  [b, g, r, z, l] -> [b, z, l, g, r, 1]
        xu = xc * to_heads((m - acs).clamp(-cap, cap).exp() * dth)
        y = torch.einsum("bgzsl,bzlgrp->bzsgrp", CB.masked_fill(~causal, 0.0), xu)
        y = y * to_heads((acs - m).clamp(-cap, cap).exp())
    if not unsafe:
        return y
    if len(unsafe) == g * r:  # all of them: no index built on the host (a copy a graph capture refuses)
        idx = torch.arange(g * r, device=acs.device)
    else:
        idx = torch.tensor(unsafe, device=acs.device)
    a_u, d_u = (t.flatten(1, 2).index_select(1, idx) for t in (acs, dth))  # [b, h, z, Q]
    seg = (a_u[..., :, None] - a_u[..., None, :]).clamp_min(floor).masked_fill(~causal, float("-inf")).exp()
    W = seg * CB.index_select(1, idx // r) * d_u[..., None, :]  # [b, h, z, s, l]
    y_u = torch.einsum("bhzsl,bzlhp->bzshp", W, xc.flatten(3, 4).index_select(3, idx))
    if y is None:
        return y_u.unflatten(3, (g, r))
    return y.flatten(3, 4).index_copy(3, idx, y_u).unflatten(3, (g, r))


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: x [B, H, P], dt [B, H], A [H], B, C [B, G, N], state [B, H, N, P] (fp32).

    Returns ``(y [B, H, P], new_state)``. ``backend="fla"``: fla's ``fused_recurrent_simple_gla``
    with SSD mapped onto it as in ``_ssd_fla`` (q = C, k = dt B, v = x, g = dt A).
    """
    H, G = x.shape[1], B.shape[1]
    if H % G:
        raise ValueError(f"ssd_step: heads ({H}) must be a multiple of groups ({G})")
    if step_backend("ssd_step", backend, x) == "fla":
        from fla.ops.simple_gla import fused_recurrent_simple_gla  # optional, CUDA only

        record("fla.fused_recurrent_simple_gla")
        Bh, Ch = B.repeat_interleave(H // G, dim=1), C.repeat_interleave(H // G, dim=1)
        k = (Bh.float() * dt.float()[..., None]).to(x.dtype)
        y, S = fused_recurrent_simple_gla(
            Ch[:, None].to(x.dtype), k[:, None], x[:, None], g=(dt.float() * A.float())[:, None],
            scale=1.0, initial_state=state.float(), output_final_state=True,
        )  # fmt: skip
        y = y[:, 0].float()
        if D is not None:
            y = y + D.float()[:, None] * x.float()
        return y.to(x.dtype), S
    record("torch.ssd_step")
    acc = torch.promote_types(state.dtype, torch.float32)
    Bh = B.to(acc).repeat_interleave(H // G, dim=1)
    Ch = C.to(acc).repeat_interleave(H // G, dim=1)
    dt = dt.to(acc)
    xa = x.to(acc)
    decay = torch.exp(dt * A.to(acc))[..., None, None]
    state = decay * state + (dt[..., None] * Bh)[..., :, None] * xa[..., None, :]
    y = torch.einsum("bhn,bhnp->bhp", Ch, state)
    if D is not None:
        y = y + D.to(acc)[:, None] * xa
    return y.to(x.dtype), state


# ---- fused backends (CUDA) --------------------------------------------------------------


def _ssd_mamba_ssm(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    # mamba_ssm keeps states as [B, H, P, N]; ours are [B, H, N, P].
    init = initial_state.transpose(-1, -2).contiguous() if initial_state is not None else None
    out = mamba_chunk_scan_combined(
        x.contiguous(),
        dt.contiguous(),
        A.float(),
        B.contiguous(),
        C.contiguous(),
        chunk_size,
        D=D.float() if D is not None else None,
        initial_states=init,
        dt_softplus=False,  # dt arrives positive
        return_final_states=output_final_state,
    )
    if output_final_state:
        y, final = out
        return y, final.transpose(-1, -2).float()
    return out, None


def _ssd_fla(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size):
    from fla.ops.simple_gla import chunk_simple_gla

    H, G = x.shape[2], B.shape[2]
    Bh = B.repeat_interleave(H // G, dim=2)
    Ch = C.repeat_interleave(H // G, dim=2)
    k = (Bh.float() * dt.float()[..., None]).to(x.dtype)
    g = dt.float() * A.float()
    y, final = chunk_simple_gla(
        Ch.to(x.dtype),
        k,
        x,
        g=g,
        scale=1.0,
        initial_state=initial_state.float() if initial_state is not None else None,
        output_final_state=output_final_state,
    )
    if D is not None:
        y = (y.float() + D.float()[:, None] * x.float()).to(x.dtype)
    return y, (final.float() if output_final_state else None)
