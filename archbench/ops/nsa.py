"""Native Sparse Attention (Yuan et al., 2025, "Native Sparse Attention: Hardware-Aligned and
Natively Trainable Sparse Attention", arXiv 2502.11089).

Each query attends through three branches whose outputs are mixed by per-head gates
(sigmoid outputs of the layer, [B, T, H]):

    o_t = g_cmp,t * o_cmp,t + g_slc,t * o_slc,t + g_swa,t * o_swa,t

Blocks are the non-overlapping spans of ``block_size`` = l tokens: block j holds positions
j l .. j l + l - 1. A query at absolute position p lies in block i_p = p // l; the complete
blocks at or before it are j < n_p = (p + 1) // l.

(a) Compressed attention. Each block is compressed to one key and one value (k~_j, v~_j).
    The query attends over the complete blocks only, o_cmp = sum_{j < n_p} softmax_j(s q . k~_j) v~_j,
    and o_cmp = 0 before the first block completes. **Split of work:** compression is the layer's
    (it may be learned; ``archbench.mixers.sparse.NSA`` uses position-weighted pooling + a linear map);
    the op takes already-compressed ``k_cmp``/``v_cmp`` [B, >= S // l, Hkv, D] or, when they are
    None, mean-pools k and v itself (``nsa_compress``, what fla does).
(b) Selected attention. The block importance is the compressed attention probability,
    summed over the query heads of a GQA group (one selection per key/value head, as in the
    paper): I_j = sum_{h in group} p_cmp[h, j]. Block 0 (the first), the current block i_p and
    the previous block i_p - 1 are always selected (the paper's "1 initial + 2 local blocks"; fla
    does the same); the remaining slots take the top-I_j blocks j < i_p. Up to ``block_count`` = n
    blocks (fewer when fewer exist; unused slots are -1). Then full causal attention over the
    tokens of the selected blocks.
(c) Sliding-window attention over the last ``window`` tokens (``window=0``/None: no branch).

Compression and selection blocks have the same size here (l' = l, stride = l), as in fla's
kernels; the paper also allows overlapping compression blocks (l = 32, stride 16, l' = 64).
A gate given as None drops its branch (selection still uses the compressed scores).
Queries are the last T of S keys (decode: T = 1 against a cache of S).

Reference (``backend="torch"``), accumulating in fp32 (fp64 stays fp64):
  * compressed branch: dense scores over the S // l compressed tokens, O(T S / l d);
  * selection: top-k over the [B, T, Hkv, ceil(S / l)] importance;
  * selected branch: *block-major dispatch* (as an MoE routes tokens to experts). The
    (query, key-head, slot) pairs are grouped by their key block (ranks from a cumulative
    count over time, no sort) and cut into pieces of at most ``cap`` pairs of one block; one
    batched matmul over all pieces computes the scores, another the outputs, and the softmax
    over a query's n blocks is merged across pieces as in flash-decoding (per-piece max and
    sum, rescaled to the query's max). Cost O(T H n l d), no Python loop over blocks or time;
    queries are processed in chunks to bound memory. Small problems (decode) use a direct
    gather of every query's selected blocks instead.
  * window branch: ``softmax_attention(window=W, backend="sdpa")``: the banded form (query
    chunks x the C + W - 1 keys that reach them) on torch's SDPA kernel, O(T W d).
``backend="fla"``: fla's Triton kernels (``parallel_nsa_compression``, ``parallel_nsa_topk``,
``parallel_nsa`` for the selected branch) with the window branch on flash-attn (fp16/bf16) or SDPA.
fla requires the GQA group size H / Hkv to be a power of two >= 16 and block_size >= 2 *
next_pow2(block_count).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import record, triton_runs_on
from archbench.ops.prologue import check_attention, resolve_backend
from archbench.ops.softmax_attention import softmax_attention

BACKENDS = ("torch", "fla", "auto")

# pairs x heads x max(block_size, Dv) elements held at once by the dispatch form (query chunking)
_DISPATCH_SLAB = 1 << 25
# below this many gathered key elements the direct gather form is used
_GATHER_MAX = 1 << 21


def nsa_compress(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean pooling of each complete block: [B, S, H, D] -> [B, S // block_size, H, D]."""
    B, S, H, D = x.shape
    n = S // block_size
    return x[:, : n * block_size].reshape(B, n, block_size, H, D).mean(dim=2)


