"""Log-linear attention: a Fenwick-tree hierarchy of linear-attention states, O(T log T).

Linear attention compresses the whole past into one state; softmax attention keeps every token.
Log-linear attention (Guo, Yang, Goel, Xing, Dao & Kim, 2025, "Log-Linear Attention",
arXiv 2506.04761) keeps O(log T) states: the prefix [0, t) of query t is split into the
Fenwick-tree buckets of t (powers of two, finest near t), each bucket compressed into its own
state and read with its own data-dependent weight lambda_t^(l) >= 0. Per head, with q_t, k_t in
R^{1xK}, v_t in R^{1xV}, a log-decay g_t <= 0 (Mamba-2's scalar) and G_t = g_1 + ... + g_t:

    o_t = scale * sum_{s <= t} lambda_t^(lev(t, s)) e^{G_t - G_s} (q_t . k_s) v_s
    lev(t, t) = 0,   lev(t, s) = bit_length(t XOR s)  (s < t; positions counted from 0)

so level l >= 1 holds the 2^(l-1) tokens just before t rounded down to a multiple of 2^(l-1), when
bit l-1 of t is set. With every lambda = 1 it is Mamba-2 (``ssd``) / simple GLA. Levels in use
grow as log2(T): a query at position t reads bit_length(t) + 1 of them, so ``level_scales`` needs
L >= bit_length(T - 1) + 1 (17 levels cover 65536 tokens).

Recurrent form (``log_linear_attention_step``): one state per level, S^(l) [K, V], decayed to the
present. Entering token t >= 1 with z the number of trailing one bits of t - 1 (binary increment):

    S^(l) <- e^{g_t} S^(l);   S^(z+1) <- S^(0) + ... + S^(z);   S^(0..z) <- 0;   S^(0) <- k_t^T v_t
    o_t = scale * sum_l lambda_t^(l) q_t S^(l)

(level z+1 is empty before the merge, since bit z of t - 1 is 0). The carried state is the stack
[B, H, L, K, V] after the last token and the number of tokens consumed (``offset``), which fixes
where the next merge happens.

Chunked reference (``backend="torch"``): chunks of C = 2^c tokens aligned to multiples of C
(``chunk_size`` rounded down to a power of two). For t in a chunk starting at t0, levels 0..c
cover [t0, t] (bits below c are t - t0's) and levels > c cover [0, t0), the same buckets for the
whole chunk. So, with G the cumulative decay from the chunk start,

    intra  o_t += scale sum_{t0 <= s <= t} lambda_t^(bit_length((t - t0) XOR (s - t0))) e^{G_t - G_s} (q_t . k_s) v_s
    inter  o_t += scale e^{G_t} sum_{l > c} lambda_t^(l) q_t P^(l)

the intra part for all chunks at once (the masked [C, C] score matrix of SSD, times the level
weights gathered from a [C, C] table), the inter part in a loop over chunks that carries the
level states P: after chunk n, P <- e^{G_C} P, then the merge above with the chunk's whole
contribution (sum_s e^{G_C - G_s} k_s^T v_s) as the merged levels 0..c. Tokens before the first
aligned chunk boundary and after the last go through the recurrent form (fewer than C each);
the final state's levels 0..c are rebuilt exactly from the last chunk. Cost per token
O(C (K + V) + L' K V), L' = log2(T / C) active levels: the inter read-out is L' times linear
attention's. Accumulation in fp32 (fp64 stays fp64).

Fused backend (``backend="fla"``): flash-linear-attention's ``fla.ops.log_linear_attn.
chunk_log_linear_attn`` (same layout, GQA by q/k groups; T < 2^17; chunk 64; K a multiple of 64 and V a power of two,
which the adapter meets by zero-padding, exactly). fla keeps its state as a ``LogLinearAttentionState`` with its own layout,
so the adapter takes no initial state and returns no final state (prefill with state uses the
reference); decode uses the reference step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.decay import exp_nonpositive
from archbench.ops.dispatch import record
from archbench.ops.prologue import check_chunk_size, resolve_backend

FLA_BLOCK_K = 64  # chunk_log_linear_attn: K a multiple of 64 and V a power of two (the adapter pads)
FLA_MAX_LEN = 1 << 17  # and fewer than 2^17 tokens


def levels_needed(length: int) -> int:
    """Levels a sequence of ``length`` tokens reads: bit_length(length - 1) + 1 (1 for length <= 1)."""
    return max(length - 1, 0).bit_length() + 1


def _trailing_ones(t: int) -> int:
    return (~t & (t + 1)).bit_length() - 1


def _check(q, k, v, g, level_scales, initial_state, offset, chunk_size):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:2] != q.shape[:2]:
        raise ValueError("log_linear_attention expects q, k [B, T, G, K] and v [B, T, H, V]")
    B, T, G, K = q.shape
    H, V = v.shape[2:]
    if H % G:
        raise ValueError(f"log_linear_attention: value heads H={H} must be a multiple of q/k groups G={G}")
    if g.shape != (B, T, H):
        raise ValueError(f"log_linear_attention expects g [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if level_scales.dim() != 4 or level_scales.shape[:3] != (B, T, H):
        raise ValueError(f"log_linear_attention expects level_scales [B, T, H, L], got {tuple(level_scales.shape)}")
    L = level_scales.shape[-1]
    if L < levels_needed(offset + T):
        raise ValueError(
            f"log_linear_attention: {offset + T} tokens need {levels_needed(offset + T)} levels, level_scales has {L}; "
            "give the layer more levels or shorten the sequence"
        )
    if initial_state is not None and initial_state.shape != (B, H, L, K, V):
        raise ValueError(
            f"log_linear_attention expects initial_state [B, H, L, K, V] = {(B, H, L, K, V)}, got {tuple(initial_state.shape)}"
        )
    if offset < 0 or (offset > 0 and initial_state is None):
        raise ValueError(f"log_linear_attention: offset {offset} needs an initial_state (and must be >= 0)")
    check_chunk_size(chunk_size)


def _merge(S: torch.Tensor, z: int) -> torch.Tensor:
    """Levels 0..z of S [M, L, K, V] summed into level z + 1 (empty before), levels 0..z cleared."""
    L = S.shape[1]
    if z + 1 >= L:
        raise ValueError(f"log_linear_attention: the state needs level {z + 1}, it has {L} levels; give the layer more levels")
    return torch.cat([torch.zeros_like(S[:, : z + 1]), S[:, : z + 1].sum(1, keepdim=True), S[:, z + 2 :]], 1)


def _token(S, t, q, k, v, g, lam, scale):
    """The recurrent form for token t on states S [M, L, K, V]; q, k [M, K], v [M, V], g [M], lam [M, L]."""
    S = S * g.exp()[:, None, None, None]
    if t > 0:
        S = _merge(S, _trailing_ones(t - 1))
    S = torch.cat([(k[:, :, None] * v[:, None, :])[:, None], S[:, 1:]], 1)
    o = torch.einsum("mk,mlkv,ml->mv", q, S, lam) * scale
    return o, S


def _level_table(C: int, device) -> torch.Tensor:
    """lev(p, r) = bit_length(p XOR r) for positions p, r of an aligned chunk of C tokens ([C, C] int64)."""
    p = torch.arange(C, device=device)
    x = p[:, None] ^ p[None, :]
    return torch.where(x > 0, torch.floor(torch.log2(x.clamp(min=1).double())).long() + 1, 0)


def _reference(q, k, v, g, lam, scale, S, offset, chunk_size):
    """q, k [M, T, K], v [M, T, V], g [M, T], lam [M, T, L] (M = B*H) in acc; S [M, L, K, V]. -> (o, S)."""
    M, T, K = q.shape
    V, L = v.shape[-1], lam.shape[-1]
    C = 1 << (min(chunk_size, max(T, 1)).bit_length() - 1)  # a power of two
    c = C.bit_length() - 1
    head = min(T, (-offset) % C)  # tokens up to the first aligned chunk boundary
    n_chunks = (T - head) // C
    outs = []
    for t in range(head):
        o, S = _token(S, offset + t, q[:, t], k[:, t], v[:, t], g[:, t], lam[:, t], scale)
        outs.append(o[:, None])
    if n_chunks:
        a, b = head, head + n_chunks * C
        qc, kc, vc = (x[:, a:b].reshape(M, n_chunks, C, -1) for x in (q, k, v))
        lc = lam[:, a:b].reshape(M, n_chunks, C, L)
        gam = g[:, a:b].reshape(M, n_chunks, C).cumsum(-1)  # G from each chunk's start
        incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        decay = exp_nonpositive(gam[..., :, None] - gam[..., None, :], mask=~incl)
        weight = torch.gather(lc, -1, _level_table(C, q.device).expand(M, n_chunks, C, C))  # lambda_t^(lev(t, s))
        intra = ((qc @ kc.mT) * decay * weight) @ vc * scale
        e_gam = exp_nonpositive(gam)[..., None]  # e^{G_t}
        k_rest = kc * exp_nonpositive(gam[..., -1:] - gam)[..., None]  # e^{G_C - G_s} k_s
        chunk_sum = k_rest.mT @ vc  # [M, n, K, V]
        decays = exp_nonpositive(gam[..., -1])[:, :, None, None, None]  # e^{G_C} of each chunk
        t0 = offset + head
        if t0 > 0:  # entering the first chunk: the merge of binary increment t0 - 1 -> t0
            S = _merge(S, _trailing_ones(t0 - 1))
        hi, inter = S[:, c + 1 :], []  # the levels above c (the buckets of [0, t0)); those <= c are empty here
        for n in range(n_chunks):
            if n > 0:  # entering chunk n: levels 0..c hold chunk n - 1 (its sum), merged with levels c+1..z into z+1
                j = _trailing_ones(t0 - 1) - c  # level z + 1 is hi[:, j]
                if j >= hi.shape[1]:
                    raise ValueError(f"log_linear_attention: the state needs level {j + c + 1}; give the layer more levels")
                merged = chunk_sum[:, n - 1] + hi[:, :j].sum(1)
                hi = torch.cat([torch.zeros_like(hi[:, :j]), merged[:, None], hi[:, j + 1 :]], 1)
            q_lvl = (lc[:, n, :, c + 1 :, None] * (qc[:, n] * e_gam[:, n])[:, :, None, :]).flatten(2)  # [M, C, L'K]
            inter.append(torch.bmm(q_lvl, hi.flatten(1, 2)) * scale)
            hi = hi * decays[:, n]  # after the chunk every state decays by e^{G_C}
            t0 += C
        outs.append((intra + torch.stack(inter, 1)).reshape(M, n_chunks * C, V))
        # the final state's levels 0..c exactly, as the recurrent form holds them after the chunk's last token
        onehot = F.one_hot(_level_table(C, q.device)[-1], c + 1).to(q.dtype)  # [C, c+1]: the level of each token
        exact = torch.einsum("rl,mrk,mrv->mlkv", onehot, k_rest[:, -1], vc[:, -1])
        S = torch.cat([exact, hi], 1)
    for t in range(head + n_chunks * C, T):
        o, S = _token(S, offset + t, q[:, t], k[:, t], v[:, t], g[:, t], lam[:, t], scale)
        outs.append(o[:, None])
    o = torch.cat(outs, 1) if outs else v.new_zeros(M, 0, V)
    return o, S


def log_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, level_scales: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, offset: int = 0, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """Log-linear attention with Mamba-2 decay (module docstring).

    q, k [B, T, G, K]; v [B, T, H, V] (H a multiple of G: value heads share q/k groups); g [B, T, H]
    log-decays; level_scales [B, T, H, L] (lambda >= 0). ``initial_state`` [B, H, L, K, V] and
    ``offset`` (tokens before this call) continue a sequence. Returns
    ``(o [B, T, H, V] in v's dtype, final_state [B, H, L, K, V] in fp32 (fp64 stays) or None)``.
    """
    _check(q, k, v, g, level_scales, initial_state, offset, chunk_size)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    # fla's adapter carries no state and takes fewer than 2^17 tokens
    fla_takes = initial_state is None and not output_final_state and q.shape[1] < FLA_MAX_LEN
    backend = resolve_backend("log_linear_attention", backend, q, takes=fla_takes)
    record("fla.chunk_log_linear_attn" if backend == "fla" else "torch.log_linear_attention_chunked")
    if backend == "fla":
        return _fla(q, k, v, g, level_scales, scale, initial_state, output_final_state)
    B, T, G, K = q.shape
    H, V = v.shape[2:]
    L = level_scales.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)

    def heads(x: torch.Tensor) -> torch.Tensor:  # [B, T, H or G, *] -> [B*H, T, *] in acc
        x = x.to(acc)
        if x.shape[2] != H:
            x = x.repeat_interleave(H // x.shape[2], dim=2)
        return x.movedim(2, 1).reshape(B * H, T, *x.shape[3:])

    S = initial_state.to(acc).reshape(B * H, L, K, V) if initial_state is not None else q.new_zeros(B * H, L, K, V, dtype=acc)
    used = levels_needed(offset + T)  # levels above it stay empty: leave them out of every pass
    lam = heads(level_scales[..., :used])
    o, S_used = _reference(heads(q), heads(k), heads(v), heads(g[..., None])[..., 0], lam, scale, S[:, :used], offset, chunk_size)
    o = o.view(B, H, T, V).transpose(1, 2).to(v.dtype)
    if not output_final_state:
        return o, None
    return o, torch.cat([S_used, S[:, used:]], 1).view(B, H, L, K, V)


def _fla(q, k, v, g, level_scales, scale, initial_state, output_final_state):
    if initial_state is not None or output_final_state:
        raise ValueError("fla's chunk_log_linear_attn adapter carries no state; use backend='torch' for prefill with state")
    if q.shape[1] >= FLA_MAX_LEN:
        raise ValueError(f"fla's chunk_log_linear_attn takes fewer than {FLA_MAX_LEN} tokens, got {q.shape[1]}")
    from fla.ops.log_linear_attn import chunk_log_linear_attn  # optional, CUDA (or Triton's interpreter)

    # The kernel wants K a multiple of 64 and V a power of two: zero channels change no q . k and
    # no used output channel, so pad and slice (exact).
    K, V = q.shape[-1], v.shape[-1]
    pad_k, pad_v = -K % FLA_BLOCK_K, (1 << (V - 1).bit_length()) - V
    q, k = (F.pad(x, (0, pad_k)) for x in (q, k.to(q.dtype)))
    o, _ = chunk_log_linear_attn(
        q, k, F.pad(v.to(q.dtype), (0, pad_v)), g.float(), level_scales.to(q.dtype), scale=scale,
    )  # fmt: skip
    return o[..., :V].to(v.dtype), None


def log_linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, level_scales: Tensor, state: Tensor, offset: int,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step at position ``offset`` (tokens already consumed): q, k [B, G, K], v [B, H, V],
    g [B, H], level_scales [B, H, L], state [B, H, L, K, V]. Returns ``(o [B, H, V], new_state)``."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    record("torch.log_linear_attention_step")
    B, H, L, K, V = state.shape
    acc = state.dtype
    if L < levels_needed(offset + 1):
        raise ValueError(f"log_linear_attention_step: position {offset} needs {levels_needed(offset + 1)} levels, the state has {L}")
    rep = H // q.shape[1]
    q, k = (x.to(acc).repeat_interleave(rep, dim=1).reshape(B * H, K) for x in (q, k))
    o, S = _token(
        state.reshape(B * H, L, K, V), offset, q, k, v.to(acc).reshape(B * H, V), g.to(acc).reshape(B * H),
        level_scales.to(acc).reshape(B * H, L), scale,
    )  # fmt: skip
    return o.view(B, H, V).to(v.dtype), S.view(B, H, L, K, V)
