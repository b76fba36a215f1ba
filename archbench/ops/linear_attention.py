"""Causal linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Per head, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV} and state S_t in R^{KxV}:

    S_t = S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t

No feature map and no normaliser here: those belong to the layer (see
``archbench.mixers.linear``). Layout [B, T, H, D]; ``scale`` defaults to K**-0.5.

Reference (``backend="torch"``): the chunked form. The sequence is cut into chunks of
C tokens; inside a chunk the output is the masked quadratic form (q k^T * causal) v,
across chunks it is q S_prev with S_prev the sum of k^T v over all earlier chunks
(an exclusive cumulative sum over chunk states). Cost O(T C (K + V) + T K V), memory
O((T / C) K V) per head; accumulation is in fp32 (or fp64 for fp64 inputs) whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from archbench.ops.dispatch import record

BACKENDS = ("torch",)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns ``(o [B, T, H, V], final_state [B, H, K, V] or None)``."""
    if backend != "torch":
        raise ValueError(f"unknown linear_attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError("linear_attention expects q, k [B, T, H, K] and v [B, T, H, V]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    record("torch.linear_attention_chunked")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K**-0.5
    out_dtype = v.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, N, C, D] fp32
        x = x.to(acc)
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4)

    qc, kc, vc = to_chunks(q), to_chunks(k), to_chunks(v)
    kv = torch.einsum("bhnck,bhncv->bhnkv", kc, vc)  # each chunk's contribution to the state
    s_incl = kv.cumsum(dim=2)
    s_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), s_incl[:, :, :-1]], dim=2)
    if initial_state is not None:
        s0 = initial_state.to(acc)[:, :, None]
        s_prev = s_prev + s0
    inter = torch.einsum("bhnck,bhnkv->bhncv", qc, s_prev)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bhnck,bhnsk->bhncs", qc, kc).masked_fill(~causal, 0.0)
    intra = torch.einsum("bhncs,bhnsv->bhncv", scores, vc)
    o = (inter + intra) * scale
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T].to(out_dtype)

    final_state = None
    if output_final_state:
        final_state = s_incl[:, :, -1]
        if initial_state is not None:
            final_state = final_state + initial_state.to(acc)
    return o, final_state


def linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: q, k [B, H, K], v [B, H, V], state [B, H, K, V] (fp32, or fp64 for fp64 inputs).

    Returns ``(o [B, H, V], new_state)``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    acc = torch.promote_types(state.dtype, torch.promote_types(q.dtype, torch.float32))
    state = state.to(acc) + torch.einsum("bhk,bhv->bhkv", k.to(acc), v.to(acc))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return o.to(v.dtype), state
