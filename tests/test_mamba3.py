"""Mamba-3 (SISO): the chunked form against a literal float64 loop of the trapezoidal, rotating
recurrence (values, final states, gradients), state carry through initial_state, the step form,
fla's kernel under the chunked form, and the mixer's decode."""

import pytest
import torch

from archbench.mixers.base import MixerConfig
from archbench.mixers.mamba3 import Mamba3
from archbench.ops.mamba3 import Mamba3State, empty_state, mamba3, mamba3_step
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import assert_decode_matches_forward


def rot(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def oracle(x, dt, a, lam, Bm, Cm, dth, D):
    """h_t = e^{a_t} h_{t-1} + (1 - lam_t) dt_t e^{a_t} B~_{t-1}^T x_{t-1} + lam_t dt_t B~_t^T x_t,
    B~, C~ rotated pair by pair by explicit 2x2 matrices of the running angle; y = C~ h + D x."""
    b, T, H, P = x.shape
    N, A = Bm.shape[-1], dth.shape[-1]
    y = torch.zeros_like(x)
    finals = []
    for i in range(b):
        for h in range(H):
            state, prev_k, prev_v, theta = (
                torch.zeros(N, P, dtype=x.dtype),
                torch.zeros(N, dtype=x.dtype),
                torch.zeros(P, dtype=x.dtype),
                torch.zeros(A, dtype=x.dtype),
            )
            for t in range(T):
                theta = theta + dth[i, t, h]
                Bt, Ct = Bm[i, t, h].clone(), Cm[i, t, h].clone()
                for j in range(A):
                    R = rot(theta[j])
                    Bt = torch.cat([Bt[: 2 * j], R @ Bm[i, t, h, 2 * j : 2 * j + 2], Bt[2 * j + 2 :]])
                    Ct = torch.cat([Ct[: 2 * j], R @ Cm[i, t, h, 2 * j : 2 * j + 2], Ct[2 * j + 2 :]])
                alpha = torch.exp(a[i, t, h])
                beta = (1 - lam[i, t, h]) * dt[i, t, h] * alpha
                gamma = lam[i, t, h] * dt[i, t, h]
                state = alpha * state + beta * torch.outer(prev_k, prev_v) + gamma * torch.outer(Bt, x[i, t, h])
                y[i, t, h] = Ct @ state + D[h] * x[i, t, h]
                prev_k, prev_v = Bt, x[i, t, h]
            finals.append((state, prev_k, prev_v, theta))
    stack = lambda n: torch.stack([f[n] for f in finals]).unflatten(0, (b, H))  # noqa: E731
    return y, tuple(stack(n) for n in range(4))


def _inputs(b=2, T=19, H=3, P=4, N=6, A=2, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(b, T, H, P, dtype=dtype)
    dt = torch.rand(b, T, H, dtype=dtype) * 0.5 + 0.05
    a = -torch.rand(b, T, H, dtype=dtype) * 2 * dt
    lam = torch.rand(b, T, H, dtype=dtype)
    Bm, Cm = torch.randn(b, T, H, N, dtype=dtype), torch.randn(b, T, H, N, dtype=dtype)
    dth = torch.randn(b, T, H, A, dtype=dtype)
    return x, dt, a, lam, Bm, Cm, dth, torch.randn(H, dtype=dtype)


@pytest.mark.parametrize("chunk", [4, 7, 64])
def test_chunked_matches_float64_loop_values_states_gradients(chunk):
    args = [t.requires_grad_() for t in _inputs()]
    y, state = mamba3(*args[:7], D=args[7], output_final_state=True, chunk_size=chunk)
    ref, ref_state = oracle(*args)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(state, ref_state):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(ref)
    loss = lambda out, st: (out * w).sum() + st[0].sum() + st[1].sum()  # noqa: E731
    for g1, g2 in zip(torch.autograd.grad(loss(y, state), args), torch.autograd.grad(loss(ref, ref_state), args)):
        torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


def test_state_carry_and_step_form_match_one_call():
    x, dt, a, lam, Bm, Cm, dth, D = _inputs(T=23)
    y, final = mamba3(x, dt, a, lam, Bm, Cm, dth, D, output_final_state=True, chunk_size=5)
    cut = lambda lo, hi: [t[:, lo:hi] for t in (x, dt, a, lam, Bm, Cm, dth)]  # noqa: E731
    y1, s1 = mamba3(*cut(0, 10), D=D, output_final_state=True, chunk_size=5)
    y2, s2 = mamba3(*cut(10, 23), D=D, initial_state=s1, output_final_state=True, chunk_size=5)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    state, ys = empty_state(2, 3, 6, 4, 2, torch.float64), []
    for t in range(23):
        y_t, state = mamba3_step(*(u[:, t] for u in (x, dt, a, lam, Bm, Cm, dth)), state, D=D)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-10, atol=1e-10)
    for got, want, carried in zip(state, final, s2):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(carried, want, rtol=1e-10, atol=1e-10)


def test_euler_limit_and_bad_inputs():
    """lam = 1 and no rotation: Mamba-2's update, y_t = sum_s (prod alpha) dt_s (C_t . B_s) x_s."""
    x, dt, a, lam, Bm, Cm, dth, D = _inputs(b=1, T=6, H=1)
    y, _ = mamba3(x, dt, a, torch.ones_like(lam), Bm, Cm, torch.zeros_like(dth))
    c = a[0, :, 0].cumsum(0)
    L = torch.exp(c[:, None] - c[None, :]).tril()
    want = (L * (Cm[0, :, 0] @ Bm[0, :, 0].T) * dt[0, None, :, 0]) @ x[0, :, 0]
    torch.testing.assert_close(y[0, :, 0], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2 A <= N"):
        mamba3(x, dt, a, lam, Bm, Cm, torch.zeros(1, 6, 1, 4, dtype=x.dtype))
    with pytest.raises(ValueError, match="torch, fla"):
        mamba3(x, dt, a, lam, Bm, Cm, dth, backend="nope")


def test_mixer_prefill_and_state_bytes():
    cfg = MixerConfig(d_model=32, n_heads=4, d_state=8, chunk_size=5)
    torch.manual_seed(0)
    m = Mamba3(cfg).double()
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 6, from_start=False, rtol=1e-9, atol=1e-10)
    H, N, P = m.n_heads, 8, 8
    assert m.state_bytes(1, 10**6) == H * (N * P + N + P + 2) * 4  # independent of the length
    with pytest.raises(ValueError, match="d_state >= 4"):
        Mamba3(MixerConfig(d_model=32, n_heads=4, d_state=2))


@needs_fla
def test_fla_recurrence_matches_reference():
    x, dt, a, lam, Bm, Cm, dth, D = (t.float().to(FLA_DEVICE) for t in _inputs(b=1, T=70, H=2, P=16, N=16, A=4))
    init = Mamba3State(
        *(
            t.float().to(FLA_DEVICE)
            for t in mamba3(*(u.cpu().double()[:, :9] for u in (x, dt, a, lam, Bm, Cm, dth)), output_final_state=True)[
                1
            ]
        )
    )
    ref, ref_state = mamba3(x, dt, a, lam, Bm, Cm, dth, D, initial_state=init, output_final_state=True)
    dtype = half(torch.bfloat16)
    y, state = mamba3(
        x.to(dtype),
        dt,
        a,
        lam,
        Bm.to(dtype),
        Cm.to(dtype),
        dth,
        D,
        initial_state=init,
        output_final_state=True,
        backend="fla",
    )
    assert ((y.float() - ref).norm() / ref.norm()).item() < 3e-2
    assert ((state.h - ref_state.h).norm() / ref_state.h.norm()).item() < 3e-2
