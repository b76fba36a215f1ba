"""Kimi Delta Attention (KDA): the gated delta rule with a decay per key channel.

Per head, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV}, a writing strength
beta_t in (0, 1), log-decays g_t in R^{1xK} (each <= 0) and state S_t in R^{KxV}:

    S_t = (I - beta_t k_t^T k_t) Diag(exp(g_t)) S_{t-1} + beta_t k_t^T v_t
    o_t = scale * q_t S_t                                        (scale defaults to K**-0.5)

The memory first forgets, channel by channel (GLA's fine-grained gate instead of Gated
DeltaNet's one scalar per head), then takes one delta-rule step on ||k_t S - v_t||^2 / 2 with
learning rate beta_t (Kimi Team, 2025, "Kimi Linear: An Expressive, Efficient Attention
Architecture", arXiv 2510.26692). With g_t = gamma_t 1 it is the gated delta rule. Keys are
meant to be L2-normalised (``qk_l2norm=True`` lets the op do it).

Reference (``backend="torch"``; past 1024 tokens in segments, ``archbench.ops.segments``):
the chunked WY / UT-transform form of ``archbench.ops.delta_rule`` with the scalar decay
replaced by a diagonal one. In a chunk of C tokens let Gamma_i = g_1 + ... + g_i in R^{1xK}
(cumulative from the chunk start), S_0 the entering state, and the pseudo-values
u_i = beta_i (v_i - k_i Diag(e^{Gamma_i}) S_0 - sum_{j<i} A_ij u_j) with the decayed Gram matrix

    A_ij = sum_d k_id k_jd e^{Gamma_id - Gamma_jd}          (j < i),

so (I + tril(diag(beta) A, -1)) U_c = diag(beta) V - diag(beta) (K * e^Gamma) S_0. With
T = (I + tril(diag(beta) A, -1))^{-1} diag(beta) (one batched triangular solve,
``wy.UTTransform``), U = T V and W = T (K * e^Gamma), and

    U_c     = U - W S_0                                      (``wy.ChunkPass``, one loop over chunks)
    S_C     = Diag(e^{Gamma_C}) S_0 + (K * e^{Gamma_C - Gamma})^T U_c
    O       = scale ((Q * e^Gamma) S_0 + tril(P) U_c),    P_ij = sum_d q_id k_jd e^{Gamma_id - Gamma_jd}.

A and P are the scores of GLA, and are computed as GLA's are (``archbench.ops.decay``): when
every chunk spans a safe log-decay range, through the middle m = Gamma_C / 2 of the range,
A = (K * e^{Gamma - m}) (K * e^{m - Gamma})^T, one matmul. Stronger decays (Kimi's gates reach
-1.6 per step and channel, over 80 in a chunk of 64) take blocks of the largest length whose ranges
are safe (``_leaf_size``): the diagonal blocks factored through their middle, and each earlier block
seen by the later rows through its last position r, e^{Gamma_i - Gamma_j} = e^{Gamma_i - Gamma_r}
e^{Gamma_r - Gamma_j} with both exponents <= 0 (GLA's secondary chunking, one level): exact for any
decay, (C / block) K exponentials per token. Per token O(C (K + V) + K V) in the
factored case; accumulation in fp32 (fp64 stays fp64), outputs in v's dtype, states in fp32.

Fused backend (``backend="fla"``): flash-linear-attention's ``fla.ops.kda.chunk_kda`` (same
[B, T, H, D] layout, log-space g [B, T, H, K], post-sigmoid beta, q-side scale, fp32 initial
state [B, H, K, V]; head dimension up to 256; chunk size 32 or 64) and, for decode,
``fused_recurrent_kda``. ``auto`` picks fla on CUDA when it is importable, else torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import exp_nonpositive, midpoint_safe
from archbench.ops.delta_rule import fla_delta_chunk, l2norm
from archbench.ops.dispatch import fla_step, record, step_backend
from archbench.ops.prologue import prologue
from archbench.ops.segments import by_segments
from archbench.ops.wy import ChunkPass, UTTransform

FLA_CHUNK_SIZES = (32, 64)  # the chunk sizes chunk_kda accepts
FLA_MAX_HEAD_DIM = 256  # chunk_kda asserts K <= 256


# ---- the chunked reference ------------------------------------------------------------


def _leaf_size(gam: torch.Tensor, dtype: torch.dtype) -> int:
    """The largest block length dividing the chunk length C (C itself, then halvings, 1 at the least)
    such that every block of every chunk spans a log-decay range safe to factor through its middle.
    gam [M, C, K]: the cumulative log-decay from each chunk's start (one host read-back per try)."""
    M, C, K = gam.shape
    leaf = C
    while leaf > 1:
        ends = gam.view(M, C // leaf, leaf, K)[:, :, -1]  # gam at each block's last position
        before = F.pad(ends[:, :-1], (0, 0, 1, 0))  # gam just before each block (0 at the chunk start)
        if midpoint_safe(before - ends, dtype):
            return leaf
        leaf = leaf // 2 if leaf % 2 == 0 else 1
    return 1


def _blocked_scores(x: torch.Tensor, kc: torch.Tensor, gam: torch.Tensor, leaf: int) -> torch.Tensor:
    """sum_d x_id k_jd e^{gam_id - gam_jd} for j <= i, 0 above the diagonal: x, kc, gam [M, C, K] -> [M, C, C].

    Exact for any decay. Column block b (positions of block b as j) is seen by the later rows
    through the block's last position r: e^{gam_i - gam_j} = e^{gam_i - gam_r} e^{gam_r - gam_j}, both
    exponents <= 0 (the "secondary chunking" of GLA, one level), so each is one masked matmul;
    the diagonal blocks are factored through the middle of their range (safe by ``_leaf_size``),
    or, for blocks of one position, are x_i . k_i (weight e^0 = 1)."""
    M, C, K = x.shape
    nb = C // leaf
    pos = torch.arange(C, device=x.device)
    if leaf == 1:
        diag = (x * kc).sum(-1).view(M, nb, 1, 1)
    else:
        xb, kb, gb = (t.view(M, nb, leaf, K) for t in (x, kc, gam))
        ends = gb[:, :, -1:]
        before = F.pad(ends[:, :-1], (0, 0, 0, 0, 1, 0))
        m = 0.5 * (before + ends)
        causal = torch.ones(leaf, leaf, dtype=torch.bool, device=x.device).tril()
        diag = ((xb * (gb - m).exp()) @ (kb * (m - gb).exp()).mT).masked_fill(~causal, 0.0)  # [M, nb, leaf, leaf]
    cols = []
    for b in range(nb):
        lo, hi = b * leaf, (b + 1) * leaf
        here = F.pad(diag[:, b], (0, 0, lo, C - hi))  # block b's own rows
        if hi < C:
            r = gam[:, hi - 1 : hi]  # [M, 1, K]
            left = x * exp_nonpositive(gam - r, mask=(pos < hi)[:, None])  # rows after block b
            right = kc[:, lo:hi] * exp_nonpositive(r - gam[:, lo:hi])
            here = here + left @ right.mT
        cols.append(here)
    return torch.cat(cols, dim=-1)


def _chunked(q, k, v, beta, g, scale, initial_state, chunk_size):
    """The WY / UT-transform chunked form of KDA (module docstring); returns (o, final state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    if T == 0:
        state = initial_state.to(acc) if initial_state is not None else q.new_zeros(B, H, K, V, dtype=acc)
        return v.new_zeros(B, 0, H, V), state
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    BH = B * H

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [N*BH, C, D] in acc (chunk n of head j: row n*BH + j)
        x = x.to(acc)
        if pad:  # zero k, v, beta and g: padded steps leave the state untouched
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, -1).permute(1, 0, 3, 2, 4).reshape(N * BH, C, -1)

    qc, kc, vc = blocks(q), blocks(k), blocks(v)
    bc = blocks(beta[..., None])  # [N*BH, C, 1]
    gam = blocks(g).cumsum(1)  # [N*BH, C, K]: cumulative log-decay from the chunk start
    last = gam[:, -1:]  # Gamma_C, [N*BH, 1, K]
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    leaf = _leaf_size(gam, acc)
    if leaf == C:  # every chunk is safe to factor through its middle: the scores are plain matmuls
        m = 0.5 * last
        e_hi, e_lo = (gam - m).exp(), (m - gam).exp()  # e^{Gamma - m}, e^{m - Gamma}: within e^{+-range/2}
        e_m = m.exp()
        k_lo = kc * e_lo
        kq_hi = torch.cat([kc, qc], dim=1) * torch.cat([e_hi, e_hi], dim=1)  # [N*BH, 2C, K]
        # one matmul gives A^T (column-major A, what LAPACK reads without a copy) and P
        scores = torch.bmm(k_lo, kq_hi.mT)  # [N*BH, C, 2C]: row j, column i -> A_ij (i < C), P_ij (i >= C)
        a_t, p = scores[:, :, :C], scores[:, :, C:].mT
        k_gam = kq_hi[:, :C] * e_m  # K * e^Gamma
        q_gam = kq_hi[:, C:] * e_m  # Q * e^Gamma
        k_rest = k_lo * e_m  # K * e^{Gamma_C - Gamma}
        system = (a_t * bc.mT).mT  # diag(beta) A, read below the diagonal
    else:  # strong decays: blocks of `leaf` positions, exact for any decay
        a = _blocked_scores(kc, kc, gam, leaf)
        p = _blocked_scores(qc, kc, gam, leaf)
        e_gam = exp_nonpositive(gam)
        k_gam, q_gam = kc * e_gam, qc * e_gam
        k_rest = kc * exp_nonpositive(last - gam)
        system = a * bc
    t = UTTransform.apply(system, bc.squeeze(-1))
    w, u = torch.bmm(t, k_gam), torch.bmm(t, vc)
    chunk_decay = exp_nonpositive(last).mT.reshape(N, BH, K, 1)  # Diag(e^{Gamma_C}), one per state row

    state = initial_state.to(acc).reshape(BH, K, V) if initial_state is not None else torch.zeros(BH, K, V, dtype=acc, device=q.device)
    s0, uc, state = ChunkPass.apply(u, w.view(N, BH, C, K), k_rest.mT.reshape(N, BH, K, C), chunk_decay, state, None, -1.0)
    o = torch.bmm(q_gam, s0.view(N * BH, K, V)).baddbmm_(p * incl, uc).mul_(scale)
    o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T].to(v.dtype)
    return o, state.view(B, H, K, V)


# ---- public ops -----------------------------------------------------------------------


def kda(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch", qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """KDA: S_t = (I - beta_t k_t^T k_t) Diag(exp(g_t)) S_{t-1} + beta_t k_t^T v_t, o_t = scale q_t S_t.

    q, k, g [B, T, H, K] (g: log-decays per key channel, <= 0), v [B, T, H, V], beta [B, T, H]
    in (0, 1). ``qk_l2norm`` L2-normalises q and k inside the op.
    Returns ``(o [B, T, H, V] in v's dtype, final_state [B, H, K, V] or None)``.
    """
    scale, backend = prologue(
        "kda", q, k, v, initial_state, chunk_size, scale, backend, g=(g, "B T H K"), beta=(beta, "B T H")
    )
    record("fla.chunk_kda" if backend == "fla" else "torch.kda_chunked")
    if backend == "fla":
        return _fla_kda(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, qk_l2norm)
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    o, S = by_segments(
        lambda q, k, v, beta, g, s: _chunked(q, k, v, beta, g, scale, s, chunk_size),
        (q, k, v, beta, g), initial_state, chunk_size,
    )  # fmt: skip
    return o, (S if output_final_state else None)


def _fla_kda(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, qk_l2norm):
    """g: log-space decay per channel, as here (use_gate_in_kernel=False); beta post-sigmoid
    (use_beta_sigmoid_in_kernel=False); the chunk size only tiles the computation."""
    return fla_delta_chunk(
        "fla.ops.kda.chunk_kda", q, k, v, g.float(), beta.to(q.dtype), scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, qk_l2norm=qk_l2norm, max_head_dim=FLA_MAX_HEAD_DIM,
        chunk_size=chunk_size if chunk_size in FLA_CHUNK_SIZES else 64,
    )  # fmt: skip


def kda_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
    scale: float | None = None, backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k, g [B, H, K], v [B, H, V], beta [B, H], state [B, H, K, V] (fp32).

    Returns ``(o [B, H, V] in v's dtype, new_state)``. ``backend="fla"``: fla's
    ``fused_recurrent_kda`` on one token (q and k already normalised, as here).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if step_backend("kda_step", backend, q) == "fla":
        from fla.ops.kda import fused_recurrent_kda  # optional, CUDA (or Triton's interpreter)

        record("fla.fused_recurrent_kda")
        return fla_step(fused_recurrent_kda, q, k, v, state, scale, g=g[:, None].float(), beta=beta[:, None].to(q.dtype))
    record("torch.kda_step")
    acc, out_dtype = state.dtype, v.dtype
    q, k, v, g, beta = q.to(acc), k.to(acc), v.to(acc), g.to(acc), beta.to(acc)
    state = state * g.exp()[..., None]  # Diag(exp(g_t)) S_{t-1}
    read = torch.einsum("bhk,bhkv->bhv", k, state)  # what the memory holds under k_t
    state = state + torch.einsum("bhk,bhv->bhkv", k, beta[..., None] * (v - read))
    o = torch.einsum("bhk,bhkv->bhv", q, state) * scale
    return o.to(out_dtype), state
