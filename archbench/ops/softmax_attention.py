"""Causal softmax attention, o_t = sum_{s<=t} softmax_s(scale * q_t . k_s) v_s.

Layout [B, T, H, D] for q and [B, S, Hkv, D] for k, v (Hkv divides H: GQA / MQA).
When S > T (decode against a cache) query t sits at absolute position S - T + t
("bottom-right" alignment, as flash-attn does).

Sliding window (``window=W``; Beltagy et al., 2020; Mistral): query t sees the keys
t-W+1 .. t, i.e. the mask is ``pos_q - W < pos_k <= pos_q``. With ``causal=False`` the
window keeps only its lower bound (``pos_k > pos_q - W``). ``window >= S`` is full
(causal) attention.

Backends:
  ``torch``      the reference. Without a window (or a window covering every key) it is the
                 naive form that materialises the [B, H, T, S] score matrix. With a causal window
                 it is the banded form: queries are cut into chunks of C tokens and each chunk
                 attends to the C + W - 1 keys that can reach it, so time and memory are
                 O(T (C + W) d) instead of O(T S d); vectorised over chunks (a loop only over
                 groups of chunks, to bound memory).
  ``sdpa``       torch.nn.functional.scaled_dot_product_attention (flash / efficient / cuDNN / math
                 kernels chosen by torch); the window is a boolean ``attn_mask``, applied to the
                 banded chunks (the reference's layout) so that it costs O(T (C + W) d), not O(T S d).
                 Short sequences (T * S up to ``DENSE_WINDOW_SCORES``, 256 x 256) take one call
                 with the dense window mask instead: there the banded form's padding, unfolding and
                 per-group calls cost more than the masked-out work they save. Sliding-window
                 mixer, d_model 128, W=16, 8192 tokens, forward + backward on one CPU thread,
                 dense vs banded: T=128 77 vs 118 ms, T=256 98 vs 122, T=512 121 vs 115.
  ``flash_attn`` flash_attn.flash_attn_func (CUDA, fp16/bf16 only; optional extra);
                 the window is ``window_size=(W - 1, 0)``.
  ``flex``       torch FlexAttention (``torch.nn.attention.flex_attention``) with a block mask,
                 compiled with torch.compile (CUDA; on CPU too, fp32/bf16, where inductor's CPU
                 template exists). Fully masked blocks are skipped, so a window costs O(T W d).
                 The first call per shape compiles (tens of seconds on CPU); compiled code and
                 block masks are cached per (mask, shape, device) in this module.
  ``auto``       flash_attn on CUDA for fp16/bf16 when importable, else sdpa.

``masked_attention(q, k, v, mask_fn, ...)`` is the same machinery for an arbitrary mask given as
an elementwise function ``mask_fn(q_idx, kv_idx) -> bool`` (FlexAttention's ``mask_mod`` without
the batch/head arguments); ``flex_block_mask`` builds (and caches) the FlexAttention BlockMask of
such a function without materialising more than one row of blocks at a time. Block-sparse
attention (``archbench.mixers.sparse``) uses both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections import OrderedDict
from typing import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import record
from archbench.ops.prologue import resolve_backend

BACKENDS = ("torch", "sdpa", "flash_attn", "flex", "auto")
MASKED_BACKENDS = ("torch", "sdpa", "flex")

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# elements of one [chunks, heads, C, C + W - 1] score slab in the banded reference
_BANDED_SLAB = 1 << 23
# sdpa with a causal window: up to this many query-key pairs per head (T * S) one SDPA call with a
# dense window mask beats the banded chunks; past it the banded form's O(T W) work wins (see _sdpa)
DENSE_WINDOW_SCORES = 1 << 16


def _expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    hkv = k.shape[2]
    if hkv == n_heads:
        return k
    if n_heads % hkv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key/value heads ({hkv})")
    return k.repeat_interleave(n_heads // hkv, dim=2)


def window_mask(T: int, S: int, causal: bool, window: int | None, device=None) -> torch.Tensor | None:
    """Boolean [T, S] mask (True = attend) for causal and/or windowed attention, bottom-right aligned."""
    if not causal and window is None:
        return None
    pos_q = torch.arange(T, device=device)[:, None] + (S - T)
    pos_k = torch.arange(S, device=device)[None, :]
    mask = torch.ones(T, S, dtype=torch.bool, device=device)
    if causal:
        mask &= pos_k <= pos_q
    if window is not None:
        mask &= pos_k > pos_q - window
    return mask


def _dense(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The naive form: [B, H, T, S] scores, masked, softmax, times V."""
    k = _expand_kv(k, q.shape[2])
    v = _expand_kv(v, q.shape[2])
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 scores for half inputs; fp64 stays fp64
    scores = torch.einsum("bthd,bshd->bhts", q, k).to(acc) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhts,bshd->bthd", probs, v)


