"""The DPLR op (RWKV-7's generalised delta rule) and the RWKV-7 mixer, proven against a loop oracle.

The oracle is the recurrence written literally, one token at a time, in float64:
S_t = (diag(exp(w_t)) + a_t^T b_t) S_{t-1} + k_t^T v_t,  o_t = scale q_t S_t.
"""

from __future__ import annotations

import importlib

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

dplr_mod = importlib.import_module("archbench.ops.dplr")
from archbench.mixers.base import MixerConfig
from archbench.mixers.rnn import RWKV7, SPECS, rwkv7_flops
from archbench.ops.dplr import dplr, dplr_flops, dplr_step
from fused_devices import FLA_DEVICE, half, needs_fla

B, H, K, V = 2, 3, 16, 12  # K != V catches key/value transpositions


def oracle(q, k, v, w, a, b, scale=1.0, initial_state=None):
    """The recurrence, token by token, in float64 (differentiable)."""
    q, k, v, w, a, b = (x.double() for x in (q, k, v, w, a, b))
    Bq, T, Hq, Kq = q.shape
    S = q.new_zeros(Bq, Hq, Kq, v.shape[-1]) if initial_state is None else initial_state.double()
    outs = []
    for t in range(T):
        read = torch.einsum("bhk,bhkv->bhv", b[:, t], S)  # b_t S_{t-1}
        write = a[:, t][..., None] * read[..., None, :] + k[:, t][..., None] * v[:, t][..., None, :]
        S = w[:, t].exp()[..., None] * S + write
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, dim=1), S


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make(T, decay="rwkv", lowrank="rwkv", dtype=torch.float32, batch=B, heads=H, kdim=K, vdim=V, seed=0):
    """q, k, v, w, a, b with realistic gates.

    decay: "rwkv" (log w in (-e^{-0.5}, 0)), "logsigmoid", "strong" (-5 .. -20 per step),
    "mixed" (strong on half the channels, weak on the rest).
    lowrank: "rwkv" (a = kappa * lr, b = -kappa with |kappa| = 1) or "random" (small random a, b).
    """
    g = torch.Generator().manual_seed(seed)
    shape = (batch, T, heads, kdim)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v = rnd(*shape), rnd(*shape), rnd(batch, T, heads, vdim)
    if decay == "rwkv":
        w = -math.exp(-0.5) * torch.sigmoid(rnd(*shape) + 1)
    elif decay == "logsigmoid":
        w = F.logsigmoid(rnd(*shape) + 1)
    elif decay == "strong":
        w = -(5 + 15 * torch.rand(*shape, generator=g))
    elif decay == "mixed":
        w = F.logsigmoid(rnd(*shape) + 3)
        w[..., ::2] = -(5 + 15 * torch.rand(*w[..., ::2].shape, generator=g))
    else:
        raise AssertionError(decay)
    if lowrank == "rwkv":
        kappa = F.normalize(rnd(*shape), dim=-1)
        lr = torch.sigmoid(rnd(*shape))
        a, b = kappa * lr, -kappa
    else:
        a, b = 0.3 * rnd(*shape) / kdim**0.5, 0.3 * rnd(*shape) / kdim**0.5
    return [x.to(dtype) for x in (q, k, v, w, a, b)]


# ---- the chunked reference against the oracle ---------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("chunk", [16, 24, 64])
def test_chunked_matches_oracle(T, chunk):
    x = make(T, seed=T + chunk)
    s0 = torch.randn(B, H, K, V)
    o, s = dplr(*x, initial_state=s0, output_final_state=True, chunk_size=chunk)
    o_ref, s_ref = oracle(*x, initial_state=s0)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel(o, o_ref) < 1e-4 and rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_tiny_chunks(chunk):
    x = make(9, decay="logsigmoid", seed=chunk)
    o, s = dplr(*x, output_final_state=True, chunk_size=chunk)
    o_ref, s_ref = oracle(*x)
    assert rel(o, o_ref) < 1e-4 and rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("decay,lowrank", [("logsigmoid", "random"), ("rwkv", "random"), ("logsigmoid", "rwkv")])
def test_general_gates_and_low_rank(decay, lowrank):
    x = make(77, decay=decay, lowrank=lowrank, seed=3)
    o, s = dplr(*x, output_final_state=True, chunk_size=32, scale=0.7)
    o_ref, s_ref = oracle(*x, scale=0.7)
    assert rel(o, o_ref) < 1e-4 and rel(s, s_ref) < 1e-4


