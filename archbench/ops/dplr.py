"""The diagonal-plus-low-rank (DPLR) recurrence: RWKV-7's generalised delta rule.

Per head, with row vectors q_t, k_t, a_t, b_t in R^{1xK}, v_t in R^{1xV}, log-decays
w_t <= 0 per key channel and state S_t in R^{KxV}:

    S_t = (diag(exp(w_t)) + a_t^T b_t) S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t                                   scale defaults to 1.0 (RWKV-7)

The transition is a diagonal decay plus a rank-one correction that *reads* the state with
b_t (b_t S_{t-1} in R^{1xV} is what the memory returns for key b_t) and *writes* that read-out
back along a_t. The delta rule is w = 0, a = -beta k, b = k (and beta k as the written key);
RWKV-7 (Peng et al., 2025, arXiv 2503.14456) uses a = kappa * lr, b = -kappa with kappa the
normalised removal key and lr its per-channel in-context learning rate, i.e. the transition
diag(w) - (kappa * lr)^T kappa (see ``archbench.mixers.rnn``).

Reference (``backend="torch"``; past 1024 tokens it runs in segments with the state carried
between them, ``archbench.ops.segments``, so its temporaries stay cache-sized):
a chunked WY / UT-transform algorithm. Cut the sequence into
chunks of C tokens; inside a chunk, with S_0 the state entering it, let G_i = w_1 + ... + w_i
be the cumulative log-decay (G_0 = 0, decreasing in i) and u_i = b_i S_{i-1} in R^{1xV}
the rank-one read-out at step i. Unrolling,

    S_i = diag(e^{G_i}) S_0 + sum_{j<=i} diag(e^{G_i - G_j}) (a_j^T u_j + k_j^T v_j)
    u_i = (b_i * e^{G_{i-1}}) S_0 + sum_{j<i} [A_ba]_ij u_j + sum_{j<i} [A_bk]_ij v_j
    o_i = scale ((q_i * e^{G_i}) S_0 + sum_{j<=i} [A_qa]_ij u_j + [A_qk]_ij v_j)

with the decay-weighted Gram matrices (strictly lower for the b rows, lower for the q rows)

    [A_xy]_ij = sum_d x_id y_jd exp(G'_id - G_jd),   G' = G_{i-1} for x = b,  G_i for x = q.

So the read-outs of a chunk solve ONE unit lower-triangular system, (I - A_ba) U = B~ S_0 + A_bk V,
i.e. U = W S_0 + U~ with the UT transform T = (I - A_ba)^{-1}:

    W = T (b * e^{G_{i-1}}),   U~ = T A_bk V                    (per chunk, independent of S_0)

T, W, U~, the Gram matrices and the chunk's own K~^T V (rows of K~ = k_j e^{G_C - G_j}) are
computed for all chunks at once (batched over batch, heads and chunks; T by one batched
unit-triangular solve, ``archbench.ops.wy.UTTransform``). The only sequential work is one pass
over the T/C chunks (``archbench.ops.wy.ChunkPass``, with its written-out backward), two small
batched matmuls and one multiply-add per chunk:

    U = W S + U~;   S <- diag(e^{G_C}) S + A~^T U + K~^T V          (rows of A~ = a_j e^{G_C - G_j})

after which every chunk's output, O = scale (q e^{G} S + A_qa U + A_qk V), is again computed
for all chunks at once. Cost per token O(C (K + V) + K V); memory O(C + (T / C) K V) per head.
The default chunk (32) measured fastest on a 2-core CPU (16 and 64 are 15-20% slower).
Internally the chunks are laid out chunk-major, [N, B, H, C, D], so that flattening the leading
dims gives the [N * B * H, C, D] batches the pass and the batched matmuls read without copies.

Stability. The Gram matrices need exp(G'_i - G_j) per key channel, so they are not a plain
q k^T. When no chunk spans a log-decay range above SAFE_LOG_RANGE (40 in fp32: every ordinary
gate, e.g. RWKV-7's log w > -0.61 per step), they factor through the chunk start,
(x_i e^{G'_i}) . (y_j e^{-G_j}), one matmul each, with every factor within e^{+-40}: no overflow
or underflow, and products are as accurate as the exact pairwise form. Otherwise (strong decays)
they are built by binary recursion over halves (the "secondary chunking" of GLA made
recursive): for rows i in the second half of a block and columns j in the first, factor through
r = G at the last position of the first half,

    exp(G'_i - G_j) = exp(G'_i - r) * exp(r - G_j),   both exponents <= 0,

so each cross-half block is one matmul and nothing overflows (a factor that underflows to 0
multiplies a true weight at least as small); the recursion stops at blocks whose range is safe.
Every other exponent (G_i, G_{i-1}, G_C - G_j) is <= 0. Chunks whose length is not a power of
two are zero-padded (w = 0, q = k = v = a = b = 0: identity steps that change nothing).
Accumulation is in fp32 (fp64 inputs stay fp64); outputs come back in v's dtype, states in fp32.

Fused backend (``backend="fla"``): flash-linear-attention's Triton kernel
``fla.ops.generalized_delta_rule.chunk_dplr_delta_rule(q, k, v, a, b, gk, scale, ...)``
(``fla.ops.rwkv7.chunk_rwkv7`` is a thin wrapper of it). Its recurrence is
S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t: fla's ``a`` reads and its ``b``
writes, so our (a, b) go in as fla's (b, a); gk is our w (natural-log decay); its scale defaults
to K**-0.5, so ours (1.0) is always passed explicitly. Same [B, T, H, D] layout and [B, H, K, V]
state. fla picks its own chunk size (``chunk_size`` is ignored there).
``backend="auto"`` picks fla for CUDA tensors when it is importable, else torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import SAFE_LOG_RANGE, exp_nonpositive, factor_safe
from archbench.ops.dispatch import fla_step, record, step_backend
from archbench.ops.prologue import prologue
from archbench.ops.segments import by_segments
from archbench.ops.wy import ChunkPass, UTTransform

# ---- layout ---------------------------------------------------------------------------


def _chunk_view(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, D] -> a chunk-major [N, B, H, C, D] view (after zero-padding T to a whole number of chunks)."""
    B, T, H, D = x.shape
    N = -(-T // C)
    if N * C != T:
        x = F.pad(x, (0, 0, 0, 0, 0, N * C - T))
    return x.view(B, N, C, H, D).permute(1, 0, 3, 2, 4)


def _pad_chunk(x: torch.Tensor, P: int, dim: int = -2) -> torch.Tensor:
    """Zero-pad the chunk (position) dim ``dim`` of x up to P positions."""
    extra = P - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [0, extra]
    return F.pad(x, pad)


# ---- the reference ----------------------------------------------------------------------


def _tril_mask(P: int, incl: bool, device: torch.device) -> torch.Tensor:
    i = torch.arange(P, device=device)
    return i[:, None] >= i[None, :] if incl else i[:, None] > i[None, :]


def _gram_fast(Xq, Xb, Ya, Yk) -> list[torch.Tensor]:
    """The four Gram matrices when every chunk spans a safe log-decay range (factored through the chunk start).

    Xq = q e^{G}, Xb = b e^{G_{i-1}}, Ya = a e^{-G}, Yk = k e^{-G}, each [..., P, K].
    Returns [A_qa, A_qk, A_ba, A_bk], each [..., P, P], masked to j <= i (q rows) or j < i (b rows).
    """
    P = Xq.shape[-2]
    keep_q, keep_b = _tril_mask(P, True, Xq.device), _tril_mask(P, False, Xq.device)
    A_qa, A_qk = ((Xq @ Y.transpose(-1, -2)).mul_(keep_q) for Y in (Ya, Yk))
    A_ba = (Ya @ Xb.transpose(-1, -2)).mul_(keep_b.T).transpose(-1, -2)  # column-major: what the solve reads
    A_bk = (Xb @ Yk.transpose(-1, -2)).mul_(keep_b)
    return [A_qa, A_qk, A_ba, A_bk]


def _gram_recursive(q, b, a, k, G, thr: float) -> list[torch.Tensor]:
    """The four Gram matrices for any decays, by binary recursion over halves.

    q, b, a, k [..., P, K] (raw), G [..., P, K] the cumulative log-decay; P a power of two.
    A[i, j] = sum_d x_id y_jd exp(G'_id - G_jd) with G' = G for q rows, G_{i-1} for b rows. The
    cross-half blocks of a level factor through r = G at the end of the first half (both exponents
    <= 0, see the module docstring). The recursion stops at the first level whose blocks span a
    log-decay range <= thr; there each block is one masked matmul factored through the block start.
    Returns [A_qa, A_qk, A_ba, A_bk], each [..., P, P].
    """
    *pre, P, K = G.shape
    Gx = F.pad(G[..., :-1, :], (0, 0, 1, 0))  # G_{i-1}: an exact shift
    rows = ((q, G, True), (b, Gx, False))
    cols = (a, k)
    out = [G.new_zeros(*pre, P, P) for _ in range(4)]
    nb, L = 1, P  # nb blocks of L positions
    while True:
        Gb = G.unflatten(-2, (nb, L))  # [..., nb, L, K]
        end = Gb[..., -1, :]  # G at the last position of each block [..., nb, K]
        start = F.pad(end[..., :-1, :], (0, 0, 1, 0))  # G just before each block (0 at the chunk start)
        with torch.no_grad():
            safe = L == 1 or bool((start - end).max() <= thr)
        if safe:
            break
        s = L // 2  # cross-half blocks: rows in second halves, columns in first halves
        split = (nb, 2, s)
        Gl = G.unflatten(-2, split)[..., 0, :, :]  # [..., nb, s, K]
        r = Gl[..., -1:, :]  # G at the end of each first half [..., nb, 1, K]
        dec = exp_nonpositive(r - Gl)  # r - G_j <= 0
        Ys = [Y.unflatten(-2, split)[..., 0, :, :] * dec for Y in cols]
        for x, (X, GX, _) in enumerate(rows):
            Xs = X.unflatten(-2, split)[..., 1, :, :] * exp_nonpositive(GX.unflatten(-2, split)[..., 1, :, :] - r)
            for y, Y in enumerate(Ys):
                view = out[2 * x + y].view(*pre, nb, 2, s, nb, 2, s).diagonal(dim1=-6, dim2=-3)  # [.., 2, s, 2, s, nb]
                view[..., 1, :, 0, :, :].copy_((Xs @ Y.transpose(-1, -2)).movedim(-3, -1))
        nb, L = 2 * nb, s

    # the diagonal blocks, each factored through its start (range <= thr: no overflow)
    if L > 1:
        st = start.unsqueeze(-2)  # [..., nb, 1, K]
        Ys = [Y.unflatten(-2, (nb, L)) * (st - Gb).exp() for Y in cols]
    for x, (X, GX, incl) in enumerate(rows):
        keep = _tril_mask(L, incl, G.device)
        if L > 1:
            Xs = X.unflatten(-2, (nb, L)) * exp_nonpositive(GX.unflatten(-2, (nb, L)) - st)
        for y, Y in enumerate(cols):
            if L == 1:  # single positions: x_i . y_i with weight exp(0) = 1, q rows only
                blk = (X * Y).sum(-1).view(*pre, nb, 1, 1) * float(incl)
            else:
                blk = (Xs @ Ys[y].transpose(-1, -2)).masked_fill(~keep, 0.0)
            view = out[2 * x + y].view(*pre, nb, L, nb, L).diagonal(dim1=-4, dim2=-2)  # [..., L, L, nb]
            view.copy_(blk.movedim(-3, -1))
    return out


def _dplr_torch(q, k, v, w, a, b, scale, initial_state, output_final_state, chunk_size):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BH = B * H
    acc = torch.promote_types(q.dtype, torch.float32)
    C = min(chunk_size, T)
    P = 1 << (C - 1).bit_length()  # chunks zero-padded to a power of two for the recursion
    # chunk-major [N, B, H, P, *] (chunk n of head j is row n * BH + j once flattened)
    qv, kv, av, bv = (_pad_chunk(_chunk_view(x.to(acc), C), P) for x in (q, k, a, b))  # views
    vc = _pad_chunk(_chunk_view(v.to(acc), C), P).contiguous()  # [N, B, H, P, V]
    G = _pad_chunk(_chunk_view(w.to(acc), C), P).cumsum(-2).contiguous()  # G_i <= 0, decreasing
    N = G.shape[0]

    def flat(x: torch.Tensor) -> torch.Tensor:  # [N, B, H, r, c] -> [N * BH, r, c] (a view where possible)
        return x.reshape(N * BH, *x.shape[-2:])

    # decayed rows q_i e^{G_i}, b_i e^{G_{i-1}}
    E = exp_nonpositive(G)  # floored: no subnormal enters a product (ops.decay)
    Xq = E * qv  # (the contiguous operand first: outputs take its [N, B, H, P, K] layout)
    Xb = F.pad(E[..., :-1, :], (0, 0, 1, 0), value=1.0) * bv  # e^{G_{i-1}}: an exact shift
    g_last = G[..., -1:, :]  # [N, B, H, 1, K]
    e_last = exp_nonpositive(g_last)
    if factor_safe(-g_last, acc):  # every chunk's decay range is safe to factor through its start
        # columns a_j e^{-G_j}, k_j e^{-G_j} (<= e^range): each Gram matrix is one matmul
        E_inv = E.reciprocal()
        Ya, Yk = E_inv * av, E_inv * kv
        A_qa, A_qk, A_ba, A_bk = _gram_fast(Xq, Xb, Ya, Yk)
        Ah, Kh = Ya * e_last, Yk * e_last
    else:  # strong decays: the recursion over halves
        to_end = exp_nonpositive(g_last - G)
        Ah, Kh = to_end * av, to_end * kv
        A_qa, A_qk, A_ba, A_bk = _gram_recursive(qv, bv, av, kv, G, SAFE_LOG_RANGE.get(acc, 40.0))
    # rows of Ah, Kh: a_j, k_j decayed to the chunk end, a_j e^{G_P - G_j}, k_j e^{G_P - G_j}

    # UT transform: W = (I - A_ba)^{-1} b e^{G_{i-1}},  U~ = (I - A_ba)^{-1} A_bk V
    ones = A_ba.new_ones(N * BH, P)
    Tinv = UTTransform.apply(flat(A_ba).neg(), ones)  # (I - A_ba)^{-1}: one batched triangular solve
    vf = flat(vc)
    W = torch.bmm(Tinv, flat(Xb))  # [N*BH, P, K]
    Ut = torch.bmm(Tinv, torch.bmm(flat(A_bk), vf))  # [N*BH, P, V]; the pass overwrites it with U
    KV = torch.bmm(flat(Kh).mT, vf)  # the chunk's own k^T v, decayed to its end [N*BH, K, V]

    # the sequential pass over chunks: U = W S + U~;  S <- e^{G_P} S + Ah^T U + Kh^T V
    if initial_state is None:
        S = q.new_zeros(BH, K, V, dtype=acc)
    else:
        S = initial_state.to(acc).reshape(BH, K, V)
    rows = lambda x: x.view(N, BH, *x.shape[-2:])  # noqa: E731
    entering, U, S = ChunkPass.apply(
        Ut, rows(W), rows(flat(Ah).mT), rows(flat(e_last.mT)), S, rows(KV), 1.0
    )  # fmt: skip
    # then every chunk's output at once: O = scale (q e^{G} S + A_qa U + A_qk V)
    O = torch.bmm(flat(A_qk), vf).baddbmm_(flat(Xq), entering.view(N * BH, K, V)).baddbmm_(flat(A_qa), U)
    if scale != 1.0:
        O = O * scale
    o = O.view(N, B, H, P, V)[..., :C, :].permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T].to(v.dtype)
    return o, (S.view(B, H, K, V) if output_final_state else None)


