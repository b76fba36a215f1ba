"""Gated linear attention: scalar (``simple_gla``) and per-channel (``gla``) decays.

Per head, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV}, state S_t in R^{KxV} and
log-decays g_t <= 0 (a decay exp(g_t) in (0, 1]):

    simple_gla:  S_t = exp(g_t) S_{t-1} + k_t^T v_t            g: [B, T, H]    (one scalar per head)
    gla:         S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t      g: [B, T, H, K] (one decay per key channel)
    both:        o_t = scale * q_t S_t                         scale defaults to K**-0.5

RetNet is simple_gla with a constant g per head (``simple_gla`` also accepts g of shape [H]);
Mamba2's SSD has the simple_gla form; GLA and HGRN2 are gla. Layout [B, T, H, D].

Reference (``backend="torch"``): the chunked form. Cut the sequence into chunks of C
tokens and let b_t = g_{c0+1} + ... + g_t be the cumulative log-decay from the chunk start
c0 (b_t <= 0, decreasing in t). Unrolling the recurrence from S_{c0} (the state entering the chunk):

    o_t = scale * [ (q_t * exp(b_t)) S_{c0}                                    (inter-chunk)
                    + sum_{c0 < s <= t} (q_t * exp(b_t - b_s)) . k_s  v_s ]    (intra-chunk)
    S_{c0+C} = exp(b_C) * S_{c0} + sum_s (k_s * exp(b_C - b_s))^T v_s          (chunk state)

Every exponent written above is <= 0, so nothing overflows however strong the decays are.
The state is passed from chunk to chunk by a loop over chunks (T / C small [K, V] updates,
vectorised over batch and heads); everything else is batched over chunks. Chunks are taken
in groups of about 2^19 elements per tensor (8 chunks at B=1, H=8, C=64, D=64) so that the
temporaries stay cache-sized: on a CPU, streaming whole-sequence temporaries through memory
costs more than the arithmetic (2x at T=16384).

The intra-chunk term needs care for ``gla``, whose decay differs per key channel, so the
score matrix is not (q k^T) * (decay matrix). When every chunk of a group spans a safe
log-decay range (``archbench.ops.decay``: up to 80 in fp32, true of every ordinary gate; GLA's
log-sigmoid gates / 16 span about 3 over 64 tokens), the weights factor through the middle m of
the chunk's range, exp(b_t - b_s) = exp(b_t - m) exp(m - b_s), and the scores are one masked
matmul of q e^{b - m} and k e^{m - b}: the cost of plain linear attention plus a few elementwise
passes (1.25-1.45x linear attention's forward at T=16384 on the 2-core VM; the recursion below
took 2.2x).
Strong decays would overflow the factors; for them (any group with a chunk spanning more),
forming the pairwise [C, C, K] tensor of exp(b_t - b_s) is exact but costs C*K exponentials per
token. The trick used instead (the "secondary chunking" of Yang et al., 2023, made recursive):
split a block of L positions into halves, and for t in the second half, s in the first, factor through the
cumulative gate r at the last position of the first half,

    exp(b_t - b_s) = exp(b_t - r) * exp(r - b_s),      both exponents <= 0 (s <= r's position < t),

so the cross-half scores are one matmul (q_t * exp(b_t - r)) (k_s * exp(r - b_s))^T with no
overflow possible. Recursing into both halves covers the whole causal triangle with
log2(C) levels and about K log2(C) exponentials per token. The recursion stops at the largest
blocks whose every range is safe to factor through the block's middle (``_leaf_size``; single
positions, weight exp(0) = 1, at worst): each such block is one masked matmul. Exponents of
the exact paths are floored at about -43.7 in fp32 (``archbench.ops.decay.exp_nonpositive``):
such weights are negligible next to the diagonal's 1, and subnormal floats, which the strong
decays would otherwise produce, make CPU arithmetic many times slower (log-sigmoid gates x 2,
chunk ranges about 100: 6.6x linear attention's time at T=16384 before the floor and leaf
blocks, 1.8x after). ``simple_gla`` factors the same way when the range is safe; otherwise it
uses the plain masked [C, C] decay matrix exp(b_t - b_s), masked to s <= t *before* the
exponential.

Accumulation is in fp32 (fp64 inputs stay fp64); outputs come back in v's dtype.

Fused backend (``backend="fla"``): flash-linear-attention's Triton kernels
``fla.ops.simple_gla.chunk_simple_gla`` (g [B,T,H], or ``g_gamma`` [H] for constant decays)
and ``fla.ops.gla.chunk_gla`` (g [B,T,H,K]). Their conventions match ours: [B, T, H, D]
layout, natural-log gates, scale on the read-out defaulting to K**-0.5, state [B, H, K, V].
fla's chunk size is fixed by its kernels (64); ``chunk_size`` is ignored there.
``backend="auto"`` picks fla for CUDA tensors when it is importable, else torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import exp_nonpositive, midpoint_safe
from archbench.ops.dispatch import fla_step, record, step_backend
from archbench.ops.prologue import prologue
from archbench.spec import fla_gated_grad_refused

_GROUP_ELEMS = 1 << 19  # reference: chunks are processed in groups of about this many elements per tensor


# ---- shared helpers -------------------------------------------------------------------


def _chunked(x: torch.Tensor, C: int, acc: torch.dtype) -> torch.Tensor:
    """[B, T, H, *D] -> [B, H, N, C, *D] in ``acc``, zero-padded to a whole number of chunks."""
    B, T, H = x.shape[:3]
    N = -(-T // C)
    x = x.to(acc)
    if N * C != T:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, N * C - T))
    x = x.view(B, N, C, H, *x.shape[3:])
    return x.permute(0, 3, 1, 2, *range(4, x.dim())).contiguous()


def _unchunk(o: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, N, C, V] -> [B, T, H, V]."""
    B, H, N, C, V = o.shape
    return o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]


