"""Causal linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Per head, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV} and state S_t in R^{KxV}:

    S_t = S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t

No feature map and no normaliser here: those belong to the layer (see
``archbench.mixers.linear``). Layout [B, T, H, D]; ``scale`` defaults to K**-0.5.

Reference (``backend="torch"``): the chunked form. The sequence is cut into chunks of
C tokens; inside a chunk the output is the masked quadratic form (q k^T * causal) v,
across chunks it is q S_prev with S_prev the sum of k^T v over all earlier chunks
(an exclusive cumulative sum over chunk states). Chunks are taken in groups of about
``GROUP_ELEMS`` elements per tensor and the state is carried from group to group, so temporaries
stay cache-sized (on a CPU, streaming whole-sequence temporaries through memory costs more than
the arithmetic; this made the op 1.9x faster at T=16384). Cost O(T C (K + V) + T K V), memory
O(group K V) per head; accumulation is in fp32 (or fp64 for fp64 inputs) whatever the input dtype.

Fused (``backend="fla"``, CUDA only): flash-linear-attention's ``chunk_linear_attn`` with
``normalize=False`` (same layout, scale and [B, H, K, V] state; it runs fla's simple-GLA
chunk kernel with no decay). In fp16/bf16 an odd K or V is padded with a zero column, which
fla's backward needs. ``backend="auto"`` takes it on a CUDA device when fla is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import fla_step, record, step_backend
from archbench.ops.prologue import prologue

GROUP_ELEMS = 1 << 19  # target size of one group's [B, H, n, C, D] tensors (elements)


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """Returns ``(o [B, T, H, V], final_state [B, H, K, V] or None)``."""
    scale, backend = prologue("linear_attention", q, k, v, initial_state, chunk_size, scale, backend)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if backend == "fla":
        record("fla.chunk_linear_attn")
        return _fla(q, k, v, scale, initial_state, output_final_state)
    record("torch.linear_attention_chunked")
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64
    S = initial_state.to(acc) if initial_state is not None else q.new_zeros(B, H, K, V, dtype=acc)
    C = max(1, min(chunk_size, T))
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    group = max(1, GROUP_ELEMS // (B * H * C * max(K, V)))  # chunks per group
    outs = []
    # split, not slices: a split's backward is one concatenation, a slice's a zero-filled full-size tensor per group
    for pieces in zip(*(x.split(group * C, dim=1) for x in (q, k, v))):
        t = pieces[0].shape[1]
        qc, kc, vc = (_chunks(x, C, acc) for x in pieces)  # [B, H, n, C, D]
        kv = kc.transpose(-1, -2) @ vc  # each chunk's contribution to the state [B, H, n, K, V]
        s_prev = torch.cat([S[:, :, None], kv[:, :, :-1]], dim=2).cumsum(dim=2)  # the state entering each chunk
        scores = (qc @ kc.transpose(-1, -2)).masked_fill_(~causal, 0.0)
        o = (qc @ s_prev).add_(scores @ vc).mul_(scale)
        outs.append(o.permute(0, 2, 3, 1, 4).reshape(B, -1, H, V)[:, :t])
        S = s_prev[:, :, -1] + kv[:, :, -1]
    o = torch.cat(outs, dim=1) if len(outs) > 1 else (outs[0] if outs else v.new_zeros(B, 0, H, V, dtype=acc))
    return o.to(v.dtype), (S if output_final_state else None)


def _chunks(x: torch.Tensor, C: int, acc: torch.dtype) -> torch.Tensor:
    """[B, t, H, D] -> [B, H, n, C, D] in ``acc``, contiguous, zero-padded to whole chunks."""
    B, t, H, D = x.shape
    n = -(-t // C)
    x = x.to(acc)
    if n * C != t:
        x = F.pad(x, (0, 0, 0, 0, 0, n * C - t))
    return x.view(B, n, C, H, D).permute(0, 3, 1, 2, 4).contiguous()


def linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, scale: float | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k [B, H, K], v [B, H, V], state [B, H, K, V] (fp32, or fp64 for fp64 inputs).

    Returns ``(o [B, H, V], new_state)``. ``backend="fla"``: fla's ``fused_recurrent_linear_attn``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if step_backend("linear_attention_step", backend, q) == "fla":
        from fla.ops.linear_attn import fused_recurrent_linear_attn  # optional, CUDA only

        record("fla.fused_recurrent_linear_attn")
        return fla_step(fused_recurrent_linear_attn, q, k, v, state, scale, normalize=False)
    record("torch.linear_attention_step")
    acc = torch.promote_types(state.dtype, torch.promote_types(q.dtype, torch.float32))
    state = state.to(acc) + torch.einsum("bhk,bhv->bhkv", k.to(acc), v.to(acc))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return o.to(v.dtype), state


def _fla(q, k, v, scale, initial_state, output_final_state):
    from fla.ops.linear_attn import chunk_linear_attn  # optional, CUDA only

    K, V = q.shape[-1], v.shape[-1]
    # fla 0.6's chunk backward refuses odd K or V in 16-bit dtypes (a Triton miscompile of masked
    # tails), and the linear-attention mixer's values carry a normaliser column (V = head_dim + 1).
    # A zero column appended to q and k (or to v) changes no output and only adds a zero row (column)
    # to the state, which is cut off again.
    pk = K % 2 if q.dtype in (torch.float16, torch.bfloat16) else 0
    pv = V % 2 if q.dtype in (torch.float16, torch.bfloat16) else 0
    h0 = None if initial_state is None else F.pad(initial_state.float(), (0, pv, 0, pk))
    o, final = chunk_linear_attn(
        F.pad(q, (0, pk)),
        F.pad(k.to(q.dtype), (0, pk)),
        F.pad(v.to(q.dtype), (0, pv)),
        scale=scale,
        initial_state=h0,
        output_final_state=output_final_state,
        normalize=False,
    )
    o = o[..., :V] if pv else o
    return o.to(v.dtype), (final[..., :K, :V] if output_final_state else None)