def _banded(
    q, k, v, scale: float, window: int, chunk_size: int | None = None, kernel: str = "torch"
) -> torch.Tensor:
    """Causal sliding-window attention in O(T (C + W) d): each chunk of C queries sees C + W - 1 keys.

    Chunk c holds the queries at absolute positions off + cC .. off + cC + C - 1 (off = S - T);
    the keys that can reach it start at off + cC - (W - 1). Inside the chunk, query i and key j
    (counted from that start) see each other iff i <= j <= i + W - 1, the same band for every
    chunk; keys before position 0 are padding and masked. ``kernel`` computes each group of
    chunks: "torch" (einsum + masked softmax, the reference) or "sdpa" (fused, boolean mask).
    """
    B, T, H, D = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if H % Hkv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    G, W, off = H // Hkv, window, S - T
    acc = torch.promote_types(q.dtype, torch.float32) if kernel == "torch" else q.dtype
    C = chunk_size or max(16, min(W, 128, T))
    N = -(-T // C)
    Tp, L = N * C, C + W - 1
    lo = off - (W - 1)  # absolute position of the first key of chunk 0
    pad_left = max(0, -lo)
    ks, vs = k[:, max(lo, 0) :].to(acc), v[:, max(lo, 0) :].to(acc)
    kp = F.pad(ks, (0, 0, 0, 0, pad_left, Tp - T))  # [B, W - 1 + Tp, Hkv, D]
    vp = F.pad(vs, (0, 0, 0, 0, pad_left, Tp - T))
    kw = kp.unfold(1, L, C)  # [B, N, Hkv, D, L]
    vw = vp.unfold(1, L, C)  # [B, N, Hkv, Dv, L]
    kvalid = (torch.arange(W - 1 + Tp, device=q.device) >= pad_left).unfold(0, L, C)  # [N, L]
    i = torch.arange(C, device=q.device)[:, None]
    j = torch.arange(L, device=q.device)[None, :]
    band = (j >= i) & (j <= i + W - 1)  # [C, L]
    qc = F.pad(q.to(acc), (0, 0, 0, 0, 0, Tp - T)).view(B, N, C, Hkv, G, D)
    step = max(1, _BANDED_SLAB // (B * H * C * L))
    outs = []
    # groups of chunks, only to bound the score slab's memory; cut by split, whose backward is one
    # concatenation (a slice's backward zero-fills a full-size tensor per group)
    groups = zip(range(0, N, step), qc.split(step, dim=1), kw.split(step, dim=1), vw.split(step, dim=1))
    for n0, qg, kg, vg in groups:
        n = qg.shape[1]
        mask = band[None] & kvalid[n0 : n0 + n, None, :]  # [n, C, L]
        if kernel == "sdpa":
            qh = qg.reshape(B * n, C, H, D).transpose(1, 2)
            kh = kg.transpose(-1, -2).repeat_interleave(G, dim=2).reshape(B * n, H, L, D)
            vh = vg.transpose(-1, -2).repeat_interleave(G, dim=2).reshape(B * n, H, L, Dv)
            am = mask[None, :, None].expand(B, n, 1, C, L).reshape(B * n, 1, C, L)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=am, scale=scale)
            outs.append(o.transpose(1, 2).reshape(B, n, C, H, Dv))
            continue
        s = torch.einsum("bncxgd,bnxdl->bnxgcl", qg * scale, kg)
        s = s.masked_fill(~mask[None, :, None, None], float("-inf"))
        p = s.softmax(dim=-1)
        outs.append(torch.einsum("bnxgcl,bnxel->bncxge", p, vg).reshape(B, n, C, H, Dv))
    o = torch.cat(outs, dim=1).reshape(B, Tp, H, Dv)[:, :T]
    return o.to(v.dtype)


def _reference(q, k, v, causal: bool, scale: float, window: int | None = None) -> torch.Tensor:
    T, S = q.shape[1], k.shape[1]
    if causal and window is not None:
        return _banded(q, k, v, scale, window)
    return _dense(q, k, v, window_mask(T, S, causal, window, q.device), scale)


def _sdpa(q, k, v, causal: bool, scale: float, window: int | None = None) -> torch.Tensor:
    T, S = q.shape[1], k.shape[1]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    if kh.shape[1] != qh.shape[1]:
        kh = _expand_kv(k, q.shape[2]).transpose(1, 2)
        vh = _expand_kv(v, q.shape[2]).transpose(1, 2)
    if window is not None and causal and T * S > DENSE_WINDOW_SCORES:
        return _banded(q, k, v, scale, window, kernel="sdpa")  # O(T W), not a dense [T, S] mask
    if window is not None or (causal and S != T):
        # SDPA's is_causal aligns the mask to the top-left corner; build the bottom-right mask.
        mask = window_mask(T, S, causal, window, q.device)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)
    return o.transpose(1, 2)


