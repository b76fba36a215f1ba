"""(Gated) DeltaProduct: n delta-rule (Householder) steps per token.

Per head, with state S in R^{KxV}, an optional log-decay g_t <= 0 per token, and for each token
n keys k_{t,j} in R^{1xK}, values v_{t,j} in R^{1xV} and writing strengths beta_{t,j}:

    S_{t,0} = exp(g_t) S_{t-1}
    S_{t,j} = (I - beta_{t,j} k_{t,j}^T k_{t,j}) S_{t,j-1} + beta_{t,j} k_{t,j}^T v_{t,j}     j = 1 .. n
    S_t     = S_{t,n},        o_t = scale * q_t S_t                          (scale defaults to K**-0.5)

The state transition of a token is a product of n generalised Householder matrices (times the
decay), so with n >= 2 (and beta in [0, 2], negative eigenvalues) it is no longer a rank-one
update of the identity: diagonal-plus-rank-n, which lets a linear RNN track states that
DeltaNet cannot (Siems et al., 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs
via Householder Products", arXiv 2502.10297). n = 1 is (Gated) DeltaNet.

Layout, as fla's: q [B, T, H, K] and g [B, T, H] per token; k [B, T*n, H, K], v [B, T*n, H, V]
and beta [B, T*n, H] per step, step j of token t at row t*n + j (a [B, T, n, H, D] tensor
flattened over (T, n)).

Reference (``backend="torch"``): the recurrence above is the (gated) delta rule run over the
T*n steps, with the decay g_t on the first step of each token (and none on the others) and a
read-out at the last: exactly fla's interleaved formulation. It runs the chunked WY / UT
reference of ``archbench.ops.delta_rule`` over that sequence with the query q_t at step
t*n + n - 1 and zero elsewhere, and keeps every n-th output. ``chunk_size`` counts steps, not
tokens. Cost n times (Gated) DeltaNet's: O(n T (C (K + V) + K V)) per head.

Fused backend (``backend="fla"``): ``fla.ops.gated_delta_product.chunk_gated_delta_product``
(fp16/bf16 only; head dimension up to 256); its backward is the gated delta rule's, with the
same Hopper caveat (``spec.fla_gated_backward``). Decode: n steps of fla's
``fused_recurrent_gated_delta_rule`` (the decay on the first), which is what a token costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from archbench.ops.delta_rule import delta_rule, fla_delta_chunk, gated_delta_rule, l2norm
from archbench.ops.dispatch import record, step_backend
from archbench.ops.prologue import check_chunk_size, check_shapes, resolve_backend

FLA_MAX_HEAD_DIM = 256


def _check(q, k, v, g, beta, n, initial_state, chunk_size):
    if n < 1:
        raise ValueError(f"num_householder must be >= 1, got {n}")
    if q.dim() != 4:
        raise ValueError(f"gated_delta_product expects q [B, T, H, K], got {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != (B, T * n, H, K) or v.dim() != 4 or v.shape[:3] != (B, T * n, H):
        raise ValueError(
            f"gated_delta_product expects k [B, T*n, H, K] = {(B, T * n, H, K)} and v [B, T*n, H, V] "
            f"(n = num_householder = {n}), got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    sizes = {"B": B, "T": T, "T*n": T * n, "H": H, "K": K, "V": v.shape[-1]}
    check_shapes(
        "gated_delta_product", sizes, beta=(beta, "B T*n H"), g=(g, "B T H"), initial_state=(initial_state, "B H K V")
    )
    check_chunk_size(chunk_size)


def _interleave(x: torch.Tensor, n: int, at: int) -> torch.Tensor:
    """[B, T, H, *D] -> [B, T*n, H, *D] holding x at step ``at`` of every token and zeros elsewhere."""
    B, T = x.shape[:2]
    out = x.new_zeros(B, T, n, *x.shape[2:])
    out[:, :, at] = x
    return out.flatten(1, 2)


def gated_delta_product(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, num_householder: int,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch", qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """n = ``num_householder`` delta-rule steps per token after the decay exp(g_t) (module docstring).

    q [B, T, H, K]; k [B, T*n, H, K], v [B, T*n, H, V], beta [B, T*n, H] (step j of token t at
    row t*n + j); g [B, T, H] log-decay, or None for the ungated DeltaProduct.
    Returns ``(o [B, T, H, V] in v's dtype, final_state [B, H, K, V] or None)``.
    """
    n = num_householder
    _check(q, k, v, g, beta, n, initial_state, chunk_size)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    backend = resolve_backend("gated_delta_product", backend, q, half_only=True)
    if backend == "fla":
        record("fla.chunk_gated_delta_product")
        return _fla(q, k, v, g, beta, n, scale, initial_state, output_final_state, qk_l2norm)
    record("torch.gated_delta_product_chunked")
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q_steps = _interleave(q, n, n - 1)  # read out after the last step of each token
    kw = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state, chunk_size=chunk_size)
    if g is None:
        o, S = delta_rule(q_steps, k, v, beta, **kw)
    else:
        o, S = gated_delta_rule(q_steps, k, v, _interleave(g, n, 0), beta, **kw)  # decay on the first step
    return o[:, n - 1 :: n], S


def _fla(q, k, v, g, beta, n, scale, initial_state, output_final_state, qk_l2norm):
    return fla_delta_chunk(
        "fla.ops.gated_delta_product.chunk_gated_delta_product", q, k, v, None if g is None else g.float(), beta.to(q.dtype), num_householder=n,
        scale=scale, initial_state=initial_state, output_final_state=output_final_state, qk_l2norm=qk_l2norm,
        half_only=True, max_head_dim=FLA_MAX_HEAD_DIM,
    )  # fmt: skip


def gated_delta_product_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, state: Tensor,
    scale: float | None = None, backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """One decode step: q [B, H, K], k [B, n, H, K], v [B, n, H, V], g [B, H] or None,
    beta [B, n, H], state [B, H, K, V] (fp32). Returns ``(o [B, H, V] in v's dtype, new_state)``.
    ``backend="fla"``: the n steps through fla's ``fused_recurrent_gated_delta_rule``."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    n = k.shape[1]
    if step_backend("gated_delta_product_step", backend, q) == "fla":
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule  # optional, CUDA only

        record("fla.fused_recurrent_gated_delta_rule")
        gates = torch.zeros(q.shape[0], n, q.shape[1], dtype=torch.float32, device=q.device)
        if g is not None:
            gates[:, 0] = g.float()
        o, S = fused_recurrent_gated_delta_rule(
            q[:, None].expand(-1, n, -1, -1).contiguous(), k.to(q.dtype), v.to(q.dtype), g=gates,
            beta=beta.to(q.dtype), scale=scale, initial_state=state.float(), output_final_state=True,
        )  # fmt: skip
        return o[:, -1].to(v.dtype), S
    record("torch.gated_delta_product_step")
    acc, out_dtype = state.dtype, v.dtype
    if g is not None:
        state = state * g.to(acc).exp()[..., None, None]
    for j in range(n):
        kj, bj = k[:, j].to(acc), beta[:, j].to(acc)
        read = torch.einsum("bhk,bhkv->bhv", kj, state)  # what the memory holds under k_{t,j}
        state = state + torch.einsum("bhk,bhv->bhkv", kj, bj[..., None] * (v[:, j].to(acc) - read))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return o.to(out_dtype), state