# ---- public API -----------------------------------------------------------------------


def dplr(
    q: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 32, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """S_t = (diag(exp(w_t)) + a_t^T b_t) S_{t-1} + k_t^T v_t,  o_t = scale q_t S_t.

    q, k, w, a, b [B, T, H, K] (w: log-decays <= 0, finite); v [B, T, H, V]; scale defaults
    to 1.0; initial_state [B, H, K, V]. Returns ``(o [B, T, H, V] in v's dtype,
    final_state [B, H, K, V] (fp32, or fp64 for fp64 inputs) or None)``.
    """
    scale, backend = prologue(
        "dplr", q, k, v, initial_state, chunk_size, 1.0 if scale is None else scale, backend,
        w=(w, "B T H K"), a=(a, "B T H K"), b=(b, "B T H K"),
    )  # fmt: skip
    record("fla.chunk_dplr_delta_rule" if backend == "fla" else "torch.dplr_chunked")
    if backend == "fla":
        return _dplr_fla(q, k, v, w, a, b, scale, initial_state, output_final_state)
    B, T, H, K = q.shape
    if T == 0:
        o = v.new_zeros(v.shape)
        if not output_final_state:
            return o, None
        acc = torch.promote_types(q.dtype, torch.float32)
        s = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
        return o, s
    o, S = by_segments(
        lambda q, k, v, w, a, b, s: _dplr_torch(q, k, v, w, a, b, scale, s, True, chunk_size),
        (q, k, v, w, a, b), initial_state, chunk_size,
    )  # fmt: skip
    return o, (S if output_final_state else None)


def dplr_step(
    q: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, state: Tensor,
    scale: float | None = None, backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k, w, a, b [B, H, K], v [B, H, V], state [B, H, K, V] (fp32).

    Returns ``(o [B, H, V] in v's dtype, new_state)``. ``backend="fla"``: fla's
    ``fused_recurrent_dplr_delta_rule`` (a and b swapped into fla's roles, as in ``_dplr_fla``).
    """
    if scale is None:
        scale = 1.0
    if step_backend("dplr_step", backend, q) == "fla":
        from fla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule  # optional, CUDA only

        record("fla.fused_recurrent_dplr_delta_rule")
        fla_a, fla_b = b[:, None].to(q.dtype), a[:, None].to(q.dtype)  # fla's a reads (our b), its b writes (our a)
        return fla_step(fused_recurrent_dplr_delta_rule, q, k, v, state, scale, a=fla_a, b=fla_b, gk=w[:, None].float())
    record("torch.dplr_step")
    acc = torch.promote_types(torch.promote_types(q.dtype, state.dtype), torch.float32)
    out_dtype = v.dtype
    q, k, v, w, a, b, S = (x.to(acc) for x in (q, k, v, w, a, b, state))
    read = torch.einsum("bhk,bhkv->bhv", b, S)  # b_t S_{t-1}
    S = w.exp()[..., None] * S + a[..., :, None] * read[..., None, :] + k[..., :, None] * v[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q, S) * scale
    return o.to(out_dtype), S


def dplr_flops(batch: int, seq_len: int, heads: int, k_dim: int, v_dim: int, chunk_size: int = 32) -> float:
    """Forward FLOPs of the chunked reference (a multiply-add counts 2; matmuls counted dense)."""
    C = max(1, min(chunk_size, seq_len))
    P = 1 << (C - 1).bit_length()
    K, V = k_dim, v_dim
    per_chunk = (
        4 * 2 * P * P * K  # the four decay-weighted Gram matrices
        + P**3  # the UT transform T (a triangular solve against I: P right-hand sides)
        + 2 * P * P * K  # W = T b e^{G}
        + 2 * 2 * P * P * V  # U~ = T (A_bk V)
        + 2 * P * P * V  # A_qk V
        + 2 * K * P * V  # the chunk's own K~^T V
        + 3 * 2 * P * K * V  # the chunk loop: W S, q e^{G} S, A~^T U
        + 2 * P * P * V  # the chunk loop: A_qa U
    )
    n_chunks = -(-seq_len // C)
    return float(batch * heads * n_chunks * per_chunk)


def _dplr_fla(q, k, v, w, a, b, scale, initial_state, output_final_state):
    from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule

    # fla: S_t = diag(exp(gk)) S + b^T (a S) + k^T v  -> fla's a reads (our b), fla's b writes (our a)
    return chunk_dplr_delta_rule(
        q, k, v, a=b, b=a, gk=w, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
