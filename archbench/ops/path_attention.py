"""PaTH attention (Yang et al., 2025, "PaTH Attention: Position Encoding via Accumulating
Householder Transformations", arXiv 2505.16381): softmax attention whose query-key interaction
passes through the data-dependent Householder-like transforms of every token in between.

Each token s carries H_s = I - beta_s w_s w_s^T (w_s unit-norm, beta_s in (0, 2): an orthogonal
reflection at beta = 2, a projection at beta = 1). The logit of query i and key j <= i is

    s_ij = scale (q_i^T H_i H_{i-1} ... H_{j+1} k_j + c_i - c_j)   (c = cumsum g: an optional forget gate)

and o_i = sum_{j <= i} softmax_j(s_ij) v_j (the gate term is scaled with the logit, as fla's kernel
does: PaTH-FoX in the paper). The products replace RoPE's fixed rotations by
accumulated, input-dependent transforms; with every beta = 0 it is plain causal softmax attention.

Decode keeps keys already transformed to the current position, k~_j = H_t ... H_{j+1} k_j: a new
token t+1 updates every cached key by one rank-1 step, k~_j <- k~_j - beta (w . k~_j) w (O(S d)),
appends its own k, and attends with plain softmax over the cache (``householder_update``). The
parallel form returns that cache with ``output_final_state=True`` (fla: ``use_cache``).

**Reference** (``backend="torch"``; fp32 accumulation, fp64 stays fp64). Cut the sequence into
chunks of C tokens (padding tokens have beta = 0, i.e. H = I). In one pass over the C positions
of every chunk at once: keys are carried to their chunk's end (k^_j = H_end ... H_{j+1} k_j),
queries to its start (q^_i = H_start ... H_i q_i), the intra-chunk logits q_i^T H_i ... H_{j+1} k_j
are read off, and the chunk's transform L = H_start ... H_end is accumulated as a d x d matrix.
Across chunks, for distance delta = 1, 2, ...: the logits of query chunk n against key chunk
n - delta are q^ . k^, then the queries move through that key chunk (q^ <- L_{n-delta}^T q^).
Time O(T^2 d + T^2 d^2 / C), memory O(T^2) (the logits are materialised, as the naive softmax
reference does).

``backend="fla"``: fla's ``parallel_path_attn`` (Triton; T == S, head dims 16/32/64/128, w, beta
and g in fp32).

Layout: q [B, T, H, d], k, v, w [B, T, Hkv, d], beta [B, T, Hkv], g [B, T, H] or None.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import record, triton_runs_on
from archbench.ops.prologue import check_chunk_size, resolve_backend

BACKENDS = ("torch", "fla")
FLA_HEAD_DIMS = (16, 32, 64, 128)


def _check(q, k, v, w, beta, g) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or w.dim() != 4:
        raise ValueError("path_attention expects q [B, T, H, d] and k, v, w [B, T, Hkv, d]")
    B, T, H, D = q.shape
    if k.shape[:2] != (B, T) or k.shape[-1] != D or v.shape[:3] != k.shape[:3] or w.shape != k.shape:
        raise ValueError(
            f"path_attention: incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, w {tuple(w.shape)}"
        )
    if H % k.shape[2]:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({k.shape[2]})")
    if beta.shape != k.shape[:3]:
        raise ValueError(f"path_attention expects beta [B, T, Hkv] = {tuple(k.shape[:3])}, got {tuple(beta.shape)}")
    if g is not None and g.shape != (B, T, H):
        raise ValueError(f"path_attention expects g [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")


def householder_update(keys: torch.Tensor, w: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """keys [B, S, Hkv, d] <- H keys with H = I - beta w w^T; w [B, Hkv, d], beta [B, Hkv]."""
    proj = torch.einsum("bshd,bhd->bsh", keys, w.to(keys.dtype))
    return keys - (beta.to(keys.dtype)[:, None] * proj)[..., None] * w.to(keys.dtype)[:, None]


def _heads(x: torch.Tensor, G: int) -> torch.Tensor:
    """[B, T, Hkv, ...] -> [B, H, T, ...] (each key/value head shared by G query heads)."""
    return x.repeat_interleave(G, dim=2).transpose(1, 2)


def _torch(q, k, v, w, beta, g, scale: float, chunk_size: int, want_cache: bool):
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    acc = torch.promote_types(q.dtype, torch.float32)
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T
    chunked = lambda x: F.pad(x, (0, 0, 0, pad)).unflatten(2, (N, C))  # noqa: E731  [B, H, T, d] -> [B, H, N, C, d]
    qc = chunked(q.to(acc).transpose(1, 2))
    kc = chunked(_heads(k.to(acc), G))
    wc = chunked(_heads(w.to(acc), G))
    bc = F.pad(_heads(beta.to(acc), G), (0, pad)).unflatten(2, (N, C))  # [B, H, N, C]; padding: beta = 0

    eye = torch.eye(D, dtype=acc, device=q.device)
    L = eye.expand(B, H, N, D, D)
    keys, queries = kc, qc
    intra = []  # row r: logits of query r against keys j <= r of its chunk
    ar = torch.arange(C, device=q.device)
    for r in range(C):
        wr, br = wc[:, :, :, r], bc[:, :, :, r]  # [B, H, N, d], [B, H, N]
        # keys before r move through H_r
        before = (ar < r).to(acc)[:, None]  # [C, 1]
        keys = keys - before * (
            br[..., None, None] * torch.einsum("bhncd,bhnd->bhnc", keys, wr)[..., None] * wr[:, :, :, None]
        )
        intra.append(torch.einsum("bhnd,bhncd->bhnc", qc[:, :, :, r], keys))
        L = L - torch.einsum("bhnij,bhnj->bhni", L, wr)[..., :, None] * (br[..., None] * wr)[..., None, :]
    for r in range(C - 1, -1, -1):  # queries at or after r move through H_r, latest first
        wr, br = wc[:, :, :, r], bc[:, :, :, r]
        after = (ar >= r).to(acc)[:, None]
        queries = queries - after * (
            br[..., None, None] * torch.einsum("bhncd,bhnd->bhnc", queries, wr)[..., None] * wr[:, :, :, None]
        )
    S = torch.full((B, H, N, N, C, C), float("-inf"), dtype=acc, device=q.device)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diag = torch.stack(intra, dim=3).masked_fill(~causal, float("-inf"))  # [B, H, N, C(query), C(key)]
    n = torch.arange(N, device=q.device)
    S[:, :, n, n] = diag
    z = queries
    for delta in range(1, N):
        rows, cols = n[delta:], n[: N - delta]
        S[:, :, rows, cols] = torch.einsum("bhmid,bhmjd->bhmij", z[:, :, delta:], keys[:, :, : N - delta])
        z = torch.cat(
            [z[:, :, :delta], torch.einsum("bhmid,bhmed->bhmie", z[:, :, delta:], L[:, :, : N - delta])], dim=2
        )
    logits = S.permute(0, 1, 2, 4, 3, 5).reshape(B, H, N * C, N * C)[:, :, :T, :T]
    if g is not None:
        gc = g.to(acc).cumsum(dim=1).transpose(1, 2)  # [B, H, T]
        logits = logits + gc[..., :, None] - gc[..., None, :]
    logits = logits * scale
    o = torch.einsum("bhts,bhsd->bthd", logits.softmax(dim=-1), _heads(v.to(acc), G))
    cache = None
    if want_cache:  # keys carried through every later chunk: k^T <- k^T L_{m+1} L_{m+2} ...
        suffix = eye.expand(B, H, D, D)
        finals = [None] * N
        for m in range(N - 1, -1, -1):
            finals[m] = keys[:, :, m] @ suffix
            suffix = L[:, :, m] @ suffix
        cache = torch.stack(finals, dim=2).flatten(2, 3)[:, :, :T]  # [B, H, T, d]
        cache = cache.unflatten(1, (Hkv, G))[:, :, 0].transpose(1, 2)  # the key/value heads: [B, T, Hkv, d]
    return o.to(v.dtype), cache


def fla_unavailable_reason(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """None when fla's ``parallel_path_attn`` can run on these tensors, else why not."""
    if not triton_runs_on(q):
        return "fla's kernels need CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU interpreter)"
    if importlib.util.find_spec("fla") is None:
        return "fla is not installed"
    if q.shape[-1] not in FLA_HEAD_DIMS or v.shape[-1] not in FLA_HEAD_DIMS:
        return f"fla's parallel_path_attn takes head dimensions {'/'.join(map(str, FLA_HEAD_DIMS))} (got {q.shape[-1]})"
    return None