def test_a_writes_and_b_reads():
    """A rank-one transition a^T b: b reads the state, a is where the read-out is written."""
    T = 2
    q, k, v, w, a, b = (torch.zeros(1, T, 1, 3) for _ in range(6))
    v = torch.zeros(1, T, 1, 2)
    k[0, 0, 0, 0], v[0, 0, 0] = 1.0, torch.tensor([2.0, 3.0])  # t=0 stores (2, 3) under key e0
    b[0, 1, 0, 0], a[0, 1, 0, 2] = 1.0, 1.0  # t=1 reads key e0 and writes the read-out under e2
    w[0, 1] = -1e4  # and forgets everything else
    q[0, 1, 0, 2] = 1.0
    o, s = dplr(q, k, v, w, a, b, output_final_state=True)
    assert torch.allclose(o[0, 1, 0], torch.tensor([2.0, 3.0]))
    assert torch.allclose(s[0, 0], torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 3.0]]))


@pytest.mark.parametrize("decay", ["strong", "mixed"])
@pytest.mark.parametrize("chunk", [16, 64])
def test_strong_decay_is_stable(decay, chunk):
    x = make(100, decay=decay, seed=7)
    s0 = torch.randn(B, H, K, V)
    o, s = dplr(*x, initial_state=s0, output_final_state=True, chunk_size=chunk)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o_ref, s_ref = oracle(*x, initial_state=s0)
    assert rel(o, o_ref) < 1e-4 and rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_recursive_gram_path(monkeypatch, threshold):
    """Force the binary recursion (the strong-decay path) to stop at different depths on ordinary gates."""
    monkeypatch.setitem(dplr_mod.SAFE_LOG_RANGE, torch.float32, threshold)
    x = make(100, decay="logsigmoid", seed=11)
    o, s = dplr(*x, output_final_state=True, chunk_size=32)
    o_ref, s_ref = oracle(*x)
    assert rel(o, o_ref) < 1e-4 and rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("split", [1, 37, 64])
def test_split_sequence_with_state(split):
    T = 100
    x = make(T, seed=5)
    s0 = torch.randn(B, H, K, V)
    o, s = dplr(*x, initial_state=s0, output_final_state=True, chunk_size=16)
    o1, s1 = dplr(*(t[:, :split] for t in x), initial_state=s0, output_final_state=True, chunk_size=16)
    o2, s2 = dplr(*(t[:, split:] for t in x), initial_state=s1, output_final_state=True, chunk_size=16)
    assert rel(torch.cat([o1, o2], dim=1), o) < 1e-5
    assert rel(s2, s) < 1e-5
    assert dplr(*x, chunk_size=16)[1] is None


def test_step_matches_chunked():
    T = 40
    x = make(T, seed=9)
    s0 = torch.randn(B, H, K, V)
    o, s = dplr(*x, initial_state=s0, output_final_state=True, chunk_size=16)
    state = s0.clone()
    for t in range(T):
        o_t, state = dplr_step(*(z[:, t] for z in x), state)
        assert torch.allclose(o_t, o[:, t], rtol=1e-4, atol=1e-4)
    assert state.dtype == torch.float32 and rel(state, s) < 1e-5


@pytest.mark.parametrize("path", ["safe", "recursive"])
def test_gradients_match_oracle(monkeypatch, path):
    if path == "recursive":
        monkeypatch.setitem(dplr_mod.SAFE_LOG_RANGE, torch.float64, 0.5)
    x = make(13, decay="logsigmoid", lowrank="random", dtype=torch.float64, batch=1, heads=2, kdim=5, vdim=3, seed=2)
    s0 = torch.randn(1, 2, 5, 3, dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (*x, s0)]
    o, s = dplr(*ins[:6], initial_state=ins[6], output_final_state=True, chunk_size=4, scale=0.9)
    go, gs = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o * go).sum() + (s * gs).sum(), ins)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    o_ref, s_ref = oracle(*ref_ins[:6], scale=0.9, initial_state=ref_ins[6])
    grads_ref = torch.autograd.grad((o_ref * go).sum() + (s_ref * gs).sum(), ref_ins)
    for name, g, g_ref in zip("q k v w a b s0".split(), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert rel(g, g_ref) < 1e-8, name


def test_dtypes_scale_and_empty():
    x = make(20, seed=4)
    o32, s32 = dplr(*x, output_final_state=True)
    o16, s16 = dplr(*(t.bfloat16() for t in x), output_final_state=True)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert rel(o16.float(), o32) < 3e-2
    assert rel(dplr(*x, scale=2.0)[0], 2 * dplr(*x)[0]) < 1e-6  # scale defaults to 1.0
    o0, s0 = dplr(*(t[:, :0] for t in x), output_final_state=True)
    assert o0.shape == (B, 0, H, V) and s0.shape == (B, H, K, V) and not s0.any()


def test_bad_arguments():
    x = make(8)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        dplr(*x, backend="cuda_magic")
    with pytest.raises(ValueError, match="chunk_size"):
        dplr(*x, chunk_size=0)
    with pytest.raises(ValueError, match="w"):
        dplr(*x[:3], x[3][..., :-1], *x[4:])
    with pytest.raises(ValueError, match="initial_state"):
        dplr(*x, initial_state=torch.zeros(B, H, V, K))
    assert dplr(*x, backend="auto")[0].shape == (B, 8, H, V)  # CPU tensors: the torch reference


def test_flops_counts_grow_with_length():
    assert 0 < dplr_flops(1, 64, 4, 64, 64) < dplr_flops(1, 128, 4, 64, 64)


# ---- the RWKV-7 mixer -----------------------------------------------------------------------


def _mixer(chunk=16, seed=0):
    torch.manual_seed(seed)
    m = RWKV7(MixerConfig(d_model=48, n_heads=3, chunk_size=chunk), "chunked")
    with torch.no_grad():  # move every parameter off its (partly zero) initialisation
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def test_rwkv7_step_matches_forward():
    m = _mixer()
    x = torch.randn(2, 29, 48)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2)
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            assert torch.allclose(y_t, y[:, t], rtol=1e-4, atol=1e-4), t
    S, shift = state
    assert S.shape == (2, 3, 16, 16) and S.dtype == torch.float32 and torch.equal(shift, x[:, -1])