def _check(q, k, v, block_size, block_count):
    check_attention("nsa", q, k, v)
    if block_size < 1 or block_count < 1:
        raise ValueError(f"block_size and block_count must be >= 1 (got {block_size}, {block_count})")


def nsa_compressed_attention(
    q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, block_size: int, kv_len: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch (a): attention over the complete compressed blocks.

    Returns ``(o_cmp [B, T, H, Dv], p [B, T, Hkv, G, S // l])`` with p the attention
    probabilities (zero for blocks not yet complete, all zero before the first block completes).
    """
    B, T, H, D = q.shape
    Hkv = k_cmp.shape[2]
    G, nb = H // Hkv, kv_len // block_size
    k_cmp, v_cmp = k_cmp[:, :nb], v_cmp[:, :nb]
    if nb == 0:  # no complete block yet: no output, no importance
        o = q.new_zeros(B, T, H, v_cmp.shape[-1])
        return o, q.new_zeros(B, T, Hkv, G, 0)
    pos = torch.arange(T, device=q.device) + (kv_len - T)
    visible = torch.arange(nb, device=q.device)[None, :] < ((pos + 1) // block_size)[:, None]  # [T, nb]
    s = torch.einsum("btxgd,bnxd->btxgn", q.view(B, T, Hkv, G, D), k_cmp) * scale
    s = s.masked_fill(~visible[None, :, None, None, :], float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    p = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    o = torch.einsum("btxgn,bnxe->btxge", p, v_cmp)
    return o.reshape(B, T, H, -1), p


def nsa_select_blocks(p_cmp: torch.Tensor, block_size: int, block_count: int, kv_len: int) -> torch.Tensor:
    """Branch (b)'s selection: [B, T, Hkv, n] block indices (-1 = empty slot), best first.

    ``p_cmp`` [B, T, Hkv, G, S // l] are the compressed attention probabilities; a block's
    importance is their sum over the G query heads of the group. Forced blocks, in priority
    order: current (i_p), previous (i_p - 1), first (0); then the top importances among j < i_p.
    """
    B, T, Hkv, G, nb = p_cmp.shape
    nall = -(-kv_len // block_size)
    imp = p_cmp.detach().sum(dim=3)
    if nall > nb:
        imp = F.pad(imp, (0, nall - nb))
    pos = torch.arange(T, device=p_cmp.device) + (kv_len - T)
    cur = pos // block_size  # [T]
    j = torch.arange(nall, device=p_cmp.device)
    score = imp.masked_fill((j[None, :] >= cur[:, None])[None, :, None], float("-inf"))
    # forced blocks outrank every candidate (importances are <= G), in the order current,
    # previous, first; where they coincide any of their values is > G
    forced = torch.stack([cur, (cur - 1).clamp_min(0), torch.zeros_like(cur)], dim=-1)  # [T, 3]
    value = (G + 3.0) - torch.arange(3, dtype=score.dtype, device=score.device)  # G+3, G+2, G+1 (no host copy)
    score.scatter_(-1, forced[None, :, None].expand(B, T, Hkv, 3), value.expand(B, T, Hkv, 3).contiguous())
    n = min(block_count, nall)
    val, idx = score.topk(n, dim=-1)
    idx = torch.where(torch.isfinite(val), idx, torch.full_like(idx, -1))
    if block_count > n:
        idx = F.pad(idx, (0, block_count - n), value=-1)
    return idx


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, S, Hkv, D] -> [B, Hkv, ceil(S / l), l, D] (zero padded)."""
    B, S, Hkv, D = x.shape
    nall = -(-S // block_size)
    x = F.pad(x, (0, 0, 0, 0, 0, nall * block_size - S))
    return x.view(B, nall, block_size, Hkv, D).permute(0, 3, 1, 2, 4)


def _selected_gather(q, kb, vb, idx, block_size, kv_len, scale):
    """Branch (b) by gathering every query's selected blocks: [B, T, Hkv, n, l, D] keys."""
    B, T, H, D = q.shape
    Hkv = kb.shape[1]
    G = H // Hkv
    valid = idx >= 0
    idc = idx.clamp_min(0)
    bi = torch.arange(B, device=q.device)[:, None, None, None]
    hi = torch.arange(Hkv, device=q.device)[None, None, :, None]
    kg, vg = kb[bi, hi, idc], vb[bi, hi, idc]  # [B, T, Hkv, n, l, D]
    s = torch.einsum("btxgd,btxnld->btxgnl", q.view(B, T, Hkv, G, D), kg) * scale
    pos = torch.arange(T, device=q.device) + (kv_len - T)
    kpos = idc[..., None] * block_size + torch.arange(block_size, device=q.device)  # [B, T, Hkv, n, l]
    mask = valid[..., None] & (kpos <= pos[None, :, None, None, None])
    s = s.masked_fill(~mask[:, :, :, None], float("-inf"))
    p = s.flatten(-2).softmax(dim=-1).view_as(s)
    o = torch.einsum("btxgnl,btxnle->btxge", p, vg)
    return o.reshape(B, T, H, -1)


def _selected_dispatch(q, kb, vb, idx, block_size, kv_len, scale):
    """Branch (b), block-major: each selected key block meets all the queries that chose it.

    The (query, key-head, slot) pairs are sorted by key block and cut into *pieces* of at most
    ``cap`` pairs of one block each; one batched matmul over all pieces then computes every
    score ([pieces, cap * G, d] x [pieces, d, l]), with no Python loop over blocks. The softmax
    over a query's n blocks is split as in flash-decoding: each pair yields its own max m, sum
    of exponentials z and unnormalised output u = sum exp(s - m) v, and the pairs of a query
    are merged with weights exp(m - M), M the query's max.
    """
    B, T, H, D = q.shape
    Hkv, nall, n, Dv = kb.shape[1], kb.shape[2], idx.shape[-1], vb.shape[-1]
    G, off, l = H // Hkv, kv_len - T, block_size
    dev = q.device
    n_groups = B * Hkv * nall
    kf = kb.reshape(n_groups, l, D).transpose(1, 2)  # [groups, D, l]
    # values with a ones column: the same matmul yields the softmax denominator
    vf = torch.cat([vb.reshape(n_groups, l, Dv), vb.new_ones(n_groups, l, 1)], dim=-1)
    qf = q.reshape(B * T * Hkv, G, D) * scale
    valid = idx >= 0
    idc = idx.clamp_min(0)
    # rank of each pair among the pairs of its key block (queries in time order), by a
    # cumulative count over time of the [B, T, Hkv, blocks] selection map: no sort needed
    hits = torch.zeros(B, T, Hkv, nall, dtype=torch.int32, device=dev).scatter_add_(-1, idc, valid.to(torch.int32))
    csum = torch.cumsum(hits.permute(0, 2, 3, 1).contiguous(), dim=-1, dtype=torch.int32)  # [B, Hkv, nall, T]
    counts = csum[..., -1].reshape(-1).long()  # pairs per (b, h, block) group
    pairs = valid.reshape(-1).nonzero().squeeze(1)  # flat (b, t, h, slot) of the used slots
    row = pairs // n  # flat (b, t, h): the query group of each pair
    blk = idc.reshape(-1)[pairs]
    group = (row // (T * Hkv) * Hkv + row % Hkv) * nall + blk  # flat (b, h, block)
    rank = csum.view(-1, T)[group, (row // Hkv) % T].long() - 1
    P, R = row.numel(), B * T * Hkv  # pairs; query rows (row R is a dummy for padding)
    cap = int(min(128, max(16, 1 << max(0, (P // max(1, int((counts > 0).sum())) - 1).bit_length()))))
    n_pieces = (counts + cap - 1) // cap
    piece_base = torch.cumsum(n_pieces, 0) - n_pieces
    NP = int(n_pieces.sum())
    rows = torch.full((NP, cap), R, device=dev, dtype=torch.long)  # query row of every piece slot
    rows[piece_base[group] + rank // cap, rank % cap] = row
    piece_group = torch.repeat_interleave(torch.arange(n_groups, device=dev), n_pieces)
    qbuf = torch.cat([qf, qf.new_zeros(1, G, D)])[rows]  # [NP, cap, G, D]
    pos = torch.where(rows < R, (rows // Hkv) % T + off, kv_len)  # padding sees every key
    kpos = (piece_group % nall)[:, None] * l + torch.arange(l, device=dev)  # [NP, l]
    sc = torch.bmm(qbuf.view(NP, cap * G, D), kf[piece_group]).view(NP, cap, G, l)
    # in-place ops on fresh intermediates (none is saved for backward): fewer large allocations
    sc = sc.masked_fill_((kpos[:, None, :] > pos[:, :, None])[:, :, None, :], float("-inf"))
    with torch.no_grad():
        m = sc.amax(dim=-1, keepdim=True)  # finite: key j*l <= pos is always visible
    e = sc.sub_(m).exp_()
    u = torch.bmm(e.view(NP, cap * G, l), vf[piece_group]).view(NP, cap, G, Dv + 1)
    flat = rows.view(-1)
    M = torch.full((R + 1, G, 1), float("-inf"), dtype=m.dtype, device=dev)
    M = M.scatter_reduce(0, flat[:, None, None].expand(flat.numel(), G, 1), m.view(-1, G, 1), reduce="amax")
    w = torch.exp(m - M[rows])  # [NP, cap, G, 1]
    o = torch.zeros(R + 1, G, Dv + 1, dtype=u.dtype, device=dev).index_add(0, flat, u.mul_(w).view(-1, G, Dv + 1))
    o, Z = o[:R, :, :Dv], o[:R, :, Dv:]
    return (o / Z).view(B, T, H, Dv)


def nsa_selected_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    block_size: int,
    scale: float,
    impl: str = "auto",
) -> torch.Tensor:
    """Branch (b): causal attention of each query over the tokens of its selected blocks.

    ``block_indices`` [B, T, Hkv, n] (-1 = empty slot); ``impl`` is "gather", "dispatch" or "auto".
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    n = block_indices.shape[-1]
    kb, vb = _blocks(k, block_size), _blocks(v, block_size)
    if impl == "auto":
        impl = "gather" if B * T * Hkv * n * block_size * D <= _GATHER_MAX else "dispatch"
    if impl == "gather":
        return _selected_gather(q, kb, vb, block_indices, block_size, S, scale)
    if impl != "dispatch":
        raise ValueError(f"unknown impl {impl!r}; choose gather, dispatch or auto")
    per_query = H * n * block_size
    chunk = max(1, _DISPATCH_SLAB // (B * per_query))
    outs = []
    # query chunks, only to bound memory (split: one backward concatenation, not a zero-filled copy per chunk)
    for t0, qs, idx in zip(range(0, T, chunk), q.split(chunk, dim=1), block_indices.split(chunk, dim=1)):
        t1 = t0 + qs.shape[1]
        # queries t0..t1-1 are the last (t1 - t0) of kv_len S - (T - t1) keys
        kv_len = S - (T - t1)
        outs.append(_selected_dispatch(qs, kb, vb, idx, block_size, kv_len, scale))
    return torch.cat(outs, dim=1)


def _nsa_torch(q, k, v, g_cmp, g_slc, g_swa, block_size, block_count, window, scale, k_cmp, v_cmp):
    acc = torch.promote_types(q.dtype, torch.float32)
    S = k.shape[1]
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    o_cmp, p = nsa_compressed_attention(qa, k_cmp.to(acc), v_cmp.to(acc), block_size, S, scale)
    o = torch.zeros_like(o_cmp)
    if g_cmp is not None:
        o = o + g_cmp.to(acc)[..., None] * o_cmp
    if g_slc is not None:
        idx = nsa_select_blocks(p, block_size, block_count, S)
        o_slc = nsa_selected_attention(qa, ka, va, idx, block_size, scale)
        o = o + g_slc.to(acc)[..., None] * o_slc
    if window and g_swa is not None:
        # the banded form on torch's fused SDPA kernel (same function as the einsum reference)
        o_swa = softmax_attention(qa, ka, va, causal=True, scale=scale, window=window, backend="sdpa")
        o = o + g_swa.to(acc)[..., None] * o_swa
    return o.to(v.dtype)


def fla_shape_reason(n_heads: int, n_kv_heads: int, block_size: int, block_count: int) -> str | None:
    """None when fla's NSA kernels take these shapes, else why not (also the NSA mixer's
    ``Backend.limits``)."""
    G = n_heads // n_kv_heads
    if G < 16 or G & (G - 1):
        return (
            f"fla's NSA kernels need a GQA group n_heads / n_kv_heads that is a power of 2 >= 16 "
            f"(got {n_heads} / {n_kv_heads} = {G})"
        )
    if block_count < 3:
        return (
            f"fla's NSA top-k always takes the first and the two latest blocks and, with fewer than 3 slots "
            f"(block_count {block_count}), keeps an arbitrary two of them"
        )
    slots = 1 << (block_count - 1).bit_length()
    if block_size < 2 * slots:
        return f"fla's NSA top-k needs block_size >= 2 * next_pow2(block_count) = {2 * slots} (got {block_size})"
    return None


def fla_unavailable_reason(q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int) -> str | None:
    """None when fla's NSA kernels can run on these tensors and shapes, else why not."""
    if not triton_runs_on(q):
        return "fla's NSA kernels need CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU interpreter)"
    if importlib.util.find_spec("fla") is None:
        return "fla is not installed"
    return fla_shape_reason(q.shape[2], k.shape[2], block_size, block_count)


def _nsa_fla(q, k, v, g_cmp, g_slc, g_swa, block_size, block_count, window, scale, k_cmp, v_cmp):
    from fla.ops.nsa.compression import parallel_nsa_compression
    from fla.ops.nsa.parallel import parallel_nsa, parallel_nsa_topk

    reason = fla_unavailable_reason(q, k, block_size, block_count)
    if reason:
        raise ValueError(f"nsa backend 'fla' cannot run: {reason}")
    S = k.shape[1]
    # fla reads ceil(S / l) compressed rows per sequence (only the complete ones are visible)
    nall = -(-S // block_size)
    k_cmp = F.pad(k_cmp[:, :nall], (0, 0, 0, 0, 0, nall - min(nall, k_cmp.shape[1]))).to(q.dtype).contiguous()
    v_cmp = F.pad(v_cmp[:, :nall], (0, 0, 0, 0, 0, nall - min(nall, v_cmp.shape[1]))).to(q.dtype).contiguous()
    o_cmp, lse = parallel_nsa_compression(q=q, k=k_cmp, v=v_cmp, TK=S, block_size=block_size, scale=scale)
    idx = parallel_nsa_topk(
        q=q, k=k_cmp, lse=lse, TK=S, block_counts=block_count, block_size=block_size, scale=scale
    )
    idx = idx[..., :block_count].contiguous()  # fla rounds the slot count up to a power of 2
    o = torch.zeros_like(o_cmp)
    if g_slc is not None:
        o_slc = parallel_nsa(q, k, v, block_indices=idx, block_counts=block_count, block_size=block_size, scale=scale)
        o = o + g_slc[..., None].to(o.dtype) * o_slc
    if g_cmp is not None:
        o = o + g_cmp[..., None].to(o.dtype) * o_cmp
    if window and g_swa is not None:  # flash-attn for fp16/bf16 CUDA tensors when installed, else SDPA
        o = o + g_swa[..., None].to(o.dtype) * softmax_attention(
            q, k, v, causal=True, scale=scale, window=window, backend="auto"
        )
    return o.to(v.dtype)


def nsa(
    q: Tensor, k: Tensor, v: Tensor, g_cmp: Tensor | None, g_slc: Tensor | None, g_swa: Tensor | None,
    block_size: int = 64, block_count: int = 16, window: int | None = 512, scale: float | None = None,
    k_cmp: Tensor | None = None, v_cmp: Tensor | None = None, backend: str = "torch",
) -> Tensor:
    """Native sparse attention; q [B, T, H, D], k/v [B, S, Hkv, D] (S >= T), gates [B, T, H].

    Returns o [B, T, H, Dv]. ``k_cmp``/``v_cmp`` [B, >= S // block_size, Hkv, D]: the compressed
    blocks (default: mean pooling of k and v). ``window`` 0/None drops the sliding branch.
    """
    _check(q, k, v, block_size, block_count)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if (k_cmp is None) != (v_cmp is None):
        raise ValueError("give both k_cmp and v_cmp, or neither")
    if k_cmp is None:
        k_cmp, v_cmp = nsa_compress(k, block_size), nsa_compress(v, block_size)
    nb = k.shape[1] // block_size
    if k_cmp.shape[1] < nb or v_cmp.shape[1] < nb:
        raise ValueError(f"k_cmp/v_cmp need >= {nb} compressed blocks (got {k_cmp.shape[1]}, {v_cmp.shape[1]})")
    fla_takes = fla_shape_reason(q.shape[2], k.shape[2], block_size, block_count) is None
    backend = resolve_backend("nsa", backend, q, choices=BACKENDS, takes=fla_takes)  # auto: never the interpreter
    record("torch.nsa" if backend == "torch" else "fla.parallel_nsa")
    if backend == "fla":
        return _nsa_fla(q, k, v, g_cmp, g_slc, g_swa, block_size, block_count, window, scale, k_cmp, v_cmp)
    return _nsa_torch(q, k, v, g_cmp, g_slc, g_swa, block_size, block_count, window, scale, k_cmp, v_cmp)
