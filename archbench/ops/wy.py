"""The shared parts of the WY / UT-transform chunked references (delta rules, DPLR).

Inside a chunk, these recurrences reduce to one unit lower-triangular system per chunk
(``UTTransform``: its inverse, batched over chunks and heads). After everything that depends
on one chunk alone has been computed for all chunks at once, they are left with a short
loop over the T/C chunks that carries the state (``ChunkPass``). For chunk n, with S_n the
state entering it:

    u_n     = U_n + alpha W_n S_n                       (the chunk's read-outs / pseudo-values)
    S_{n+1} = a_n * S_n + Kt_n u_n + X_n

U_n [C, V], W_n [C, K], Kt_n [K, C], the decay a_n (a scalar per chunk, or one per state row
[K, 1], or none) and the additive term X_n [K, V] (or none) are per chunk and head; alpha is
-1 for the delta rule (u = U - W S) and +1 for DPLR (u = U~ + W S). The pass is one autograd
node with a hand-written reverse pass, the adjoint recurrence run backwards,

    gu_n = du_n + Kt_n^T gS_{n+1},      gS_n = a_n * gS_{n+1} + dS_n + alpha W_n^T gu_n,

after which every parameter gradient is a batched matmul over all chunks at once. Recorded
by autograd op by op instead, the loop's backward would replay thousands of tiny ops (and a
slice's zero-filled full-size gradient per chunk). Each step is two or three small batched
matmuls writing into preallocated buffers (no allocation, no copy of the ``baddbmm`` input).

``SERIAL_LOOP`` runs the loop and the solves with one intra-op thread on CPU (see its comment).
"""

from __future__ import annotations

import contextlib

import torch

# Run the many small per-chunk ops (the chunk pass and the per-matrix LAPACK solves) with one
# intra-op thread on CPU. Each of them would otherwise open an OpenMP parallel region, and when
# the cores are shared with another multi-threaded process every region waits for a
# descheduled thread: measured on a 2-core machine, 512 small baddbmm calls took 2-4 s with 2
# threads against 20-40 ms with one, and the batched solve 6 s against 7 ms. The large batched
# ops keep all threads. Off by default: on an idle machine (the one a benchmark should run on)
# the parallel loop is as fast or faster (T=4096: 34 ms parallel vs 44 ms serial, 2 cores), and
# a benchmark must run with the thread count its row records. Turn on for shared machines.
SERIAL_LOOP = False


def serial_loop(device: torch.device) -> bool:
    """Whether loops of small ops on ``device`` run with one intra-op thread (``SERIAL_LOOP``, CPU only)."""
    return SERIAL_LOOP and device.type != "cuda"


@contextlib.contextmanager
def serial_if(flag: bool):
    """Run the block with one intra-op thread, then restore the previous count (CPU only)."""
    n = torch.get_num_threads()
    if not flag or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class UTTransform(torch.autograd.Function):
    """T_0 = (I + tril(a, -1))^{-1} diag(beta) for a batch of chunks, by one triangular solve.

    ``a`` [M, C, C] is read below the diagonal only (LAPACK's unit-triangular solve ignores
    the rest); beta [M, C]. Gradients: with R = diag(beta) and L the unit lower matrix,
    gR = L^{-T} gT, ga = -tril(gR T^T, -1), gbeta = diag(gR). With ``SERIAL_LOOP`` both
    solves run with one intra-op thread on CPU: torch.linalg.solve_triangular makes one LAPACK
    call per matrix, and with 2 threads each call is a parallel region. A column-major ``a``
    (the transpose of a contiguous tensor) is what LAPACK reads without a copy.
    """

    @staticmethod
    def forward(ctx, a, beta):
        serial = serial_loop(a.device)
        with serial_if(serial):
            t = torch.linalg.solve_triangular(a, torch.diag_embed(beta).mT, upper=False, unitriangular=True)
        ctx.save_for_backward(a, t)
        ctx.serial = serial
        return t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_t):
        a, t = ctx.saved_tensors
        with serial_if(ctx.serial):
            g_r = torch.linalg.solve_triangular(a.mT, g_t, upper=True, unitriangular=True)
        g_a = torch.bmm(g_r, t.mT).tril_(-1).neg_()
        return g_a, g_r.diagonal(dim1=-2, dim2=-1)