def _flash_attn(q, k, v, causal: bool, scale: float, window: int | None = None) -> torch.Tensor:
    from flash_attn import flash_attn_func  # optional extra, CUDA only

    # flash-attn aligns the causal mask bottom-right when S > T, as the reference does;
    # window_size=(left, right) counts keys to the left / right of the diagonal (-1 = unbounded).
    if window is None:
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=(window - 1, 0 if causal else -1))


# ---- FlexAttention ------------------------------------------------------------------------

_FLEX_COMPILED = None
_FLEX_MASKS: OrderedDict = OrderedDict()  # (key, T, S, device, block) -> BlockMask, LRU
_FLEX_MASK_CACHE_SIZE = 32


def flex_unavailable_reason(device: str | torch.device, dtype: torch.dtype | None = None) -> str | None:
    """None when FlexAttention can run on (device, dtype), else why not."""
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    dev = torch.device(device)
    if dev.type == "cuda":
        return None if torch.cuda.is_available() else "needs a CUDA device, and torch sees none"
    if dev.type != "cpu":
        return f"FlexAttention runs on CUDA or CPU, not {dev.type}"
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16):
        return f"FlexAttention on CPU supports float32/bfloat16, not {dtype}"
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
        return "FlexAttention on CPU is compiled by inductor, which needs a C++ compiler (none found)"
    return None


