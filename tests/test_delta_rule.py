"""The delta rule and gated delta rule: chunked WY reference == the recurrence, and the mixers.

The oracle below is the recurrence written literally, one token at a time in float64:
    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = scale q_t S_t
"""

from __future__ import annotations

import importlib

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.delta import SPECS, DeltaNet, GatedDeltaNet
from archbench.ops.decay import SAFE_LOG_RANGE
from archbench.ops.delta_rule import (
    delta_rule,
    delta_rule_step,
    gated_delta_rule,
    gated_delta_rule_step,
    l2norm,
)
from archbench.ops.prologue import BACKENDS
from archbench.ops.wy import SERIAL_LOOP, ChunkPass, UTTransform
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import delta_rule_loop as oracle
from oracles import rel

HAS_FLA_GPU = torch.cuda.is_available() and importlib.util.find_spec("fla") is not None


def make_inputs(B=2, T=63, H=3, K=8, V=12, dtype=torch.float32, gate="logsigmoid", beta_near_one=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    if beta_near_one:
        beta = 1.0 - 1e-3 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    else:
        beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    if gate == "logsigmoid":
        g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype))
    elif gate == "strong":  # log-decay -5 .. -20 per step
        g = -5.0 - 15.0 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    else:
        g = None
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return q, k, v, beta, g, s0


def run_op(q, k, v, beta, g, **kw):
    if g is None:
        return delta_rule(q, k, v, beta, **kw)
    return gated_delta_rule(q, k, v, g, beta, **kw)


# ---- the op: chunked reference vs the recurrence ------------------------------------------


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("chunk_size", [16, 37, 64])
def test_chunked_matches_oracle(gated, T, chunk_size):
    q, k, v, beta, g, s0 = make_inputs(T=T, gate="logsigmoid" if gated else None, seed=T + chunk_size)
    o, s = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    ro, rs = oracle(q, k, v, beta, g, initial_state=s0)
    assert o.dtype == v.dtype and o.shape == v.shape and s.shape == s0.shape
    assert rel(o, ro) < 1e-4 and rel(s, rs) < 1e-4


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_no_initial_state_and_no_final_state(gated):
    q, k, v, beta, g, _ = make_inputs(T=50, gate="logsigmoid" if gated else None)
    o, s = run_op(q, k, v, beta, g, chunk_size=16)
    assert s is None
    assert rel(o, oracle(q, k, v, beta, g)[0]) < 1e-4


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_split_sequence_with_state(gated):
    q, k, v, beta, g, s0 = make_inputs(T=100, gate="logsigmoid" if gated else None, seed=3)
    o, s = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=32)
    cut = 37
    first = [x[:, :cut] if x is not None else None for x in (q, k, v, beta, g)]
    second = [x[:, cut:] if x is not None else None for x in (q, k, v, beta, g)]
    o1, s1 = run_op(*first, initial_state=s0, output_final_state=True, chunk_size=32)
    o2, s2 = run_op(*second, initial_state=s1, output_final_state=True, chunk_size=32)
    assert rel(torch.cat([o1, o2], 1), o) < 1e-5
    assert rel(s2, s) < 1e-5


@pytest.mark.parametrize(
    "gated, pairwise", [(False, False), (True, False), (True, True)], ids=["delta", "gated", "gated-pairwise"]
)
def test_gradients_match_oracle(gated, pairwise, monkeypatch):
    """pairwise: no chunk's decay range counts as safe, so Gamma is built pair by pair (the
    strong-decay path) rather than as the outer product e^{gamma_i} e^{-gamma_j}."""
    if pairwise:
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, 0.0)
    gate = "logsigmoid" if gated else None
    q, k, v, beta, g, s0 = make_inputs(B=1, T=21, H=2, K=4, V=5, dtype=torch.float64, gate=gate)
    inputs = [q, k, v, beta, s0] + ([g] if gated else [])
    for x in inputs:
        x.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(q.shape[:3] + (v.shape[-1],), generator=gen, dtype=torch.float64)
    ds = torch.randn(s0.shape, generator=gen, dtype=torch.float64)

    def grads(fn):
        o, s = fn()
        return torch.autograd.grad((o * do).sum() + (s * ds).sum(), inputs)

    got = grads(lambda: run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=8))
    want = grads(lambda: oracle(q, k, v, beta, g, initial_state=s0))
    for name, a, b in zip(["q", "k", "v", "beta", "s0", "g"], got, want):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < 1e-8, name


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_step_reproduces_chunked(gated):
    q, k, v, beta, g, s0 = make_inputs(T=40, gate="logsigmoid" if gated else None, seed=5)
    o, s = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=16)
    state = s0.float()
    outs = []
    for t in range(q.shape[1]):
        if gated:
            ot, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
        else:
            ot, state = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], state)
        outs.append(ot)
    assert rel(torch.stack(outs, 1), o) < 1e-5
    assert rel(state, s) < 1e-5


