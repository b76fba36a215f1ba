"""The selective scan of Mamba / S6 (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces").

Per batch element and channel d, with state h_t[d] in R^{N}, input u_t[d], step delta_t[d] > 0,
diagonal A[d] in R^{N} (< 0) and input-dependent B_t, C_t in R^{N} shared by all channels:

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] u_t[d]

Layout: u, delta [B, T, Dm]; A [Dm, N]; B, C [B, T, N]; D [Dm] (optional); state [B, Dm, N].

Unlike SSD (``archbench.ops.ssd``) the decay differs per (channel, state) pair, so no matmul
form is cheaper than visiting every h_t: the work is O(T Dm N) elementwise, the size of all
the states. The reference never holds them all at once.

Reference (``backend="torch"``): the sequence is processed in blocks of about 2^20 states
(a Python loop over blocks); a block is cut into chunks of ``chunk_size`` steps (default 8),
all chunks of the block handled at once. Inside a chunk, with c_t the cumulative log-decay
since the chunk start (c_t <= 0, decreasing) and w_t = exp(-c_t) >= 1:

    h_t = (h_start + S_t) / w_t,      S_t = sum_{s <= t} w_s delta_s B_s u_s

a cumulative sum of terms rescaled relative to the chunk start. Because A does not depend on
t, c_t[d, n] = A[d, n] (delta_1[d] + ... + delta_t[d]): the cumulative sum runs over [T, Dm]
only. Cumulative sums along the chunk are, without autograd, L - 1 in-place slice adds (one
pass over the states; 10-20% faster at T=16384 on the 2-core VM) and, under autograd, matmuls
with a lower-triangular ones matrix (torch.cumsum over an inner dimension is several times
slower than either); a chunk costs about eight elementwise passes over its states.
The only large factor is w_s <= e^span, span = -c_end, so a block takes this path only when
every chunk's span is below a safe bound (60 in fp32, 600 in fp64): true for realistic steps
(|delta A| up to 7.5 per step with chunks of 8; Mamba's init gives at most 1.6). Otherwise
(strong decay) the block falls back to an exact Hillis-Steele scan over the chunk (log2(chunk)
doubling steps combining (decay, state) pairs multiplicatively: products of numbers in (0, 1]
and sums, nothing can overflow; decays are floored at e^-70 so that no value turns denormal,
which is slow on CPUs). The chunk-start states are carried through a loop over chunks;
y_t = C_t . h_t. Under autograd each block is checkpointed, so a backward pass keeps one
block's states, not all T of them.

Fused backends:
  ``mamba_ssm``  mamba_ssm.ops.selective_scan_interface.selective_scan_fn (CUDA), layout
                 u, delta [B, Dm, T], B, C [B, N, T]. The kernel has no initial state: when one
                 is given, its contribution (linear in h_0) is added by this reference run on
                 u = 0. selective_scan_fn does not backpropagate through the final state.
  ``auto``       mamba_ssm on CUDA tensors when importable, torch otherwise.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from archbench.ops.dispatch import record

BACKENDS = ("torch", "mamba_ssm", "auto")
BLOCK_ELEMS = 1 << 20  # target size of one block's [B, Tb, Dm, N] tensors (elements)
# largest chunk span (-c_end) the cumulative-sum path accepts, and the log-decay floor of the
# fallback scan, per accumulation dtype (e^span and e^-floor stay far from overflow / denormals)
SPAN_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
LOG_FLOOR = {torch.float32: 70.0, torch.float64: 700.0}


def _check(u, delta, A, B, C, D, initial_state) -> tuple[int, int, int, int]:
    if u.dim() != 3:
        raise ValueError(f"selective_scan expects u [B, T, Dm], got shape {tuple(u.shape)}")
    b, T, Dm = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan expects delta like u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"selective_scan expects A [Dm, N] with Dm = {Dm}, got {tuple(A.shape)}")
    N = A.shape[1]
    if B.shape != (b, T, N) or C.shape != (b, T, N):
        raise ValueError(
            f"selective_scan expects B and C [B, T, N] = {(b, T, N)}, got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    if D is not None and D.shape != (Dm,):
        raise ValueError(f"selective_scan expects D [Dm] = ({Dm},), got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, Dm, N):
        raise ValueError(
            f"selective_scan expects initial_state [B, Dm, N] = {(b, Dm, N)}, got {tuple(initial_state.shape)}"
        )
    return b, T, Dm, N


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 8,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns ``(y [B, T, Dm], final_state [B, Dm, N] or None)``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective_scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check(u, delta, A, B, C, D, initial_state)
    if backend == "auto":
        backend = "mamba_ssm" if u.is_cuda and importlib.util.find_spec("mamba_ssm") is not None else "torch"
    record("mamba_ssm.selective_scan_fn" if backend == "mamba_ssm" else "torch.selective_scan_chunked")
    if backend == "mamba_ssm":
        return _selective_scan_mamba_ssm(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size)
    return _selective_scan_torch(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size)


def _scan_block(du, delta, cd, B, C, h, negA, tri, fast: bool, floor: float):
    """One block of Tb = nb * L steps (L = chunk size).

    du = delta * u and delta [b, Tb, Dm]; cd [b, nb, L, Dm] the cumulative delta inside each chunk;
    B, C [b, Tb, N]; h [b, Dm, N] the state entering the block; negA = -A (> 0); tri the [L, L]
    lower-triangular ones matrix; fast: every chunk's span is within the cumulative-sum path's limit.
    Returns (y [b, Tb, Dm] without the D term, h leaving the block).
    """
    L = tri.shape[0]
    b, Tb, Dm = du.shape
    N = negA.shape[1]
    nb = Tb // L
    # nothing to differentiate: work in place (saves passes and allocations)
    inplace = not any(t.requires_grad for t in (du, delta, cd, B, C, h, negA))
    du = du.view(b, nb, L, Dm, 1)
    Bv = B.view(b, nb, L, 1, N)
    if fast:
        # h_t = (h_start + S_t) / w_t,  w_t = exp(-c_t) in [1, e^span],  S_t = cumsum_s w_s du_s B_s
        w = cd[..., None] * negA
        w = w.exp_() if inplace else w.exp()
        X = (du * w).mul_(Bv) if inplace else du * w * Bv
        if inplace:  # a running sum along the chunk: L - 1 slice adds, one pass over X
            for i in range(1, L):
                X[:, :, i] += X[:, :, i - 1]
            S = X
        else:
            S = torch.matmul(tri, X.view(b, nb, L, Dm * N)).view(b, nb, L, Dm, N)
        starts = []
        for S_end, w_end in zip(S[:, :, -1].unbind(1), w[:, :, -1].unbind(1)):  # unbind: one backward node
            starts.append(h)
            h = (h + S_end) / w_end
        H0 = torch.stack(starts, dim=1)[:, :, None]  # [b, nb, 1, Dm, N]
        hs = S.add_(H0).div_(w) if inplace else (S + H0) / w
    else:
        # exact doubling scan on (decay, local state) pairs: (d1, s1) then (d2, s2) -> (d1 d2, d2 s1 + s2);
        # log-decays are floored so that no value lands in the (slow) denormal range
        dec = torch.exp(-(delta[..., None] * negA).clamp_max(floor)).view(b, nb, L, Dm, N)
        tiny = math.exp(-floor)
        loc = du * Bv
        s = 1
        while s < L:
            loc = torch.cat([loc[:, :, :s], torch.addcmul(loc[:, :, s:], dec[:, :, s:], loc[:, :, :-s])], dim=2)
            dec = torch.cat([dec[:, :, :s], (dec[:, :, s:] * dec[:, :, :-s]).clamp_min(tiny)], dim=2)
            s *= 2
        starts = []
        for loc_end, dec_end in zip(loc[:, :, -1].unbind(1), dec[:, :, -1].unbind(1)):
            starts.append(h)
            h = torch.addcmul(loc_end, dec_end, h)
        hs = torch.addcmul(loc, dec, torch.stack(starts, dim=1)[:, :, None])
    y = torch.einsum("bcldn,bcln->bcld", hs, C.view(b, nb, L, N))  # y_t = C_t . h_t
    return y.reshape(b, Tb, Dm), h


def _selective_scan_torch(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size):
    b, T, Dm, N = _check(u, delta, A, B, C, D, initial_state)
    acc = torch.promote_types(u.dtype, torch.float32)
    L = chunk_size
    Tp = max(-(-T // L), 1) * L
    pad = Tp - T
    nc = Tp // L
    # block length: a multiple of L holding about BLOCK_ELEMS states
    Tb = min(max(L, (BLOCK_ELEMS // max(b * Dm * N, 1)) // L * L), Tp)

    def prep(t: torch.Tensor) -> torch.Tensor:  # zero padding: delta 0 -> decay 1, no input
        t = t.to(acc)
        return F.pad(t, (0, 0, 0, pad)) if pad else t

    uu, dd, BB, CC = prep(u), prep(delta), prep(B), prep(C)
    negA = -A.to(acc)
    h = initial_state.to(acc) if initial_state is not None else u.new_zeros(b, Dm, N, dtype=acc)
    # A does not depend on t, so -c_t[d, n] = -A[d, n] * (delta_1[d] + ... + delta_t[d]): the
    # cumulative sums of log-decays run over [b, T, Dm], N times smaller than the states. Cumulative
    # sums along a chunk are matmuls with a lower-triangular ones matrix (torch.cumsum over an inner
    # dimension is several times slower).
    tri = torch.ones(L, L, dtype=acc, device=u.device).tril()
    du = dd * uu
    cd = torch.matmul(tri, dd.view(b, nc, L, Dm))  # [b, nc, L, Dm]
    # every chunk's span -c_end (upper bound over n), read back once for all blocks
    spans = (cd[:, :, -1] * negA.amax(-1)).amax(-1).amax(0).detach().tolist()
    span_limit, floor = SPAN_LIMIT[acc], LOG_FLOOR[acc]
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (du, cd, BB, CC, h, negA))
    ys = []
    # blocks by split, not slices (under autograd a slice's backward zero-fills a full-size tensor per block)
    blocks = zip(*(x.split(Tb, dim=1) for x in (du, dd, BB, CC)), cd.split(Tb // L, dim=1))
    for s, (du_b, dd_b, B_b, C_b, cd_b) in zip(range(0, Tp, Tb), blocks):
        fast = max(spans[s // L : (s + Tb) // L]) <= span_limit
        args = (du_b, dd_b, cd_b, B_b, C_b, h, negA, tri, fast, floor)
        if use_ckpt:
            y, h = checkpoint(_scan_block, *args, use_reentrant=False)
        else:
            y, h = _scan_block(*args)
        ys.append(y)
    y = torch.cat(ys, dim=1)[:, :T]
    if D is not None:
        y = y + D.to(acc) * u.to(acc)
    return y.to(u.dtype), (h if output_final_state else None)


def selective_scan_step(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: u, delta [B, Dm], A [Dm, N], B, C [B, N], state [B, Dm, N] (fp32).

    Returns ``(y [B, Dm], new_state)``.
    """
    record("torch.selective_scan_step")
    acc = torch.promote_types(state.dtype, torch.float32)
    ua, da = u.to(acc), delta.to(acc)
    state = torch.exp(da[..., None] * A.to(acc)) * state + (da * ua)[..., None] * B.to(acc)[:, None, :]
    y = torch.einsum("bdn,bn->bd", state, C.to(acc))
    if D is not None:
        y = y + D.to(acc) * ua
    return y.to(u.dtype), state


# ---- fused backend (CUDA) ---------------------------------------------------------------


def _selective_scan_mamba_ssm(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    dtype = u.dtype  # the kernel wants delta and the time-varying B, C in u's dtype; A, D in fp32
    y, last = selective_scan_fn(
        u.transpose(1, 2).contiguous(),
        delta.to(dtype).transpose(1, 2).contiguous(),
        A.float().contiguous(),
        B.to(dtype).transpose(1, 2).contiguous(),
        C.to(dtype).transpose(1, 2).contiguous(),
        D=D.float().contiguous() if D is not None else None,
        return_last_state=True,
    )
    y = y.transpose(1, 2)
    last = last.float()
    if initial_state is not None:
        # the recurrence is linear in h_0: add the response to h_0 alone (u = 0, no D)
        y0, h0_final = _selective_scan_torch(
            torch.zeros_like(u), delta, A, B, C, None, initial_state, True, chunk_size
        )
        y = (y.float() + y0.float()).to(u.dtype)
        last = last + h0_final
    return y, (last if output_final_state else None)