def _flex_fn():
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled callable: dynamo caches one graph per (shape, dtype, mask function).
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def flex_block_mask(
    mask_fn: MaskFn,
    q_len: int,
    kv_len: int,
    device: str | torch.device,
    block_size: int = 128,
    key: Hashable | None = None,
):
    """FlexAttention BlockMask of ``mask_fn(q_idx, kv_idx)`` (query-local and key indices).

    The block structure is found by evaluating ``mask_fn`` on one row of query blocks at a
    time ([block, kv_len] booleans): a block pair is *full* when every in-range entry is True
    and the block has no padding, *partial* when some entry is True; empty pairs are skipped
    by the kernel. ``key`` (hashable, describing the mask) enables the module-level cache;
    without it the mask is rebuilt on every call.
    """
    from torch.nn.attention.flex_attention import BlockMask

    dev = torch.device(device)
    cache_key = None if key is None else (key, q_len, kv_len, str(dev), block_size)
    if cache_key is not None and cache_key in _FLEX_MASKS:
        _FLEX_MASKS.move_to_end(cache_key)
        return _FLEX_MASKS[cache_key]

    nq, nk = -(-q_len // block_size), -(-kv_len // block_size)
    kv_pos = torch.arange(nk * block_size, device=dev)
    kv_in = kv_pos < kv_len
    rows = max(1, (1 << 22) // (block_size * nk * block_size))  # query blocks per evaluation
    partial_rows, full_rows = [], []
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        q_pos = torch.arange(r0 * block_size, r1 * block_size, device=dev)
        q_in = q_pos < q_len
        inside = q_in[:, None] & kv_in[None, :]
        m = mask_fn(q_pos[:, None], kv_pos[None, :]) & inside
        m = m.view(r1 - r0, block_size, nk, block_size)
        inside = inside.view(r1 - r0, block_size, nk, block_size)
        any_ = m.any(dim=3).any(dim=1)
        full = (m.all(dim=3).all(dim=1)) & inside.all(dim=3).all(dim=1)
        partial_rows.append(any_ & ~full)
        full_rows.append(full)
    partial = torch.cat(partial_rows)[None, None]  # [1, 1, nq, nk]
    full = torch.cat(full_rows)[None, None]

    def to_blocks(sel: torch.Tensor):
        num = sel.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num, idx

    kv_num, kv_idx = to_blocks(partial)
    full_num, full_idx = to_blocks(full)

    def mask_mod(b, h, q_idx, kv_idx):
        return mask_fn(q_idx, kv_idx) & (kv_idx < kv_len)

    block_mask = BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
        seq_lengths=(q_len, kv_len),
    )
    if cache_key is not None:
        _FLEX_MASKS[cache_key] = block_mask
        while len(_FLEX_MASKS) > _FLEX_MASK_CACHE_SIZE:
            _FLEX_MASKS.popitem(last=False)
    return block_mask


def _flex(q, k, v, mask_fn: MaskFn | None, key: Hashable | None, scale: float) -> torch.Tensor:
    T, S = q.shape[1], k.shape[1]
    reason = flex_unavailable_reason(q.device, q.dtype)
    if reason:
        raise RuntimeError(f"flex backend unavailable: {reason}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    block_mask = None if mask_fn is None else flex_block_mask(mask_fn, T, S, q.device, key=key)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    o = _flex_fn()(qh, kh, vh, block_mask=block_mask, scale=scale, enable_gqa=kh.shape[1] != qh.shape[1])
    return o.transpose(1, 2)


_MASK_FNS: dict = {}


def _window_mask_fn(T: int, S: int, causal: bool, window: int | None) -> MaskFn | None:
    """The causal / window mask as a FlexAttention mask function; one function object per key."""
    if not causal and window is None:
        return None
    key = ("window", causal, window, S - T)
    if key not in _MASK_FNS:
        off = S - T

        def fn(q_idx, kv_idx):
            pos_q = q_idx + off
            m = kv_idx <= pos_q if causal else kv_idx >= 0
            if window is not None:
                m = m & (pos_q - kv_idx < window)
            return m

        _MASK_FNS[key] = fn
    return _MASK_FNS[key]


_KERNELS = {
    "torch": "torch.softmax_attention",
    "sdpa": "torch.sdpa",
    "flash_attn": "flash_attn.flash_attn_func",
    "flex": "torch.flex_attention",
}


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None, backend: str = "torch",
    window: int | None = None,
) -> Tensor:
    """Softmax attention in [B, T, H, D]; returns o with q's shape (v's last dim).

    ``window=W`` restricts query t to the keys t-W+1 .. t (sliding-window attention).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("softmax_attention expects q, k, v of shape [B, T, H, D]")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (got {window})")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if window is not None and window >= k.shape[1]:
        window = None  # the window covers every key: plain (causal) attention
    backend = resolve_backend(
        "softmax_attention", backend, q, choices=BACKENDS, fused="flash_attn", half_only=True, fallback="sdpa"
    )
    record(f"{_KERNELS[backend]}{'' if window is None else '+window'}")
    if backend == "torch":
        return _reference(q, k, v, causal, scale, window)
    if backend == "sdpa":
        return _sdpa(q, k, v, causal, scale, window)
    if backend == "flash_attn":
        return _flash_attn(q, k, v, causal, scale, window)
    T, S = q.shape[1], k.shape[1]
    fn = _window_mask_fn(T, S, causal, window)
    return _flex(q, k, v, fn, None if fn is None else ("window", causal, window, S - T), scale)


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, mask_fn: MaskFn, scale: float | None = None, backend: str = "torch",
    key: Hashable | None = None,
) -> Tensor:
    """Softmax attention under an arbitrary mask ``mask_fn(q_idx, kv_idx) -> bool`` (True = attend).

    q_idx counts queries from 0 (add S - T inside ``mask_fn`` for bottom-right alignment);
    every query must see at least one key. ``key`` names the mask for the flex caches.
    Backends: ``torch`` (dense masked scores), ``sdpa`` (boolean attn_mask), ``flex`` (block mask).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("masked_attention expects q, k, v of shape [B, T, H, D]")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    T, S = q.shape[1], k.shape[1]
    record(f"{_KERNELS.get(backend, backend)}+mask")
    if backend == "flex":
        return _flex(q, k, v, mask_fn, key, scale)
    if backend not in ("torch", "sdpa"):
        raise ValueError(f"unknown masked_attention backend {backend!r}; choose one of {', '.join(MASKED_BACKENDS)}")
    mask = mask_fn(torch.arange(T, device=q.device)[:, None], torch.arange(S, device=q.device)[None, :])
    if backend == "torch":
        return _dense(q, k, v, mask, scale)
    qh = q.transpose(1, 2)
    kh = _expand_kv(k, q.shape[2]).transpose(1, 2)
    vh = _expand_kv(v, q.shape[2]).transpose(1, 2)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale).transpose(1, 2)