@pytest.mark.parametrize("chunk_size", [32, 64])
def test_strong_decay_and_beta_near_one_are_stable(chunk_size):
    """log-decays of -5..-20 per step (exp(cumsum) underflows inside a chunk) and beta ~ 1."""
    q, k, v, beta, g, s0 = make_inputs(T=100, gate="strong", beta_near_one=True, seed=11)
    o, s = gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    ro, rs = oracle(q, k, v, beta, g, initial_state=s0)
    assert rel(o, ro) < 1e-4 and rel(s, rs) < 1e-4
    # gradients stay finite through the masked exps
    q.requires_grad_(True)
    g.requires_grad_(True)
    o, _ = gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size)
    dq, dg = torch.autograd.grad(o.square().sum(), [q, g])
    assert torch.isfinite(dq).all() and torch.isfinite(dg).all()


def test_repeated_keys_with_beta_one():
    """The worst case of the UT transform: one key repeated in a whole chunk, beta = 1."""
    q, k, v, beta, _, _ = make_inputs(T=70, H=2)
    k = k[:, :1].expand_as(k).contiguous()
    beta = torch.ones_like(beta)
    o, s = delta_rule(q, k, v, beta, output_final_state=True, chunk_size=64)
    ro, rs = oracle(q, k, v, beta)
    assert rel(o, ro) < 1e-4 and rel(s, rs) < 1e-4


def test_zero_gate_is_the_delta_rule():
    q, k, v, beta, g, s0 = make_inputs(T=50)
    a, sa = delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    zero = torch.zeros_like(g)
    b, sb = gated_delta_rule(q, k, v, zero, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    assert rel(a, b) < 1e-6 and rel(sa, sb) < 1e-6


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_float64_is_float64_accurate_at_an_unrepresentable_scale(gated):
    """Head dim 32: the default scale 32**-0.5 has no exact float32 value, so a scale rounded to
    float32 anywhere in the op would leave a relative error near 1e-8 in a float64 run."""
    q, k, v, beta, g, s0 = make_inputs(B=1, T=21, H=2, K=32, V=4, dtype=torch.float64, gate="logsigmoid" if gated else None)
    assert torch.tensor(32**-0.5, dtype=torch.float32).double().item() != 32**-0.5
    o, s = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=8)
    ro, rs = oracle(q, k, v, beta, g, initial_state=s0)
    assert rel(o, ro) < 1e-12 and rel(s, rs) < 1e-12


def test_qk_l2norm_option_and_scale():
    q, k, v, beta, g, _ = make_inputs(T=30)
    k_raw = 3.0 * torch.randn_like(k)
    o, _ = gated_delta_rule(q, k_raw, v, g, beta, scale=0.5, qk_l2norm=True, chunk_size=16)
    ro, _ = oracle(l2norm(q), l2norm(k_raw), v, beta, g, scale=0.5)
    assert rel(o, ro) < 1e-4