@pytest.mark.parametrize("T", [1, 2, 3])
def test_rwkv7_prefill_short_prompts(T):
    """prefill on 1 token and on a few (shorter than a conv kernel): forward's outputs, the last
    x as token-shift state, and step continues exactly."""
    m = _mixer(seed=6).double()
    x = torch.randn(2, T + 5, 48, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        y_pre, (S, shift) = m.prefill(x[:, :T])
        torch.testing.assert_close(y_pre, y[:, :T], rtol=1e-7, atol=1e-8)
        assert S.shape == (2, 3, 16, 16) and S.dtype == torch.float64 and torch.equal(shift, x[:, T - 1])
        state = (S, shift)
        for t in range(T, x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-7, atol=1e-8)


def test_rwkv7_is_causal_and_chunk_independent():
    m = _mixer(chunk=8)
    x = torch.randn(1, 40, 48)
    with torch.no_grad():
        y = m(x)
        x2 = x.clone()
        x2[:, 25:] += torch.randn_like(x2[:, 25:])
        assert torch.equal(m(x2)[:, :25], y[:, :25])
        m.config = MixerConfig(d_model=48, n_heads=3, chunk_size=32)
        assert torch.allclose(m(x), y, rtol=1e-4, atol=1e-5)


def test_rwkv7_gradients_flow_and_sizes():
    m = _mixer()
    x = torch.randn(2, 21, 48, requires_grad=True)
    m(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    S, shift = m.init_state(3)
    assert m.state_bytes(3, 10_000) == S.numel() * 4 + shift.numel() * shift.element_size()
    cfg = m.config
    assert 0 < rwkv7_flops(cfg, 1, 64) < rwkv7_flops(cfg, 1, 128)
    with pytest.raises(ValueError, match="fla, chunked"):
        RWKV7(cfg, "flex")


def test_rwkv7_spec():
    (spec,) = SPECS
    assert spec.name == "rwkv7" and spec.family == "rnn/rwkv"
    assert spec.backend_names == ["fla", "chunked"]
    assert spec.resolve_backend("auto", "cpu") == "chunked"
    assert isinstance(spec.build(MixerConfig(d_model=32, n_heads=2), "chunked"), RWKV7)


# ---- fused backend (CUDA, or Triton's CPU interpreter) ------------------------------------


@needs_fla
@pytest.mark.parametrize("T", [63, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_matches_reference(T, dtype):
    dtype = half(dtype)
    x = [t.to(FLA_DEVICE, dtype) for t in make(T, decay="rwkv", kdim=64, vdim=64, seed=1)]
    s0 = torch.randn(B, H, 64, 64, device=FLA_DEVICE)
    o_ref, s_ref = dplr(*(t.float() for t in x), initial_state=s0, output_final_state=True, backend="torch")
    o, s = dplr(*x, initial_state=s0, output_final_state=True, backend="fla")
    assert o.dtype == dtype and o.shape == o_ref.shape and s.shape == s_ref.shape
    tol = 1e-2 if dtype == torch.float32 else 5e-2  # fla's fp32 matmuls run in TF32
    assert rel(o.float(), o_ref) < tol and rel(s.float(), s_ref) < tol
    assert dplr(*x, backend="auto")[0].shape == o_ref.shape  # auto -> fla on CUDA, the reference on a CPU


@needs_fla
def test_rwkv7_fla_matches_chunked():
    torch.manual_seed(0)
    m = RWKV7(MixerConfig(d_model=128, n_heads=2, chunk_size=64), "chunked").to(FLA_DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 100, 128, device=FLA_DEVICE)
        y_ref = m(x)
        m.backend = "fla"
        y = m(x)
    assert rel(y, y_ref) < 2e-2