def _fla(q, k, v, w, beta, g, scale: float, want_cache: bool):
    from fla.ops.path_attn.parallel import parallel_path_attn

    reason = fla_unavailable_reason(q, v)
    if reason:
        raise ValueError(f"path_attention backend 'fla' cannot run: {reason}")
    o, cache = parallel_path_attn(
        q, k, v, w.float(), beta.float(), None if g is None else g.float(), scale=scale, use_cache=want_cache
    )
    return o, cache


def path_attention(
    q: Tensor, k: Tensor, v: Tensor, w: Tensor, beta: Tensor, g: Tensor | None = None,
    scale: float | None = None, output_final_state: bool = False, chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """Causal PaTH attention; returns ``(o [B, T, H, d_v], transformed key cache [B, T, Hkv, d] or None)``.
    ``w`` must be unit-norm per token and head (the layer normalises it)."""
    resolve_backend("path_attention", backend, q, choices=BACKENDS)
    check_chunk_size(chunk_size)
    _check(q, k, v, w, beta, g)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    record("fla.parallel_path_attn" if backend == "fla" else "torch.path_attention")
    if backend == "fla":
        o, cache = _fla(q, k, v, w, beta, g, scale, output_final_state)
    else:
        o, cache = _torch(q, k, v, w, beta, g, scale, chunk_size, output_final_state)
    return o, (cache if output_final_state else None)