def test_hand_written_backward_passes_gradcheck():
    """The chunk loops carry their own reverse passes; check them against finite differences."""
    gen = torch.Generator().manual_seed(0)
    a = 0.3 * torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    b = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(UTTransform.apply, (a.requires_grad_(), b.requires_grad_()))
    N, BH, C, K, V = 3, 2, 4, 3, 5
    u = torch.randn(N * BH, C, V, generator=gen, dtype=torch.float64, requires_grad=True)
    w = 0.3 * torch.randn(N, BH, C, K, generator=gen, dtype=torch.float64)
    kt = 0.3 * torch.randn(N, BH, K, C, generator=gen, dtype=torch.float64)
    decay = torch.rand(N, BH, 1, 1, generator=gen, dtype=torch.float64)
    s = torch.randn(BH, K, V, generator=gen, dtype=torch.float64)
    args = (u, w.requires_grad_(), kt.requires_grad_(), decay.requires_grad_(), s.requires_grad_())
    # the pass overwrites its first input (U) with the pseudo-values, so hand it a copy
    assert torch.autograd.gradcheck(lambda u, *x: ChunkPass.apply(u.clone(), *x, None, -1.0), args)
    delta = lambda u, w, kt, s: ChunkPass.apply(u.clone(), w, kt, None, s, None, -1.0)  # noqa: E731
    assert torch.autograd.gradcheck(delta, (u, w, kt, s))
    # DPLR's form: u = U + W S, a decay per state row, and an additive term per chunk
    row_decay = torch.rand(N, BH, K, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    extra = torch.randn(N, BH, K, V, generator=gen, dtype=torch.float64, requires_grad=True)
    dplr_form = lambda u, w, kt, d, s, x: ChunkPass.apply(u.clone(), w, kt, d, s, x, 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(dplr_form, (u, w, kt, row_decay, s, extra))
    no_decay = lambda u, w, kt, s, x: ChunkPass.apply(u.clone(), w, kt, None, s, x, 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(no_decay, (u, w, kt, s, extra))


def test_serial_loop_flag_restores_threads(monkeypatch):
    cp = importlib.import_module("archbench.ops.wy")

    q, k, v, beta, g, _ = make_inputs(T=40)
    threads = torch.get_num_threads()
    expect, _ = gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    assert not SERIAL_LOOP  # off by default: rows record the thread count the op really used
    monkeypatch.setattr(cp, "SERIAL_LOOP", True)
    o, _ = gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(o, expect)


def test_half_precision_inputs_accumulate_in_fp32():
    q, k, v, beta, g, s0 = make_inputs(T=40)
    o, s = gated_delta_rule(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), g, beta.bfloat16(), initial_state=s0, output_final_state=True
    )
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel(o, oracle(q.bfloat16(), k.bfloat16(), v.bfloat16(), beta.bfloat16(), g, initial_state=s0)[0]) < 1e-2


def test_bad_arguments():
    q, k, v, beta, g, _ = make_inputs(T=10)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        delta_rule(q, k, v, beta, backend="triton")
    with pytest.raises(ValueError, match="beta"):
        delta_rule(q, k, v, beta[..., :1])
    with pytest.raises(ValueError, match="g"):
        gated_delta_rule(q, k, v, g[:, :3], beta)
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="float16/bfloat16"):
        delta_rule(q, k, v, beta, backend="fla")  # fla's ungated kernel has no fp32 path
    assert BACKENDS == ("torch", "fla", "auto")
    if not HAS_FLA_GPU:  # auto falls back to the reference on CPU
        assert rel(delta_rule(q, k, v, beta, backend="auto")[0], delta_rule(q, k, v, beta)[0]) == 0.0


# ---- fused backend (CUDA, or Triton's CPU interpreter) ------------------------------------


@needs_fla
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fla_matches_reference(gated, dtype):
    if dtype == torch.float32 and not gated:
        pytest.skip("fla's chunk_delta_rule supports only fp16/bf16")
    q, k, v, beta, g, s0 = make_inputs(B=2, T=300, H=4, K=64, V=64, gate="logsigmoid" if gated else None)
    dtype = half(dtype)
    q, k, v, beta = (x.to(FLA_DEVICE, dtype) for x in (q, k, v, beta))
    g = g.to(FLA_DEVICE) if gated else None
    s0 = s0.to(FLA_DEVICE)
    o, s = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, backend="fla")
    ro, rs = run_op(q, k, v, beta, g, initial_state=s0, output_final_state=True, backend="torch")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-2  # fla's fp32 path uses TF32 dots
    assert o.dtype == v.dtype
    assert rel(o, ro) < tol and rel(s, rs) < tol
    # fla's in-kernel L2 norm == normalising first
    o2, _ = run_op(q * 3, k * 3, v, beta, g, qk_l2norm=True, backend="fla")
    ro2, _ = run_op(q * 3, k * 3, v, beta, g, qk_l2norm=True, backend="torch")
    assert rel(o2, ro2) < tol


