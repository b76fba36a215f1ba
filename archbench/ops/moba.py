"""Mixture of Block Attention (MoBA; Lu et al., 2025, "MoBA: Mixture of Block Attention for
Long-Context LLMs", arXiv 2502.13189): softmax attention over a few key blocks routed per query.

Keys are cut into blocks of l = ``block_size`` tokens (block j holds positions j l .. j l + l - 1).
A query at absolute position p lies in block i_p = p // l. Its gate scores the blocks entirely in
its past by the mean of their keys (the block's "representative"),

    s_j = q_p . mean(k_{j l}, ..., k_{j l + l - 1}),   j < i_p,

and the query attends to its own block causally (keys i_p l .. p, always) plus the ``topk - 1``
past blocks with the highest s_j (all of them when there are fewer; ``topk`` counts the current
block, as in the paper and fla's ``parallel_moba``):

    o_p = sum_{s in K_p} softmax_s(scale q_p . k_s) v_s,   K_p = {i_p l <= s <= p} U (U_{j in top} block j)

Routing is per query head; with grouped-query attention (Hkv divides H) a head routes over its
key/value head's blocks. ``topk = 1`` is block-local attention; topk >= the number of blocks is
causal softmax attention. Routing is a hard top-k: gradients flow through the attention weights,
not through the choice (as in the paper).

Layout q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv]; queries are the last T of S positions.

Backends:
  ``torch``  the reference: the gate over block means, top-k, then the [B, H, C, S'] logits of
             each chunk of C query rows masked to the selected keys, softmax, times V (fp32
             accumulation, fp64 stays fp64). Time O(T S d) (the mask is applied to dense logits).
  ``sdpa``   the same routing; torch SDPA per row chunk with the boolean key mask.
  ``flex``   the same routing; FlexAttention with a per-(batch, head) block mask built from the
             selection (a key block is visited when some query of the query block chose it), and
             a ``mask_mod`` reading the selection, so only the chosen blocks are computed:
             O(T topk l d) (compiled; CUDA, and CPU in fp32/bf16 for the forward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archbench.ops.dispatch import record
from archbench.ops.prologue import check_attention, resolve_backend
from archbench.ops.softmax_attention import _flex_fn, flex_unavailable_reason

BACKENDS = ("torch", "sdpa", "flex")

_ROW_SLAB = 1 << 23  # B * H * C * S elements of one row chunk's logits
FLEX_BLOCK = 128


def _check(q, k, v, block_size: int, topk: int) -> None:
    check_attention("moba", q, k, v)
    if block_size < 1 or topk < 1:
        raise ValueError(f"block_size and topk must be >= 1 (got {block_size}, {topk})")


def moba_select(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int) -> torch.Tensor:
    """The routing: [B, H, T, nb] booleans, True where the query chose past block j (nb = S // l
    complete blocks; the current block is not included: it is always attended)."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    nb, G = S // block_size, H // Hkv
    if nb == 0 or topk == 1:
        return torch.zeros(B, H, T, nb, dtype=torch.bool, device=q.device)
    acc = torch.promote_types(q.dtype, torch.float32)
    with torch.no_grad():
        kmean = k[:, : nb * block_size].to(acc).view(B, nb, block_size, Hkv, D).mean(dim=2)  # [B, nb, Hkv, D]
        gate = torch.einsum("btxgd,bnxd->bxgtn", q.to(acc).view(B, T, Hkv, G, D), kmean).reshape(B, H, T, nb)
        cur = (torch.arange(T, device=q.device) + (S - T)) // block_size  # [T]
        past = torch.arange(nb, device=q.device)[None, :] < cur[:, None]  # [T, nb]
        gate = gate.masked_fill(~past, float("-inf"))
        n = min(topk - 1, nb)
        val, idx = gate.topk(n, dim=-1)
        sel = torch.zeros(B, H, T, nb, dtype=torch.bool, device=q.device)
        sel.scatter_(-1, idx, torch.isfinite(val))
    return sel


