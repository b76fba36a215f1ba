"""The delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet).

Per head, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV}, a writing strength
beta_t in (0, 1), an optional log-decay g_t <= 0 and state S_t in R^{KxV}:

    delta rule        S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    gated delta rule  S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    read-out          o_t = scale * q_t S_t                      (scale defaults to K**-0.5)

The state is an associative memory trained online by one step of gradient descent on
||k_t S - v_t||^2 / 2 with learning rate beta_t: it first reads what it stores under k_t,
then replaces a beta_t fraction of it by v_t (Widrow & Hoff's delta rule; Schlag et al.,
2021; Yang et al., 2024, arXiv 2406.06484). The gated form multiplies the memory by a
data-dependent decay first (Yang, Kautz & Hatamizadeh, 2024, arXiv 2412.06464). Keys are
meant to be L2-normalised (then I - beta k^T k is a contraction); that is the layer's job,
or pass ``qk_l2norm=True`` to let the op normalise q and k (fla's in-kernel option).

Reference (``backend="torch"``; past 1024 tokens it runs in segments with the state carried
between them, ``archbench.ops.segments``, so its temporaries stay cache-sized):
the chunked WY / UT-transform form (Yang et al., 2024).
Write the update as S_t = a_t S_{t-1} + k_t^T u_t with the *pseudo-value*
u_t = beta_t (v_t - a_t k_t S_{t-1}) and a_t = exp(g_t) (a_t = 1 without gates). Cut the
sequence into chunks of C tokens; inside a chunk let gamma_i = g_1 + ... + g_i (cumulative
log-decay from the chunk start, gamma_0 = 0) and S_0 the state entering it. Unrolling,

    S_i = e^{gamma_i} S_0 + sum_{j<=i} e^{gamma_i - gamma_j} k_j^T u_j
    u_i = beta_i (v_i - e^{gamma_i} k_i S_0 - sum_{j<i} e^{gamma_i - gamma_j} (k_i k_j^T) u_j)

so the pseudo-values of a chunk solve one unit lower-triangular system

    (I + tril(diag(beta) (K K^T * Gamma), -1)) U_c = diag(beta) V - diag(beta e^{gamma}) K S_0
                                                     with Gamma_ij = e^{gamma_i - gamma_j}.

With the UT transform T = (I + tril(diag(beta) (K K^T * Gamma), -1))^{-1} diag(beta):
U_c = U - W S_0, where U = T V and W = T (e^{gamma} * K) depend on the chunk alone. The
gated system matrix is the ungated one conjugated by D = diag(e^{gamma}) (because
Gamma_ij = e^{gamma_i} e^{-gamma_j}), so T = D T_0 D^{-1} = Gamma * T_0 with T_0 the ungated
transform, and W = (e^{gamma} * T_0) K: one inverse serves both, and no factor e^{-gamma} > 1
is ever formed. Hence

  1. for all chunks at once (batched over batch, heads and chunks): the Gram matrices, T_0 by
     one batched ``torch.linalg.solve_triangular`` against diag(beta), W, U and the masked
     decay matrices;
  2. a sequential pass over the T/C chunks (two batched matmuls per chunk, no loop over time):
     U_c = U - W S_0;  S_C = e^{gamma_C} S_0 + (e^{gamma_C - gamma} * K)^T U_c;
  3. for all chunks at once: O = scale (e^{gamma} Q S_0 + tril(Q K^T * Gamma) U_c).

Every exponent is a difference gamma_i - gamma_j with j <= i, masked to -inf above the
diagonal BEFORE the exp, or gamma_i itself: all are <= 0, so strong decays underflow to 0
and never overflow. (When every chunk spans a safe log-decay range, ``archbench.ops.decay``,
the decay matrix is the outer product e^{gamma_i - m} e^{m - gamma_j}, m = gamma_C / 2,
masked after: same values, half the passes.) Cost per token O(C (K + V) + K V); memory O((T / C) K V) per head.
Accumulation is in fp32 (fp64 stays fp64); outputs come back in v's dtype, states in fp32.

Fused backends: ``fla`` calls flash-linear-attention's Triton kernels
``fla.ops.delta_rule.chunk_delta_rule`` (fp16/bf16 only) and
``fla.ops.gated_delta_rule.chunk_gated_delta_rule``; both use the same [B, T, H, D] layout,
log-space g, post-sigmoid beta and q-side scale as here. ``auto`` picks fla on CUDA when it
is importable (and, for the ungated kernel, the dtype is half precision), else torch.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import exp_nonpositive, midpoint_safe
from archbench.ops.dispatch import fla_step, record, step_backend
from archbench.ops.prologue import prologue
from archbench.ops.segments import by_segments
from archbench.ops.wy import ChunkPass, UTTransform, serial_if, serial_loop
from archbench.spec import fla_gated_grad_refused

FLA_CHUNK_SIZES = (16, 32, 64)  # the chunk sizes fla's delta-rule kernels accept
L2_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(||x||^2 + eps) over the last dim, computed in fp32 (or fp64), returned in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


# ---- the chunked reference ------------------------------------------------------------

def _chunked(q, k, v, beta, g, scale, initial_state, output_final_state, chunk_size):
    """The WY / UT-transform chunked form of the (gated) delta rule; g=None means no decay.

    Written for CPU, where the work is memory bound: beta and the scale are folded into
    passes that happen anyway, every matmul is a 3-D ``bmm`` on [N*B*H, C, D] views (no hidden
    copies), and the per-chunk loops (``wy.UTTransform``, ``wy.ChunkPass``) carry their own
    backward so that autograd neither records nor replays thousands of tiny ops.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    if T == 0:
        state = initial_state.to(acc) if initial_state is not None else q.new_zeros(B, H, K, V, dtype=acc)
        return v.new_zeros(B, 0, H, V), (state if output_final_state else None)
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    BH = B * H

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> view [N, B, H, C, D] in acc dtype
        x = x.to(acc)
        if pad:  # zero k, v, beta and g: padded steps leave the state untouched
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, -1).permute(1, 0, 3, 2, 4)

    # Chunk n of head j is row n * BH + j. Keys and queries share one [N*BH, 2C, K] array
    # (rows 0..C-1 keys, C..2C-1 queries) so that one matmul gives both K K^T and Q K^T.
    kq = torch.cat([blocks(k), blocks(q)], dim=-2).view(N * BH, 2 * C, K)
    kc, qc = kq[:, :C], kq[:, C:]
    vc = blocks(v).reshape(N * BH, C, V)
    with serial_if(serial_loop(q.device)):  # small [T, H] tensors: not worth a parallel region each
        gates = blocks(torch.stack([beta, g], -1) if g is not None else beta[..., None]).reshape(N * BH, C, -1)
        bc = gates[..., :1]  # beta, [N*BH, C, 1]
        if g is not None:
            gam = gates[..., 1].cumsum(-1)  # [N*BH, C]: cumulative log-decay in the chunk
            # e^{gamma_C - gamma_i} for the keys and scale * e^{gamma_i} for the queries, all <= 1
            e_rest, e_gam = exp_nonpositive(torch.stack([gam[:, -1:] - gam, gam], 1)).unbind(1)
            kq_factor = torch.cat([e_rest, e_gam * scale], dim=-1).unsqueeze(-1)  # [N*BH, 2C, 1]
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    kk_qk = torch.bmm(kq, kc.mT)  # [N*BH, 2C, C]: k_i . k_j, then q_i . k_j
    qk = kk_qk[:, C:]

    # The ungated UT transform T_0 = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta), all chunks at once.
    # (K K^T is symmetric: scaling its columns and transposing gives diag(beta) K K^T in the
    # column-major layout LAPACK wants, so the solve copies nothing.)
    t0 = UTTransform.apply((kk_qk[:, :C] * bc.mT).mT, bc.squeeze(-1))
    if g is None:
        w, u = torch.bmm(t0, kc), torch.bmm(t0, vc)
        # scale tril(Q K^T), diagonal included; the mask is cast first, since a bool tensor times a
        # Python float is a float32 tensor, which would round the scale in fp64 runs
        attn = qk * (incl.to(acc) * scale)
        q_eff, q_scale, k_out_t, chunk_decay = qc, scale, kc.mT, None
    else:
        # Gamma_ij = exp(gamma_i - gamma_j) for j <= i, 0 above the diagonal: an outer product
        # e^{gamma_i - m} e^{m - gamma_j} (m = gamma_C / 2, the middle of the chunk's range) when every
        # chunk's range is safe to factor that way (archbench.ops.decay; 2 passes over [N*BH, C, C]
        # instead of 4), else pairwise, masked before the exp.
        if midpoint_safe(-gam[:, -1], acc):
            mid = 0.5 * gam[:, -1:]
            decay = ((gam - mid).exp().unsqueeze(-1) * (mid - gam).exp().unsqueeze(-2)).tril_()
        else:
            decay = exp_nonpositive(gam[:, :, None] - gam[:, None, :], mask=~incl)
        # The gated system matrix is the ungated one conjugated by D = diag(e^gamma):
        # I + tril(diag(beta) (K K^T * Gamma), -1) = D (I + tril(diag(beta) K K^T, -1)) D^{-1}, so
        # T = D T_0 D^{-1} = Gamma * T_0 and W = T (e^gamma K) = (e^gamma T_0) K: no second
        # inverse, and no factor e^{-gamma} > 1 is ever formed.
        w = torch.bmm(t0 * e_gam.unsqueeze(-1), kc)
        u = torch.bmm(t0 * decay, vc)
        attn = qk * decay  # tril(Q K^T * Gamma), scale applied below
        kq_scaled = kq * kq_factor
        k_out_t, q_eff = kq_scaled[:, :C].mT, kq_scaled[:, C:]  # (e^{gamma_C - gamma_j} k_j)^T, scale e^{gamma_i} q_i
        q_scale = 1.0
        chunk_decay = e_gam[:, -1].view(N, BH, 1, 1)  # e^{gamma_C}
    w, k_out_t = w.view(N, BH, C, K), k_out_t.view(N, BH, K, C)

    if initial_state is not None:
        state = initial_state.to(acc).reshape(BH, K, V)
    else:
        state = torch.zeros(BH, K, V, dtype=acc, device=q.device)
    s0, uc, state = ChunkPass.apply(u, w, k_out_t, chunk_decay, state, None, -1.0)
    s0 = s0.view(N * BH, K, V)
    # O = scale (e^gamma Q S_0 + tril(Q K^T * Gamma) U_c)
    zero = torch.zeros((), dtype=acc, device=q.device)
    o = torch.baddbmm(zero, q_eff, s0, beta=0.0, alpha=q_scale).baddbmm_(attn, uc, alpha=1.0 if g is None else scale)
    o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T].to(v.dtype)
    final_state = state.view(B, H, K, V) if output_final_state else None
    return o, final_state


