"""Forgetting attention (FoX; Lin et al., 2025, "Forgetting Transformer: Softmax Attention with a
Forget Gate", arXiv 2503.02130): softmax attention whose logits carry a data-dependent decay.

Each query head h has a forget gate f_t = sigmoid(.) in (0, 1) per token, given here as its log
g_t = log f_t <= 0. With the cumulative sums c_t = g_1 + ... + g_t,

    o_i = sum_{j <= i} softmax_j(scale q_i . k_j + c_i - c_j) v_j,

i.e. the weight of key j is multiplied by f_{j+1} f_{j+2} ... f_i before normalisation (a key
forgets at the rate of every later gate). It is the softmax counterpart of a gated linear
recurrence: with all gates 1 it is causal softmax attention; the bias is the "decay mask" of
gated linear attention added to the logits.

Layout: q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] (Hkv divides H), g [B, S, H] (one gate
per *query* head, for every key position). Queries are the last T of the S positions (decode: T = 1
against a cache of S, bottom-right aligned), so c_i is taken at position S - T + i.

Backends:
  ``torch``  the reference: queries in row chunks, each chunk's [B, H, C, S'] logits materialised
             (S' = keys up to the chunk's last query), masked, softmax, times V; accumulation in
             fp32 (fp64 stays fp64). Time O(T S d), memory O(C S) per chunk.
  ``sdpa``   torch SDPA per row chunk with the bias c_i - c_j (and -inf above the diagonal) as a
             float ``attn_mask``: the fused kernel, the same O(C S) mask per chunk.
  ``flex``   FlexAttention with a ``score_mod`` adding c[q] - c[kv] and a causal block mask
             (compiled; CUDA, and CPU in fp32/bf16 for the forward).
  ``fla``    fla's ``parallel_forgetting_attn`` (Triton; T == S only, head dim <= 256).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from archbench.ops.dispatch import record, triton_runs_on
from archbench.ops.prologue import resolve_backend
from archbench.ops.softmax_attention import _flex_fn, flex_block_mask, flex_unavailable_reason

BACKENDS = ("torch", "sdpa", "flex", "fla")

# logits held at once per row chunk: B * H * C * S elements
_ROW_SLAB = 1 << 23
FLA_MAX_HEAD_DIM = 256


def _check(q, k, v, g) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("forgetting_attention expects q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv]")
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(
            f"forgetting_attention: incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if H % Hkv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if T > S:
        raise ValueError(f"forgetting_attention: more queries ({T}) than keys ({S})")
    if g.shape != (B, S, H):
        raise ValueError(f"forgetting_attention expects g [B, S, H] = {(B, S, H)}, got {tuple(g.shape)}")


def _rows(q, k, v, gc, scale: float, fused: bool) -> torch.Tensor:
    """Row-chunked attention with the forget bias; ``fused``: SDPA per chunk, else einsum + softmax."""
    B, T, H, D = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G, off = H // Hkv, S - T
    acc = torch.promote_types(q.dtype, torch.float32) if not fused else q.dtype
    C = max(1, min(T, _ROW_SLAB // max(1, B * H * S)))
    kh = k.to(acc).repeat_interleave(G, dim=2).transpose(1, 2) if fused else k.to(acc)
    vh = v.to(acc).repeat_interleave(G, dim=2).transpose(1, 2) if fused else v.to(acc)
    gc = gc.to(torch.promote_types(gc.dtype, torch.float32)).transpose(1, 2)  # [B, H, S]
    outs = []
    for r0 in range(0, T, C):
        r1 = min(T, r0 + C)
        end = off + r1  # keys this chunk can see
        pos_q = torch.arange(off + r0, off + r1, device=q.device)[:, None]
        causal = torch.arange(end, device=q.device)[None, :] <= pos_q  # [C, end]
        bias = gc[:, :, off + r0 : off + r1, None] - gc[:, :, None, :end]  # [B, H, C, end]
        bias = bias.masked_fill(~causal, float("-inf"))
        if fused:
            qh = q[:, r0:r1].transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(
                qh, kh[:, :, :end], vh[:, :, :end], attn_mask=bias.to(qh.dtype), scale=scale
            )
            outs.append(o.transpose(1, 2))
            continue
        qg = q[:, r0:r1].to(acc).view(B, r1 - r0, Hkv, G, D)
        s = torch.einsum("btxgd,bsxd->bxgts", qg, kh[:, :end]) * scale
        p = (s + bias.view(B, Hkv, G, r1 - r0, end).to(acc)).softmax(dim=-1)
        outs.append(torch.einsum("bxgts,bsxe->btxge", p, vh[:, :end]).reshape(B, r1 - r0, H, Dv))
    return torch.cat(outs, dim=1).to(v.dtype)


_CAUSAL_FNS: dict = {}


def _causal_mask_fn(off: int):
    if off not in _CAUSAL_FNS:
        _CAUSAL_FNS[off] = lambda q_idx, kv_idx: kv_idx <= q_idx + off
    return _CAUSAL_FNS[off]


def _flex(q, k, v, gc, scale: float) -> torch.Tensor:
    reason = flex_unavailable_reason(q.device, q.dtype)
    if reason:
        raise RuntimeError(f"flex backend unavailable: {reason}")
    T, S = q.shape[1], k.shape[1]
    off = S - T
    gch = gc.float().transpose(1, 2).contiguous()  # [B, H, S]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + (gch[b, h, q_idx + off] - gch[b, h, kv_idx]).to(score.dtype)

    block_mask = flex_block_mask(_causal_mask_fn(off), T, S, q.device, key=("causal", off))
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    o = _flex_fn()(
        qh, kh, vh, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=kh.shape[1] != qh.shape[1]
    )
    return o.transpose(1, 2)


def fla_unavailable_reason(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """None when fla's ``parallel_forgetting_attn`` can run on these tensors, else why not."""
    if not triton_runs_on(q):
        return "fla's kernels need CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU interpreter)"
    if importlib.util.find_spec("fla") is None:
        return "fla is not installed"
    if q.shape[1] != k.shape[1]:
        return "fla's parallel_forgetting_attn takes as many queries as keys (no decode against a cache)"
    if q.shape[-1] > FLA_MAX_HEAD_DIM:
        return f"fla's parallel_forgetting_attn takes head dimensions up to {FLA_MAX_HEAD_DIM} (got {q.shape[-1]})"
    return None