def _key_mask(sel: torch.Tensor, r0: int, r1: int, off: int, end: int, block_size: int) -> torch.Tensor:
    """[B, H, r1 - r0, end] booleans: query rows r0..r1 may see key s."""
    nb = sel.shape[-1]
    dev = sel.device
    pos_q = torch.arange(off + r0, off + r1, device=dev)[:, None]
    s = torch.arange(end, device=dev)[None, :]
    own = (s // block_size == pos_q // block_size) & (s <= pos_q)  # [C, end]
    kb = (s // block_size).clamp_max(max(nb - 1, 0))[0]
    if nb == 0:
        return own.expand(sel.shape[0], sel.shape[1], -1, -1)
    routed = sel[:, :, r0:r1].index_select(-1, kb) & (s < nb * block_size)
    return own | routed


def _rows(q, k, v, sel, block_size: int, scale: float, fused: bool) -> torch.Tensor:
    B, T, H, D = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G, off = H // Hkv, S - T
    acc = q.dtype if fused else torch.promote_types(q.dtype, torch.float32)
    C = max(1, min(T, _ROW_SLAB // max(1, B * H * S)))
    outs = []
    for r0 in range(0, T, C):
        r1 = min(T, r0 + C)
        end = off + r1
        mask = _key_mask(sel, r0, r1, off, end, block_size)  # [B, H, C, end]
        if fused:
            qh = q[:, r0:r1].transpose(1, 2)
            kh = k[:, :end].repeat_interleave(G, dim=2).transpose(1, 2)
            vh = v[:, :end].repeat_interleave(G, dim=2).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
            outs.append(o.transpose(1, 2))
            continue
        qg = q[:, r0:r1].to(acc).view(B, r1 - r0, Hkv, G, D)
        s = torch.einsum("btxgd,bsxd->bxgts", qg, k[:, :end].to(acc)) * scale
        s = s.masked_fill(~mask.view(B, Hkv, G, r1 - r0, end), float("-inf"))
        p = s.softmax(dim=-1)
        outs.append(torch.einsum("bxgts,bsxe->btxge", p, v[:, :end].to(acc)).reshape(B, r1 - r0, H, Dv))
    return torch.cat(outs, dim=1).to(v.dtype)


def moba_flex_block_mask(sel: torch.Tensor, block_size: int, T: int, S: int, flex_block: int = FLEX_BLOCK):
    """FlexAttention BlockMask of the routing ``sel`` [B, H, T, nb]: per (batch, head, query block),
    the key blocks that hold a chosen block of some query in it, and the diagonal ones (own block).
    Every visited block is partial: the ``mask_mod`` decides per (query, key)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, H, _, nb = sel.shape
    dev = sel.device
    F_ = flex_block
    nq, nk = -(-T // F_), -(-S // F_)
    off = S - T
    # chosen MoBA blocks per flex query block
    selq = torch.nn.functional.pad(sel, (0, 0, 0, nq * F_ - T)).view(B, H, nq, F_, nb).any(dim=3)  # [B, H, nq, nb]
    visit = torch.zeros(B, H, nq, nk, dtype=torch.bool, device=dev)
    if nb:
        j = torch.arange(nb, device=dev)
        first, last = (j * block_size) // F_, ((j + 1) * block_size - 1) // F_  # flex blocks a MoBA block spans
        for lo_hi in (first, last):
            visit.scatter_reduce_(-1, lo_hi.expand(B, H, nq, nb), selq, reduce="amax")
    # own block: query block Q's positions off + Q F .. off + Q F + F - 1 see their MoBA block's start .. themselves
    qb = torch.arange(nq, device=dev)
    q_lo = off + qb * F_
    q_hi = torch.clamp(off + qb * F_ + F_ - 1, max=S - 1)
    k_lo = (q_lo // block_size) * block_size // F_
    k_hi = q_hi // F_
    kbs = torch.arange(nk, device=dev)
    own = (kbs[None, :] >= k_lo[:, None]) & (kbs[None, :] <= k_hi[:, None])  # [nq, nk]
    visit |= own[None, None]
    num = visit.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~visit).to(torch.int8), dim=-1, stable=True).to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + off
        own_ = (kv_idx // block_size == pos // block_size) & (kv_idx <= pos)
        kb = torch.clamp(kv_idx // block_size, max=max(nb - 1, 0))
        routed = sel[b, h, q_idx, kb] & (kv_idx < nb * block_size) if nb else own_ & False
        return (own_ | routed) & (kv_idx < S)

    return BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=F_, mask_mod=mask_mod, seq_lengths=(T, S))


def _flex(q, k, v, sel, block_size: int, scale: float) -> torch.Tensor:
    reason = flex_unavailable_reason(q.device, q.dtype)
    if reason:
        raise RuntimeError(f"flex backend unavailable: {reason}")
    block_mask = moba_flex_block_mask(sel, block_size, q.shape[1], k.shape[1])
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    o = _flex_fn()(qh, kh, vh, block_mask=block_mask, scale=scale, enable_gqa=kh.shape[1] != qh.shape[1])
    return o.transpose(1, 2)


_KERNELS = {"torch": "torch.moba", "sdpa": "torch.sdpa+moba_mask", "flex": "torch.flex_attention+moba_blocks"}


def moba(
    q: Tensor, k: Tensor, v: Tensor, block_size: int, topk: int, scale: float | None = None, backend: str = "torch"
) -> Tensor:
    """MoBA in [B, T, H, D]: each query attends to its own block (causally) and the ``topk - 1``
    past blocks whose mean key scores highest against it. Returns o [B, T, H, Dv]."""
    resolve_backend("moba", backend, q, choices=BACKENDS)
    _check(q, k, v, block_size, topk)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    record(_KERNELS[backend])
    sel = moba_select(q, k, block_size, topk)
    if backend == "flex":
        return _flex(q, k, v, sel, block_size, scale)
    return _rows(q, k, v, sel, block_size, scale, fused=backend == "sdpa")