# ---- fla adapters ---------------------------------------------------------------------


def _fla_chunk_size(chunk_size: int) -> int:
    # The chunk size only tiles the computation; fla accepts 16/32/64 and defaults to 64.
    return chunk_size if chunk_size in FLA_CHUNK_SIZES else 64


def fla_delta_chunk(
    kernel, q, k, v, *gates, scale, initial_state, output_final_state, qk_l2norm, half_only=False, max_head_dim=None,
    **options,
):  # fmt: skip
    """fla's chunked delta-rule ``kernel`` (its dotted path: ``chunk_delta_rule`` and its gated, KDA and
    DeltaProduct kin, imported here, fla being optional): k and v in q's dtype, ``gates`` as given
    (log-decays in fp32, beta post-sigmoid in q's dtype), the state in fp32, q and k L2-normalised in
    the kernel with ``qk_l2norm``; first a ValueError for what the kernel refuses (fp32 inputs with
    ``half_only``, head dimensions above ``max_head_dim``). Returns ``(o in v's dtype, final state)``."""
    module, name = kernel.rsplit(".", 1)
    if half_only and q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"fla's {name} supports only float16/bfloat16 inputs, got {q.dtype}; use backend='torch' (or 'auto') for fp32")
    if max_head_dim is not None and q.shape[-1] > max_head_dim:
        raise ValueError(f"fla's {name} takes head dimensions up to {max_head_dim}, got {q.shape[-1]}; use backend='torch'")
    o, final_state = getattr(importlib.import_module(module), name)(
        q, k.to(q.dtype), v.to(q.dtype), *gates, scale=scale,
        initial_state=None if initial_state is None else initial_state.float(),
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=qk_l2norm, **options,
    )  # fmt: skip
    return o.to(v.dtype), final_state