def _fla(q, k, v, g, scale: float) -> torch.Tensor:
    from fla.ops.forgetting_attn import parallel_forgetting_attn

    reason = fla_unavailable_reason(q, k)
    if reason:
        raise ValueError(f"forgetting_attention backend 'fla' cannot run: {reason}")
    return parallel_forgetting_attn(q, k, v, g.float(), scale=scale)


_KERNELS = {
    "torch": "torch.forgetting_attention",
    "sdpa": "torch.sdpa+forget_bias",
    "flex": "torch.flex_attention+score_mod",
    "fla": "fla.parallel_forgetting_attn",
}


def forgetting_attention(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None = None, backend: str = "torch"
) -> Tensor:
    """Causal softmax attention with forget-gate logit bias c_i - c_j, c = cumsum(g) over the S
    key positions; g [B, S, H] are log forget gates (<= 0). Returns o [B, T, H, Dv]."""
    resolve_backend("forgetting_attention", backend, q, choices=BACKENDS)
    _check(q, k, v, g)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    record(_KERNELS[backend])
    if backend == "fla":
        return _fla(q, k, v, g, scale)
    gc = g.to(torch.promote_types(g.dtype, torch.float32)).cumsum(dim=1)
    if backend == "flex":
        return _flex(q, k, v, gc, scale)
    return _rows(q, k, v, gc, scale, fused=backend == "sdpa")