def _scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    chunk_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked driver shared by ``simple_gla`` and ``gla``.

    ``chunk_fn(q, k, v, b)`` gets a group of chunks [B, H, n, C, *] (q already scaled, b the
    log-decay cumulated from each chunk's start) and returns the intra-chunk output, the keys
    and queries decayed to / from the chunk boundaries, and exp(total chunk log-decay) shaped to
    multiply the state ([B, H, n, 1, 1] or [B, H, n, K, 1]). The state passes from chunk to chunk
    in a loop over chunks. Chunks are processed in groups of about ``_GROUP_ELEMS`` elements per
    tensor, so that temporaries stay cache-sized (on CPU, streaming whole-sequence temporaries
    through memory costs more than the arithmetic).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64
    S = initial_state.to(acc) if initial_state is not None else q.new_zeros(B, H, K, V, dtype=acc)
    if T == 0:
        return v.new_zeros(B, 0, H, V), S
    C = min(chunk_size, T)
    group = max(1, _GROUP_ELEMS // (B * H * C * max(K, V)))
    outs = []
    # split, not slices: a split's backward is one concatenation, a slice's a zero-filled full-size tensor per group
    for qs, ks, vs, gs in zip(*(x.split(group * C, dim=1) for x in (q, k, v, g))):
        qc = _chunked(qs, C, acc) * scale
        kc, vc = _chunked(ks, C, acc), _chunked(vs, C, acc)
        b = _chunked(gs, C, acc).cumsum(3)  # padded steps: g = 0 (no decay), k = 0
        o, k_dec, q_dec, chunk_decay = chunk_fn(qc, kc, vc, b)
        kv = torch.einsum("bhnck,bhncv->bhnkv", k_dec, vc)  # each chunk's contribution to the state
        entering = []
        for kv_n, decay_n in zip(kv.unbind(2), chunk_decay.unbind(2)):  # unbind: one backward node, not one zero-filled copy per chunk
            entering.append(S)
            S = torch.addcmul(kv_n, S, decay_n)
        o = o + torch.einsum("bhnck,bhnkv->bhncv", q_dec, torch.stack(entering, dim=2))
        outs.append(_unchunk(o, qs.shape[1]))
    o = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return o.to(v.dtype), S


# ---- simple GLA: one scalar decay per head and step -----------------------------------


def simple_gla(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] log-decays (or [H]: constant per head, RetNet).
    Returns ``(o [B, T, H, V] in v's dtype, final_state [B, H, K, V] or None)``.
    """
    # auto: not fla where its gated backward is wrong on this GPU/triton (spec.fla_gated_backward)
    fla_takes = lambda _: g.dim() == 1 or not fla_gated_grad_refused(q, k, v, g)  # noqa: E731
    scale, backend = prologue("simple_gla", q, k, v, initial_state, chunk_size, scale, backend, takes=fla_takes)
    B, T, H, K = q.shape
    if g.shape not in ((B, T, H), (H,)):
        raise ValueError(f"simple_gla expects g [B, T, H] = {(B, T, H)} or [H] = {(H,)}; got {tuple(g.shape)}")
    record("fla.chunk_simple_gla" if backend == "fla" else "torch.simple_gla_chunked")
    if backend == "fla":
        return _simple_gla_fla(q, k, v, g, scale, initial_state, output_final_state)

    if g.dim() == 1:
        g = g.expand(B, T, H)
    o, final = _scan(q, k, v, g, scale, initial_state, chunk_size, _simple_gla_chunks)
    return o, (final if output_final_state else None)


def _simple_gla_chunks(q, k, v, b):
    """Intra-chunk part of simple_gla: factored through the middle of each chunk's range when every
    range is safe (as gla's), else (q k^T) * exp(b_t - b_s), masked to s <= t before the exp
    (exponents floored: ``archbench.ops.decay.exp_nonpositive``)."""
    if midpoint_safe(-b[..., -1], b.dtype):
        return _gla_chunks_factored(q, k, v, b[..., None], b[..., -1:, None])
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = exp_nonpositive(b[..., :, None] - b[..., None, :], mask=~causal)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v
    b_last = b[..., -1:]  # [B, H, n, 1]
    k_dec = k * exp_nonpositive(b_last - b)[..., None]
    q_dec = q * exp_nonpositive(b)[..., None]
    return o, k_dec, q_dec, exp_nonpositive(b_last)[..., None]


def simple_gla_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k [B, H, K], v [B, H, V], g [B, H] (or [H]), state [B, H, K, V] (fp32).

    Returns ``(o [B, H, V] in v's dtype, new_state)``. ``backend="fla"``: fla's
    ``fused_recurrent_simple_gla`` (``g_gamma`` for a constant [H] decay).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if step_backend("simple_gla_step", backend, q) == "fla":
        from fla.ops.simple_gla import fused_recurrent_simple_gla  # optional, CUDA only

        record("fla.fused_recurrent_simple_gla")
        gates = {"g_gamma": g.float()} if g.dim() == 1 else {"g": g[:, None].float()}
        return fla_step(fused_recurrent_simple_gla, q, k, v, state, scale, **gates)
    record("torch.simple_gla_step")
    acc = torch.promote_types(state.dtype, torch.float32)
    decay = g.to(acc).exp()
    decay = decay[:, :, None, None] if decay.dim() == 2 else decay[None, :, None, None]
    state = state.to(acc) * decay + torch.einsum("bhk,bhv->bhkv", k.to(acc), v.to(acc))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return o.to(v.dtype), state


def _simple_gla_fla(q, k, v, g, scale, initial_state, output_final_state):
    from fla.ops.simple_gla import chunk_simple_gla

    if g.dim() == 1:  # constant per-head decay: fla's data-independent g_gamma path
        return chunk_simple_gla(
            q, k, v, g_gamma=g.float(), scale=scale,
            initial_state=initial_state, output_final_state=output_final_state,
        )  # fmt: skip
    return chunk_simple_gla(
        q, k, v, g=g.float(), scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )


# ---- GLA: one decay per key channel ---------------------------------------------------


def _gla_intra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intra-chunk output sum_{s <= t in chunk} (q_t * exp(b_t - b_s)) . k_s v_s.

    q, k, b [..., C, K], v [..., C, V], C a power of two; b the cumulative log-decay within
    the chunk. Binary recursion over halves, every exponent <= 0 (see the module docstring),
    stopped at the largest blocks whose every decay range is safe to factor through its middle
    (``_leaf_size``): those are one masked matmul each, as in ``_gla_chunks_factored``.
    Under autograd it runs as one function with a hand-written backward (``_GLAIntra``).
    """
    leaf = _leaf_size(b)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, b)):
        return _GLAIntra.apply(q, k, v, b, leaf)
    return _gla_intra_forward(q, k, v, b, leaf)


def _leaf_size(b: torch.Tensor) -> int:
    """The largest block length (a power of two below the chunk length C, 1 at the least) such that
    every block of every chunk spans a log-decay range safe to factor through its middle.
    b [..., C, K]: the cumulative log-decay from each chunk's start (one host read-back per try)."""
    C = b.shape[-2]
    leaf = max(C // 2, 1)
    while leaf > 1:
        ends = b.unflatten(-2, (C // leaf, leaf))[..., -1, :]  # b at each block's last position
        before = F.pad(ends[..., :-1, :], (0, 0, 1, 0))  # b just before each block (0 at the chunk start)
        if midpoint_safe(before - ends, b.dtype):
            break
        leaf //= 2
    return leaf


def _leaf_factors(b: torch.Tensor, leaf: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For blocks of ``leaf`` positions: e^{b_t - m} and e^{m - b_s}, m the middle of each block's
    range ([..., C/leaf, leaf, K] each, every exponent within half the range)."""
    C = b.shape[-2]
    bb = b.unflatten(-2, (C // leaf, leaf))
    ends = bb[..., -1:, :]
    before = F.pad(ends[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    m = 0.5 * (before + ends)
    return (bb - m).exp(), (m - bb).exp()


def _gla_intra_forward(q, k, v, b, leaf: int = 1) -> torch.Tensor:
    C = q.shape[-2]
    if leaf == 1:
        o = (q * k).sum(-1, keepdim=True) * v  # s = t: weight exp(0) = 1
    else:  # blocks of `leaf` positions: one masked matmul each, factored through the block's middle
        e_q, e_k = _leaf_factors(b, leaf)
        split = (C // leaf, leaf)
        causal = torch.ones(leaf, leaf, dtype=torch.bool, device=q.device).tril()
        P = (q.unflatten(-2, split) * e_q) @ (k.unflatten(-2, split) * e_k).transpose(-1, -2)
        o = (P.masked_fill_(~causal, 0.0) @ v.unflatten(-2, split)).flatten(-3, -2)
    L = 2 * leaf
    while L <= C:
        h = L // 2
        split = (C // L, 2, h)
        qb, kb, bb = q.unflatten(-2, split), k.unflatten(-2, split), b.unflatten(-2, split)
        vb = v.unflatten(-2, split)
        r = bb[..., 0, h - 1 : h, :]  # cumulative gate at the end of the first half: [..., C/L, 1, K]
        qt = qb[..., 1, :, :] * exp_nonpositive(bb[..., 1, :, :] - r)  # t in the second half: b_t - r <= 0
        kt = kb[..., 0, :, :] * exp_nonpositive(r - bb[..., 0, :, :])  # s in the first half:  r - b_s <= 0
        if h == 1:  # 1x1 blocks: a dot product beats a batched matmul of 1x1 matrices
            cross = (qt * kt).sum(-1, keepdim=True) * vb[..., 0, :, :]
        else:
            cross = (qt @ kt.transpose(-1, -2)) @ vb[..., 0, :, :]
        o.unflatten(-2, split)[..., 1, :, :] += cross
        L *= 2
    return o


def _gla_intra_backward(q, k, v, b, do, leaf: int = 1):
    """Gradients of ``_gla_intra`` by the same recursion. With P = (q_t e^{b_t - r}) . (k_s e^{r - b_s})
    the cross-half scores of one level, o_t += P v_s gives dv_s += P^T do_t, dP = do_t v_s^T,
    dq_t += (dP k~_s) e^{b_t - r}, dk_s += (dP^T q~_t) e^{r - b_s}. Every weight is
    q_t.k_s e^{b_t - b_s}, whose derivative in b_t is the weight and in b_s minus it, so the
    gate gradient is db = q * dq - k * dk (zero on the diagonal, where the weight is q_t.k_t).
    The leaf blocks (``leaf`` > 1) are the same with P = (q e^{b - m}) (k e^{m - b})^T, masked."""
    C = q.shape[-2]
    if leaf == 1:
        dov = (do * v).sum(-1, keepdim=True)  # s = t terms: o_t += (q_t . k_t) v_t
        dq, dk, dv = dov * k, dov * q, (q * k).sum(-1, keepdim=True) * do
    else:
        e_q, e_k = _leaf_factors(b, leaf)
        split = (C // leaf, leaf)
        causal = torch.ones(leaf, leaf, dtype=torch.bool, device=q.device).tril()
        qs, ks = q.unflatten(-2, split) * e_q, k.unflatten(-2, split) * e_k
        vb, dob = v.unflatten(-2, split), do.unflatten(-2, split)
        P = (qs @ ks.transpose(-1, -2)).masked_fill_(~causal, 0.0)
        dP = (dob @ vb.transpose(-1, -2)).masked_fill_(~causal, 0.0)
        dv = (P.transpose(-1, -2) @ dob).flatten(-3, -2)
        dq = (dP @ ks).mul_(e_q).flatten(-3, -2)
        dk = (dP.transpose(-1, -2) @ qs).mul_(e_k).flatten(-3, -2)
    L = 2 * leaf
    while L <= C:
        h = L // 2
        split = (C // L, 2, h)
        qb, kb, vb, bb, dob = (t.unflatten(-2, split) for t in (q, k, v, b, do))
        r = bb[..., 0, h - 1 : h, :]
        e_q = exp_nonpositive(bb[..., 1, :, :] - r)  # t in the second half
        e_k = exp_nonpositive(r - bb[..., 0, :, :])  # s in the first half
        qt, kt = qb[..., 1, :, :] * e_q, kb[..., 0, :, :] * e_k
        do1, v0 = dob[..., 1, :, :], vb[..., 0, :, :]
        if h == 1:  # 1x1 blocks: products and dot products, not batched 1x1 matmuls
            P, dP = (qt * kt).sum(-1, keepdim=True), (do1 * v0).sum(-1, keepdim=True)
            dv_add, dq_add, dk_add = P * do1, dP * kt, dP * qt
        else:
            P, dP = qt @ kt.transpose(-1, -2), do1 @ v0.transpose(-1, -2)
            dv_add, dq_add, dk_add = P.transpose(-1, -2) @ do1, dP @ kt, dP.transpose(-1, -2) @ qt
        dv.unflatten(-2, split)[..., 0, :, :] += dv_add
        dq.unflatten(-2, split)[..., 1, :, :] += dq_add.mul_(e_q)
        dk.unflatten(-2, split)[..., 0, :, :] += dk_add.mul_(e_k)
        L *= 2
    return dq, dk, dv, q * dq - k * dk


class _GLAIntra(torch.autograd.Function):
    """``_gla_intra`` as one autograd node: its recursion writes into views in place, which
    autograd would record as dozens of full-size copy-and-zero-fill nodes (3x slower to train)."""

    @staticmethod
    def forward(ctx, q, k, v, b, leaf):
        ctx.save_for_backward(q, k, v, b)
        ctx.leaf = leaf
        return _gla_intra_forward(q, k, v, b, leaf)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        return (*_gla_intra_backward(*ctx.saved_tensors, do.contiguous(), ctx.leaf), None)


def gla(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    q, k, g [B, T, H, K] (g: log-decays per key channel); v [B, T, H, V].
    Returns ``(o [B, T, H, V] in v's dtype, final_state [B, H, K, V] or None)``.
    """
    scale, backend = prologue("gla", q, k, v, initial_state, chunk_size, scale, backend, g=(g, "B T H K"))
    record("fla.chunk_gla" if backend == "fla" else "torch.gla_chunked")
    if backend == "fla":
        from fla.ops.gla import chunk_gla

        return chunk_gla(
            q, k, v, g.float(), scale=scale, initial_state=initial_state, output_final_state=output_final_state
        )

    o, final = _scan(q, k, v, g, scale, initial_state, chunk_size, _gla_chunks)
    return o, (final if output_final_state else None)


def _gla_chunks(q, k, v, b):
    """Intra-chunk part of gla: factored through the middle of each chunk's range when every
    chunk's range is safe (``archbench.ops.decay``), else the exact recursion over halves."""
    b_last = b[..., -1:, :]  # [B, H, n, 1, K]
    if midpoint_safe(-b_last, b.dtype):
        return _gla_chunks_factored(q, k, v, b, b_last)
    return _gla_chunks_recursive(q, k, v, b, b_last)


def _gla_chunks_factored(q, k, v, b, b_last):
    """exp(b_t - b_s) = exp(b_t - m) exp(m - b_s), m = b_last / 2 (the middle of each chunk's
    range): the scores are one masked matmul of q e^{b - m} and k e^{m - b}, as in plain linear
    attention, every factor within e^{+-range/2}. The boundary terms follow with e^{m}:
    q e^{b} = (q e^{b - m}) e^{m} and k e^{b_last - b} = (k e^{m - b}) e^{m}, since b_last - m = m."""
    C = q.shape[-2]
    m = 0.5 * b_last
    q_s = q * (b - m).exp()
    k_s = k * (m - b).exp()
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    o = (q_s @ k_s.transpose(-1, -2)).masked_fill_(~causal, 0.0) @ v
    e_m = m.exp()
    return o, k_s * e_m, q_s * e_m, b_last.exp().transpose(-1, -2)


def _gla_chunks_recursive(q, k, v, b, b_last):
    """The exact recursion (any decays), on chunks zero-padded to a power of two (q = k = v = 0, no decay)."""
    C, K = q.shape[-2:]
    P = 1 << (C - 1).bit_length()
    if P != C:
        pad = (0, 0, 0, P - C)
        b_pad = torch.cat([b, b[..., -1:, :].expand(*b.shape[:-2], P - C, K)], dim=-2)
        o = _gla_intra(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), b_pad)[..., :C, :]
    else:
        o = _gla_intra(q, k, v, b)
    return o, k * exp_nonpositive(b_last - b), q * exp_nonpositive(b), exp_nonpositive(b_last.transpose(-1, -2))


def gla_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k, g [B, H, K], v [B, H, V], state [B, H, K, V] (fp32).

    Returns ``(o [B, H, V] in v's dtype, new_state)``. ``backend="fla"``: fla's ``fused_recurrent_gla``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if step_backend("gla_step", backend, q) == "fla":
        from fla.ops.gla import fused_recurrent_gla  # optional, CUDA only

        record("fla.fused_recurrent_gla")
        return fla_step(fused_recurrent_gla, q, k, v, state, scale, gk=g[:, None].float())
    record("torch.gla_step")
    acc = torch.promote_types(state.dtype, torch.float32)
    state = state.to(acc) * g.to(acc).exp()[..., None] + torch.einsum("bhk,bhv->bhkv", k.to(acc), v.to(acc))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return o.to(v.dtype), state