# ---- public ops -----------------------------------------------------------------------


def delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch", qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """DeltaNet: S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, o_t = scale q_t S_t.

    q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H] in (0, 1). ``qk_l2norm`` L2-normalises
    q and k inside the op. Returns ``(o [B, T, H, V], final_state [B, H, K, V] or None)``.
    """
    scale, backend = prologue(
        "delta_rule", q, k, v, initial_state, chunk_size, scale, backend, half_only=True, beta=(beta, "B T H")
    )
    record("fla.chunk_delta_rule" if backend == "fla" else "torch.delta_rule_chunked")
    if backend == "fla":
        return fla_delta_chunk(
            "fla.ops.delta_rule.chunk_delta_rule", q, k, v, beta.to(q.dtype), scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, qk_l2norm=qk_l2norm, half_only=True,
            chunk_size=_fla_chunk_size(chunk_size),
        )  # fmt: skip
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    o, S = by_segments(
        lambda q, k, v, beta, s: _chunked(q, k, v, beta, None, scale, s, True, chunk_size),
        (q, k, v, beta), initial_state, chunk_size,
    )  # fmt: skip
    return o, (S if output_final_state else None)


def gated_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch", qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Gated DeltaNet: S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t.

    q, k [B, T, H, K], v [B, T, H, V], g [B, T, H] log-decay (<= 0), beta [B, T, H] in (0, 1).
    Returns ``(o [B, T, H, V], final_state [B, H, K, V] or None)``.
    """
    # auto: not fla where its gated backward is wrong on this GPU/triton (spec.fla_gated_backward)
    fla_takes = lambda _: not fla_gated_grad_refused(q, k, v, g, beta)  # noqa: E731
    scale, backend = prologue(
        "gated_delta_rule", q, k, v, initial_state, chunk_size, scale, backend, takes=fla_takes,
        beta=(beta, "B T H"), g=(g, "B T H"),
    )  # fmt: skip
    record("fla.chunk_gated_delta_rule" if backend == "fla" else "torch.gated_delta_rule_chunked")
    if backend == "fla":  # g in fp32 (fla keeps gate cumsums in fp32), beta post-sigmoid
        return fla_delta_chunk(
            "fla.ops.gated_delta_rule.chunk_gated_delta_rule", q, k, v, g.float(), beta.to(q.dtype), scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, qk_l2norm=qk_l2norm, chunk_size=_fla_chunk_size(chunk_size),
        )  # fmt: skip
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    o, S = by_segments(
        lambda q, k, v, beta, g, s: _chunked(q, k, v, beta, g, scale, s, True, chunk_size),
        (q, k, v, beta, g), initial_state, chunk_size,
    )  # fmt: skip
    return o, (S if output_final_state else None)


def delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Tensor, scale: float | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k [B, H, K], v [B, H, V], beta [B, H], state [B, H, K, V] (fp32).

    Returns ``(o [B, H, V], new_state)``. ``backend="fla"``: fla's ``fused_recurrent_delta_rule``
    (q and k already normalised, as here).
    """
    if step_backend("delta_rule_step", backend, q) == "fla":
        from fla.ops.delta_rule import fused_recurrent_delta_rule  # optional, CUDA only

        record("fla.fused_recurrent_delta_rule")
        return _fla_step(fused_recurrent_delta_rule, q, k, v, {}, beta, state, scale)
    record("torch.delta_rule_step")
    return _step(q, k, v, None, beta, state, scale)


def gated_delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
    scale: float | None = None, backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """One gated decode step: as ``delta_rule_step`` with a log-decay g [B, H]
    (``backend="fla"``: fla's ``fused_recurrent_gated_delta_rule``)."""
    if step_backend("gated_delta_rule_step", backend, q) == "fla":
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule  # optional, CUDA only

        record("fla.fused_recurrent_gated_delta_rule")
        return _fla_step(fused_recurrent_gated_delta_rule, q, k, v, {"g": g[:, None].float()}, beta, state, scale)
    record("torch.gated_delta_rule_step")
    return _step(q, k, v, g, beta, state, scale)


def _fla_step(kernel, q, k, v, gates, beta, state, scale):
    """fla's fused recurrent delta-rule kernel on one token."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return fla_step(kernel, q, k, v, state, scale, **gates, beta=beta[:, None].to(q.dtype))


def _step(q, k, v, g, beta, state, scale):
    if scale is None:
        scale = q.shape[-1] ** -0.5
    acc, out_dtype = state.dtype, v.dtype
    q, k, v, beta = q.to(acc), k.to(acc), v.to(acc), beta.to(acc)
    if g is not None:
        state = state * g.to(acc).exp()[..., None, None]
    read = torch.einsum("bhk,bhkv->bhv", k, state)  # what the memory holds under k_t
    state = state + torch.einsum("bhk,bhv->bhkv", k, beta[..., None] * (v - read))
    o = torch.einsum("bhk,bhkv->bhv", q, state) * scale
    return o.to(out_dtype), state
