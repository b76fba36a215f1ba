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
only. Cumulative sums along the chunk are L - 1 in-place slice adds (one pass over the
states; 10-20% faster at T=16384 on the 2-core VM than a matmul with a lower-triangular ones
matrix, and torch.cumsum over an inner dimension is several times slower than either); a chunk
costs about eight elementwise passes over its states.
The only large factor is w_s <= e^span, span = -c_end, so a block takes this path only when
every chunk's span is below a safe bound (60 in fp32, 600 in fp64): true for realistic steps
(|delta A| up to 7.5 per step with chunks of 8; Mamba's init gives at most 1.6). Otherwise
(strong decay) the block falls back to an exact Hillis-Steele scan over the chunk (log2(chunk)
doubling steps combining (decay, state) pairs multiplicatively: products of numbers in (0, 1]
and sums, nothing can overflow; decays are floored at e^-70 so that no value turns denormal,
which is slow on CPUs). The chunk-start states are carried through a loop over chunks;
y_t = C_t . h_t.

Under autograd the scan is one node with a written-out backward (``_scan_backward``): the
gradient of every state is the same scan run backwards in time (time-reversed block, decays
shifted by one step), after which the input gradients are sums of products of the two state
sequences. It keeps only the state entering each block and recomputes a block's states when its
turn comes, so memory stays at one block's states. Forward plus backward costs about 5x a forward
pass (336 vs 64 ms at T=4096, Dm 512, 2 threads); autograd through checkpointed blocks (the
previous design) cost 16x (1019 ms).

Fused backends:
  ``mamba_ssm``  mamba_ssm.ops.selective_scan_interface.selective_scan_fn (CUDA), layout
                 u, delta [B, Dm, T], B, C [B, N, T]. The kernel has no initial state: when one
                 is given, its contribution (linear in h_0) is added by this reference run on
                 u = 0. selective_scan_fn does not backpropagate through the final state.
  ``auto``       mamba_ssm on CUDA tensors when importable, torch otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from archbench.ops.dispatch import graph_capturing, record
from archbench.ops.prologue import check_chunk_size, resolve_backend

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
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, output_final_state: bool = False, chunk_size: int = 8, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """Returns ``(y [B, T, Dm], final_state [B, Dm, N] or None)``."""
    backend = resolve_backend("selective_scan", backend, u, choices=BACKENDS, fused="mamba_ssm")
    check_chunk_size(chunk_size)
    _check(u, delta, A, B, C, D, initial_state)
    record("mamba_ssm.selective_scan_fn" if backend == "mamba_ssm" else "torch.selective_scan_chunked")
    if backend == "mamba_ssm":
        return _selective_scan_mamba_ssm(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size)
    return _selective_scan_torch(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size)


class _Workspace:
    """Buffers for the cumulative-sum path of ``_block_states``, allocated once per scan and
    reused by every block: fresh multi-megabyte temporaries per block can cost page faults on
    first touch (with the starts carried by one addcmul per chunk, about 5% of the forward at
    T=16384 on the 2-core VM, within its noise)."""

    def __init__(self, b: int, nb: int, L: int, Dm: int, N: int, like: torch.Tensor):
        self.w = like.new_empty(b, nb, L, Dm, N)
        self.X = like.new_empty(b, nb, L, Dm, N)
        self.starts = like.new_empty(b, nb, Dm, N)

    def take(self, nb: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w[:, :nb], self.X[:, :nb], self.starts[:, :nb]


def _block_states(du, delta, cd, B, h, negA, tri, fast: bool, floor: float, work: _Workspace | None = None):
    """Every state of one block of Tb = nb * L steps (L = chunk size), computed in place.

    du = delta * u and delta [b, Tb, Dm]; cd [b, nb, L, Dm] the cumulative delta inside each chunk;
    B [b, Tb, N]; h [b, Dm, N] the state entering the block; negA = -A (> 0); tri the [L, L]
    lower-triangular ones matrix; fast: every chunk's span is within the cumulative-sum path's limit;
    work: buffers to compute in (the returned states are a view of them, valid until its next use).
    Returns (hs [b, nb, L, Dm, N], h leaving the block). No autograd here: the backward pass of
    the scan is written out (``_SelectiveScanFn``).
    """
    L = tri.shape[0]
    b, Tb, Dm = du.shape
    N = negA.shape[1]
    nb = Tb // L
    du = du.view(b, nb, L, Dm, 1)
    Bv = B.view(b, nb, L, 1, N)
    if fast:
        # h_t = (h_start + S_t) / w_t,  w_t = exp(-c_t) in [1, e^span],  S_t = cumsum_s w_s du_s B_s
        w, X, st = (work or _Workspace(b, nb, L, Dm, N, du)).take(nb)
        torch.mul(cd[..., None], negA, out=w).exp_()
        torch.mul(w, du, out=X).mul_(Bv)
        for i in range(1, L):  # a running sum along the chunk: L - 1 slice adds, one pass over X
            X[:, :, i] += X[:, :, i - 1]
        # the state entering each chunk: h_start(j + 1) = (h_start(j) + S_end(j)) / w_end(j), one op per chunk
        dec = w[:, :, -1].reciprocal()  # [b, nb, Dm, N], in (0, 1]
        loc = X[:, :, -1] * dec
        st[:, 0] = h
        sts, locs, decs = st.unbind(1), loc.unbind(1), dec.unbind(1)  # one op for the views, not one per chunk
        for j in range(nb - 1):
            torch.addcmul(locs[j], sts[j], decs[j], out=sts[j + 1])
        h = torch.addcmul(locs[-1], sts[-1], decs[-1])
        hs = X.add_(st[:, :, None]).div_(w)
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
    return hs, h


def _chunk_spans(delta: torch.Tensor, negA: torch.Tensor, L: int) -> list[float]:
    """Every chunk's span -c_end (an upper bound over n and the batch), read back to the host
    once for all blocks (on a GPU, one synchronisation rather than one per block). While a CUDA
    graph is captured nothing is read back: every span is taken as infinite (the exact path)."""
    b, Tp, Dm = delta.shape
    if graph_capturing(delta):
        return [math.inf] * (Tp // L)
    return (delta.reshape(b, Tp // L, L, Dm).sum(2) * negA.amax(-1)).amax(-1).amax(0).tolist()


def _blocks(Tp: int, Tb: int) -> list[tuple[int, int]]:
    return [(s, min(s + Tb, Tp)) for s in range(0, Tp, Tb)]


def _scan_forward(u, delta, A, B, C, h, L: int, Tb: int):
    """The scan over padded inputs (u, delta [b, Tp, Dm], B, C [b, Tp, N], h [b, Dm, N]), block
    by block. Returns (y [b, Tp, Dm] without the D term, the final state, the state entering each block)."""
    b, Tp, Dm = u.shape
    negA, floor = -A, LOG_FLOOR[u.dtype]
    # A does not depend on t, so -c_t[d, n] = -A[d, n] * (delta_1[d] + ... + delta_t[d]): the
    # cumulative sums of log-decays run over [b, T, Dm], N times smaller than the states.
    tri = torch.ones(L, L, dtype=u.dtype, device=u.device).tril()
    spans, limit = _chunk_spans(delta, negA, L), SPAN_LIMIT[u.dtype]
    work = _Workspace(b, Tb // L, L, Dm, A.shape[1], u)
    y, starts = u.new_empty(b, Tp, Dm), []
    for s, e in _blocks(Tp, Tb):
        d = delta[:, s:e]
        cd = torch.matmul(tri, d.reshape(b, (e - s) // L, L, Dm))
        starts.append(h)
        fast = max(spans[s // L : e // L]) <= limit
        hs, h = _block_states(d * u[:, s:e], d, cd, B[:, s:e], h, negA, tri, fast, floor, work)
        # y_t = C_t . h_t, copied into the preallocated output (no concatenation of the blocks at the end)
        y[:, s:e] = torch.einsum("bcldn,bcln->bcld", hs, C[:, s:e].reshape(b, -1, L, C.shape[-1])).reshape(b, e - s, Dm)
    return y, h, starts


def _scan_backward(u, delta, A, B, C, starts, gy, g_h, L: int, Tb: int):
    """Gradients of ``_scan_forward``'s (y, final state) with respect to (u, delta, A, B, C, h0).

    With a_t = exp(delta_t A) and x_t = delta_t u_t B_t, the gradient of every state is the same
    scan run backwards in time, gh_t = C_t gy_t + a_{t+1} gh_{t+1} (gh after the last step =
    the final state's gradient), computed by ``_block_states`` on the time-reversed block with
    the decays shifted by one step. Then, with Z_t = gh_t * a_t h_{t-1} and ghB_t = gh_t . B_t:
    du_t = delta_t ghB_t, d(delta_t) = Z_t . A + u_t ghB_t, dA = sum_t Z_t delta_t,
    dB_t = sum_d gh_t delta_t u_t, dC_t = sum_d gy_t h_t, dh_0 = a_1 gh_1. The blocks run last
    to first, each recomputing its forward states from the state that entered it.
    """
    b, Tp, Dm = u.shape
    negA, floor = -A, LOG_FLOOR[u.dtype]
    tri = torch.ones(L, L, dtype=u.dtype, device=u.device).tril()
    spans, limit = _chunk_spans(delta, negA, L), SPAN_LIMIT[u.dtype]
    gy, R = gy.contiguous(), g_h.contiguous()  # autograd materialises unused outputs' gradients as zeros
    gu, gd, gB, gC, gA = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(B), torch.empty_like(C), torch.zeros_like(A)
    work_h, work_g = (_Workspace(b, Tb // L, L, Dm, A.shape[1], u) for _ in range(2))  # states, their gradients
    for (s, e), h0 in reversed(list(zip(_blocks(Tp, Tb), starts))):
        n = e - s
        ub, db, Bb, gyb = u[:, s:e], delta[:, s:e], B[:, s:e], gy[:, s:e]
        cd = torch.matmul(tri, db.reshape(b, n // L, L, Dm))
        span = max(spans[s // L : e // L])
        hs, _ = _block_states(db * ub, db, cd, Bb, h0, negA, tri, span <= limit, floor, work_h)
        hs = hs.view(b, n, Dm, -1)
        d_rev = torch.cat([db.new_zeros(b, 1, Dm), db.flip(1)[:, :-1]], dim=1)  # delta_{t+1}, reversed
        cd_rev = torch.matmul(tri, d_rev.reshape(b, n // L, L, Dm))
        # a reversed chunk straddles at most two forward chunks of the block: its span is below twice theirs
        gh, _ = _block_states(gyb.flip(1), d_rev, cd_rev, C[:, s:e].flip(1), R, negA, tri, 2 * span <= limit, floor, work_g)
        gh = gh.view(b, n, Dm, -1).flip(1)
        gC[:, s:e] = torch.einsum("btdn,btd->btn", hs, gyb)
        a = torch.mul(db[..., None], A).exp_()
        Z = torch.empty_like(gh)  # gh_t * a_t h_{t-1}, the shifted states written in place (no concatenation)
        torch.mul(hs[:, :-1], a[:, 1:], out=Z[:, 1:])
        torch.mul(h0, a[:, 0], out=Z[:, 0])
        Z.mul_(gh)
        ghB = torch.einsum("btdn,btn->btd", gh, Bb)
        gu[:, s:e] = db * ghB
        gd[:, s:e] = torch.einsum("btdn,dn->btd", Z, A) + ub * ghB
        gA += (Z * db[..., None]).sum((0, 1))
        gB[:, s:e] = torch.einsum("btdn,btd->btn", gh, db * ub)
        R = a[:, 0] * gh[:, 0]  # what flows into the state entering this block
    return gu, gd, gA, gB, gC, R


class _SelectiveScanFn(torch.autograd.Function):
    """The chunked scan as one autograd node: the forward keeps only the state entering each
    block; the backward recomputes a block's states and runs the scan backwards (``_scan_backward``)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, L, Tb):
        y, h, starts = _scan_forward(u, delta, A, B, C, h0, L, Tb)
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.L, ctx.Tb = L, Tb
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, g_h):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        return (*_scan_backward(u, delta, A, B, C, starts, gy, g_h, ctx.L, ctx.Tb), None, None)


def _selective_scan_torch(u, delta, A, B, C, D, initial_state, output_final_state, chunk_size):
    b, T, Dm, N = _check(u, delta, A, B, C, D, initial_state)
    acc = torch.promote_types(u.dtype, torch.float32)
    L = chunk_size
    Tp = max(-(-T // L), 1) * L
    pad = Tp - T
    # block length: a multiple of L holding about BLOCK_ELEMS states
    Tb = min(max(L, (BLOCK_ELEMS // max(b * Dm * N, 1)) // L * L), Tp)

    def prep(t: torch.Tensor) -> torch.Tensor:  # zero padding: delta 0 -> decay 1, no input
        t = t.to(acc)
        return F.pad(t, (0, 0, 0, pad)) if pad else t

    uu, dd, BB, CC, AA = prep(u), prep(delta), prep(B), prep(C), A.to(acc)
    h = initial_state.to(acc) if initial_state is not None else u.new_zeros(b, Dm, N, dtype=acc)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (uu, dd, AA, BB, CC, h)):
        y, h = _SelectiveScanFn.apply(uu, dd, AA, BB, CC, h, L, Tb)
    else:
        y, h, _ = _scan_forward(uu, dd, AA, BB, CC, h, L, Tb)
    y = y[:, :T]
    if D is not None:
        y = y + D.to(acc) * u.to(acc)
    return y.to(u.dtype), (h if output_final_state else None)


def selective_scan_step(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
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