@needs_fla
@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
def test_fla_mixer_matches_chunked(cls):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=128, n_heads=2, chunk_size=64)
    m = cls(cfg, "chunked").to(FLA_DEVICE, half(torch.bfloat16))
    x = torch.randn(2, 200, 128, device=FLA_DEVICE, dtype=half(torch.bfloat16))
    ref = m(x)
    m.backend = "fla"
    assert rel(m(x), ref) < 3e-2


# ---- mixers ----------------------------------------------------------------------------------


CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=16)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
@pytest.mark.parametrize("conv_size", [4, 0])
def test_mixer_step_reproduces_forward(cls, conv_size):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=32, n_heads=2, chunk_size=16, conv_size=conv_size)
    m = cls(cfg, "chunked")
    x = torch.randn(2, 37, 32)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2)
        ys = []
        for t in range(x.shape[1]):
            yt, state = m.step(x[:, t], state)
            ys.append(yt)
    assert y.shape == x.shape
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
@pytest.mark.parametrize("conv_size", [4, 2, 0])
@pytest.mark.parametrize("T", [1, 2, 3])
def test_mixer_prefill_short_prompts(cls, conv_size, T):
    """prefill on 1 token and on fewer tokens than the conv kernel: forward's outputs, conv
    windows zero-padded on the left as step keeps them, and step continues exactly."""
    torch.manual_seed(5)
    cfg = MixerConfig(d_model=32, n_heads=2, chunk_size=16, conv_size=conv_size)
    m = cls(cfg, "chunked").double()
    x = torch.randn(2, T + 5, 32, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        y_pre, state = m.prefill(x[:, :T])
        torch.testing.assert_close(y_pre, y[:, :T], rtol=1e-7, atol=1e-8)
        ref = m.init_state(2)
        assert state["S"].shape == ref["S"].shape and state["S"].dtype == torch.float64
        if conv_size == 0:
            assert state["conv"] is None
        else:
            _, stepped = m.step(x[:, 0], ref)  # the conv windows after the first token, by step
            for c, (got, want) in enumerate(zip(state["conv"], ref["conv"])):
                assert got.shape == want.shape == (2, 32, conv_size - 1)
                if T == 1:
                    torch.testing.assert_close(got, stepped["conv"][c], rtol=0, atol=0)
                if T < conv_size - 1:  # fewer inputs than the window: zeros on the left
                    assert (got[..., : conv_size - 1 - T] == 0).all()
        for t in range(T, x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
def test_mixer_is_causal_and_trains(cls):
    torch.manual_seed(0)
    m = cls(CFG, "chunked")
    x = torch.randn(1, 40, 32)
    y = m(x)
    x2 = x.clone()
    x2[:, 25:] += torch.randn_like(x2[:, 25:])
    with torch.no_grad():
        y2 = m(x2)
    torch.testing.assert_close(y2[:, :25], y[:, :25].detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(y2[:, 25:], y[:, 25:])
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
def test_mixer_chunk_size_does_not_change_output(cls):
    torch.manual_seed(0)
    m = cls(CFG, "chunked")
    x = torch.randn(1, 50, 32)
    with torch.no_grad():
        a = m(x)
        m.config = MixerConfig(d_model=32, n_heads=2, chunk_size=7)
        b = m(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mixer_state_bytes_and_bad_backend():
    m = DeltaNet(CFG, "chunked")
    h, hd = CFG.n_heads, CFG.hd
    conv = 3 * h * hd * (CFG.conv_size - 1) * 4
    assert m.state_bytes(3, 10) == m.state_bytes(3, 10_000) == 3 * (h * hd * hd * 4 + conv)
    with pytest.raises(ValueError, match="fla, chunked"):
        GatedDeltaNet(CFG, "flex")


def test_specs():
    names = {s.name: s for s in SPECS}
    assert set(names) == {"deltanet", "gated_deltanet"}
    for spec in SPECS:
        assert spec.family == "linear/delta-rule"
        assert spec.backend_names == ["fla", "chunked"]
        assert spec.resolve_backend("auto", "cpu") == "chunked"
        assert spec.backend("fla").unavailable_reason("cpu", "bfloat16") is not None
        assert spec.flops(CFG, 2, 128) > 0
        assert isinstance(spec.build(CFG, "chunked"), (DeltaNet, GatedDeltaNet))
    assert names["gated_deltanet"].flops(CFG, 1, 64) > names["deltanet"].flops(CFG, 1, 64)