class ChunkPass(torch.autograd.Function):
    """``ChunkPass.apply(u, w, kt, decay, state, extra, alpha)``: the pass in the module docstring.

    u [N*BH, C, V] (U, overwritten in place by the read-outs u_n and returned), w [N, BH, C, K],
    kt [N, BH, K, C], decay [N, BH, 1, 1] or [N, BH, K, 1] or None, state [BH, K, V],
    extra [N, BH, K, V] or None, alpha a float. Returns (entering states [N, BH, K, V],
    read-outs [N*BH, C, V], S_N). Hand ``u`` a tensor nothing else needs (it is overwritten).
    """

    @staticmethod
    def forward(ctx, u, w, kt, decay, state, extra, alpha):
        N, BH, C, K = w.shape
        V = state.shape[-1]
        serial = serial_loop(u.device)
        pseudo = u.view(N, BH, C, V)
        entering = state.new_empty(N, BH, K, V)
        final = state.new_empty(BH, K, V)
        entering[0] = state
        with serial_if(serial):
            for n in range(N):
                s_n, s_next = entering[n], (entering[n + 1] if n + 1 < N else final)
                u_n = pseudo[n].baddbmm_(w[n], s_n, alpha=alpha)
                if decay is None and extra is None:
                    torch.baddbmm(s_n, kt[n], u_n, out=s_next)
                    continue
                if decay is None:
                    torch.add(s_n, extra[n], out=s_next)
                elif extra is None:
                    torch.mul(s_n, decay[n], out=s_next)
                else:
                    torch.addcmul(extra[n], s_n, decay[n], out=s_next)
                s_next.baddbmm_(kt[n], u_n)
        ctx.mark_dirty(u)
        ctx.save_for_backward(w, kt, decay, entering, u)
        ctx.serial, ctx.alpha, ctx.has_extra = serial, alpha, extra is not None
        return entering, u, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_entering, g_pseudo, g_final):
        w, kt, decay, entering, u = ctx.saved_tensors
        alpha = ctx.alpha
        N, BH, C, K = w.shape
        V = entering.shape[-1]
        pseudo = u.view(N, BH, C, V)
        g_state = entering.new_zeros(N + 1, BH, K, V)  # g_state[n]: gradient w.r.t. S_n
        if g_final is not None:
            g_state[N] = g_final
        g_u = entering.new_empty(N, BH, C, V)
        g_entering = torch.zeros_like(entering) if g_entering is None else g_entering
        g_pseudo = torch.zeros_like(pseudo) if g_pseudo is None else g_pseudo.view(N, BH, C, V)
        with serial_if(ctx.serial):
            for n in range(N - 1, -1, -1):
                gu = torch.baddbmm(g_pseudo[n], kt[n].mT, g_state[n + 1], out=g_u[n])
                if decay is None:
                    torch.add(g_entering[n], g_state[n + 1], out=g_state[n])
                else:
                    torch.addcmul(g_entering[n], g_state[n + 1], decay[n], out=g_state[n])
                g_state[n].baddbmm_(w[n].mT, gu, alpha=alpha)
        g_next = g_state[1:]
        flat = lambda x, r, c: x.reshape(N * BH, r, c)  # noqa: E731
        g_w = torch.bmm(flat(g_u, C, V), flat(entering, K, V).mT).mul_(alpha).view(N, BH, C, K)
        g_kt = torch.bmm(flat(g_next, K, V), flat(pseudo, C, V).mT).view(N, BH, K, C)
        g_decay = None
        if decay is not None:
            g_decay = (entering * g_next).sum(-1, keepdim=True)
            if decay.shape[-2] == 1:
                g_decay = g_decay.sum(-2, keepdim=True)
        g_extra = g_next if ctx.has_extra else None
        return g_u.view(N * BH, C, V), g_w, g_kt, g_decay, g_state[0], g_extra, None
