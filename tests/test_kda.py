"""Kimi Delta Attention: chunked reference == the recurrence, step == chunked, the mixer, and fla.

The oracle is the recurrence written literally, one token at a time in float64:
    S_t = (I - beta_t k_t^T k_t) Diag(exp(g_t)) S_{t-1} + beta_t k_t^T v_t,   o_t = scale q_t S_t
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.kda import SPECS, KimiDeltaAttention
from archbench.ops.decay import SAFE_LOG_RANGE
from archbench.ops.delta_rule import gated_delta_rule, l2norm
from archbench.ops.kda import _leaf_size, kda, kda_step
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import assert_decode_matches_forward, assert_grads_match, delta_rule_loop, rel


def oracle(q, k, v, g, beta, scale=None, initial_state=None):
    return delta_rule_loop(q, k, v, beta, g, scale=scale, initial_state=initial_state)


def make_inputs(B=2, T=45, H=3, K=8, V=6, dtype=torch.float32, seed=0, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = strength * F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=dtype))
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return q, k, v, g, beta, s0


@pytest.mark.parametrize("T", [1, 45, 100])
@pytest.mark.parametrize("chunk_size", [16, 37])
@pytest.mark.parametrize("safe_range", [None, 5.0, 0.0], ids=["factored", "blocks", "single-positions"])
def test_chunked_matches_oracle(T, chunk_size, safe_range, monkeypatch):
    """safe_range: the log-decay range counted as safe to factor (default, or small enough that
    chunks split into blocks of a few positions, or of one: the strong-decay paths)."""
    if safe_range is not None:
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float32, safe_range)
    q, k, v, g, beta, s0 = make_inputs(T=T, seed=T + chunk_size)
    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    ro, rs = oracle(q, k, v, g, beta, initial_state=s0)
    assert o.dtype == v.dtype and o.shape == v.shape and s.shape == s0.shape
    assert rel(o, ro) < 1e-5 and rel(s, rs) < 1e-5


@pytest.mark.parametrize("safe_range", [None, 5.0, 0.0], ids=["factored", "blocks", "single-positions"])
def test_float64_values_states_and_gradients_match_oracle(safe_range, monkeypatch):
    """Head dim 32 (a scale float32 cannot represent), T = 21 with chunks of 8."""
    if safe_range is not None:
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, safe_range)
    q, k, v, g, beta, s0 = make_inputs(B=1, T=21, H=2, K=32, V=5, dtype=torch.float64)
    inputs = [q, k, v, g, beta, s0]
    for x in inputs:
        x.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    ds = torch.randn(s0.shape, generator=gen, dtype=torch.float64)
    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=8)
    ro, rs = oracle(q, k, v, g, beta, initial_state=s0)
    assert rel(o, ro) < 1e-12 and rel(s, rs) < 1e-12
    assert_grads_match((o, s), (ro, rs), (do, ds), inputs, ["q", "k", "v", "g", "beta", "s0"], 1e-9)


def test_leaf_size_splits_chunks_only_as_far_as_needed():
    """Blocks halve until each spans a log-decay range safe to factor through its middle (80 in fp32)."""
    steps = torch.arange(1, 17, dtype=torch.float32)[None, :, None].expand(3, 16, 4)
    for rate, leaf in [(3.0, 16), (7.0, 8), (30.0, 2), (100.0, 1)]:  # ranges 48; 112 -> 56; 240, 120 -> 60; 100 per step
        gam = torch.zeros(3, 16, 4)
        gam[1, :, 2] = -rate * steps[1, :, 2]  # one channel of one chunk decays that fast
        assert _leaf_size(gam, torch.float32) == leaf, rate
    assert _leaf_size(torch.zeros(2, 12, 4) - 90 * torch.arange(1, 13)[:, None], torch.float32) == 1  # 12 -> 6 -> 3 -> 1


def test_strong_decays_stay_exact_and_finite():
    """log-decays down to about -40 per step and channel: Diag(e^Gamma) underflows inside a chunk."""
    q, k, v, g, beta, s0 = make_inputs(T=70, strength=20.0, seed=4)
    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=32)
    ro, rs = oracle(q, k, v, g, beta, initial_state=s0)
    assert torch.isfinite(o).all() and rel(o, ro) < 1e-4 and rel(s, rs) < 1e-4
    g.requires_grad_(True)
    (dg,) = torch.autograd.grad(kda(q, k, v, g, beta, chunk_size=32)[0].square().sum(), [g])
    assert torch.isfinite(dg).all()


def test_step_reproduces_chunked_and_split_carries_state():
    q, k, v, g, beta, s0 = make_inputs(T=40, seed=5)
    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    state, outs = s0.float(), []
    for t in range(q.shape[1]):
        ot, state = kda_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
        outs.append(ot)
    assert rel(torch.stack(outs, 1), o) < 1e-5 and rel(state, s) < 1e-5
    cut = 23
    o1, s1 = kda(*(x[:, :cut] for x in (q, k, v, g, beta)), initial_state=s0, output_final_state=True, chunk_size=16)
    o2, s2 = kda(*(x[:, cut:] for x in (q, k, v, g, beta)), initial_state=s1, output_final_state=True, chunk_size=16)
    assert rel(torch.cat([o1, o2], 1), o) < 1e-5 and rel(s2, s) < 1e-5


def test_one_decay_for_all_channels_is_the_gated_delta_rule():
    q, k, v, g, beta, s0 = make_inputs(T=50, seed=6)
    g_head = g[..., 0]
    a, sa = kda(q, k, v, g_head[..., None].expand_as(g), beta, initial_state=s0, output_final_state=True, chunk_size=16)
    b, sb = gated_delta_rule(q, k, v, g_head, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    assert rel(a, b) < 1e-5 and rel(sa, sb) < 1e-5


def test_qk_l2norm_and_scale_options():
    q, k, v, g, beta, _ = make_inputs(T=30)
    k_raw = 3.0 * torch.randn_like(k)
    o, final = kda(q, k_raw, v, g, beta, scale=0.5, qk_l2norm=True, chunk_size=16)
    assert final is None
    assert rel(o, oracle(l2norm(q), l2norm(k_raw), v, g, beta, scale=0.5)[0]) < 1e-5


def test_bad_arguments():
    q, k, v, g, beta, s0 = make_inputs(T=10)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        kda(q, k, v, g, beta, backend="triton")
    with pytest.raises(ValueError, match=r"g \[B, T, H, K\]"):
        kda(q, k, v, g[..., 0], beta)
    with pytest.raises(ValueError, match="beta"):
        kda(q, k, v, g, beta[..., :1])
    with pytest.raises(ValueError, match="initial_state"):
        kda(q, k, v, g, beta, initial_state=s0[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        kda(q, k, v, g, beta, chunk_size=0)


# ---- mixer and registry entry --------------------------------------------------------------

CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=8)


@pytest.mark.parametrize("conv_size", [4, 0])
def test_mixer_step_and_prefill_reproduce_forward(conv_size):
    torch.manual_seed(0)
    m = KimiDeltaAttention(MixerConfig(d_model=32, n_heads=2, chunk_size=8, conv_size=conv_size)).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 11)


def test_mixer_decay_is_per_channel_and_state_bytes():
    torch.manual_seed(0)
    m = KimiDeltaAttention(CFG)
    g, beta = m._gates(torch.randn(3, 5, 32))
    assert g.shape == (3, 5, 2, 16) and beta.shape == (3, 5, 2) and (g < 0).all()
    assert not torch.allclose(g, g[..., :1].expand_as(g))  # channels of one head decay differently
    conv = 3 * 2 * 16 * (CFG.conv_size - 1) * 4
    assert m.state_bytes(3, 10) == m.state_bytes(3, 10_000) == 3 * (2 * 16 * 16 * 4 + conv)
    with pytest.raises(ValueError, match="fla, chunked"):
        KimiDeltaAttention(CFG, "flex")


def test_spec():
    (spec,) = SPECS
    assert spec.name == "kda" and spec.family == "linear/delta-rule"
    assert spec.backend_names == ["fla", "chunked"]
    assert spec.resolve_backend("auto", "cpu") == "chunked"
    assert spec.flops(CFG, 1, 256) > 0
    wide = MixerConfig(d_model=512, n_heads=1)
    assert "256" in spec.backend("fla").config_reason(wide)
    assert spec.backend("chunked").config_reason(wide) is None


# ---- fused backend (CUDA, or Triton's CPU interpreter) ---------------------------------------


@needs_fla
def test_fla_matches_reference():
    q, k, v, g, beta, s0 = make_inputs(B=1, T=80, H=2, K=32, V=32, seed=7)
    q, k, v, g, beta, s0 = (x.to(FLA_DEVICE) for x in (q, k, v, g, beta, s0))
    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, backend="fla")
    ro, rs = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, backend="torch")
    assert o.dtype == v.dtype
    assert rel(o, ro) < 1e-2 and rel(s, rs) < 1e-2  # fla's fp32 path uses TF32 dots on a GPU
    # one decode step through fused_recurrent_kda
    ot, st = kda_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], s0, backend="fla")
    rt, rst = kda_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], s0, backend="torch")
    assert rel(ot, rt) < 1e-2 and rel(st, rst) < 1e-2
    # half precision, and the q/k L2 norm fused in the kernel
    dtype = half(torch.bfloat16)
    o2, _ = kda(*(x.to(dtype) for x in (q * 3, k * 3, v)), g, beta.to(dtype), qk_l2norm=True, backend="fla")
    ro2, _ = kda(q * 3, k * 3, v, g, beta, qk_l2norm=True, backend="torch")
    assert o2.dtype == dtype and rel(o2, ro2) < 3e-2
