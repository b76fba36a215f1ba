"""Causal softmax attention, o_t = sum_{s<=t} softmax_s(scale * q_t . k_s) v_s.

Layout [B, T, H, D] for q and [B, S, Hkv, D] for k, v (Hkv divides H: GQA / MQA).
When S > T (decode against a cache) query t sits at absolute position S - T + t.

Backends:
  ``torch``      the naive reference: materialises the [B, H, T, S] score matrix.
  ``sdpa``       torch.nn.functional.scaled_dot_product_attention (flash / efficient /
                 cuDNN / math kernels chosen by torch).
  ``flash_attn`` flash_attn.flash_attn_func (CUDA, fp16/bf16 only; optional extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "sdpa", "flash_attn")


def _expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    hkv = k.shape[2]
    if hkv == n_heads:
        return k
    if n_heads % hkv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key/value heads ({hkv})")
    return k.repeat_interleave(n_heads // hkv, dim=2)


def _reference(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    T, S = q.shape[1], k.shape[1]
    k = _expand_kv(k, q.shape[2])
    v = _expand_kv(v, q.shape[2])
    scores = torch.einsum("bthd,bshd->bhts", q, k).float() * scale
    if causal:
        pos_q = torch.arange(T, device=q.device) + (S - T)
        pos_k = torch.arange(S, device=q.device)
        scores = scores.masked_fill(pos_k[None, :] > pos_q[:, None], float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhts,bshd->bthd", probs, v)


def _sdpa(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    T, S = q.shape[1], k.shape[1]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    if kh.shape[1] != qh.shape[1]:
        kh = _expand_kv(k, q.shape[2]).transpose(1, 2)
        vh = _expand_kv(v, q.shape[2]).transpose(1, 2)
    if causal and S != T:
        # SDPA's is_causal aligns the mask to the top-left corner; build the bottom-right mask.
        pos_q = torch.arange(T, device=q.device) + (S - T)
        mask = torch.arange(S, device=q.device)[None, :] <= pos_q[:, None]
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)
    return o.transpose(1, 2)


def _flash_attn(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_func  # optional extra, CUDA only

    # flash-attn aligns the causal mask bottom-right when S > T, as the reference does.
    return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "torch",
) -> torch.Tensor:
    """Softmax attention in [B, T, H, D]; returns o with q's shape."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("softmax_attention expects q, k, v of shape [B, T, H, D]")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if backend == "torch":
        return _reference(q, k, v, causal, scale)
    if backend == "sdpa":
        return _sdpa(q, k, v, causal, scale)
    if backend == "flash_attn":
        return _flash_attn(q, k, v, causal, scale)
    raise ValueError(f"unknown softmax_attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
