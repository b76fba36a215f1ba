"""Gated DeltaProduct: chunked reference == the recurrence, step == chunked, the mixer, and fla.

The oracle is the recurrence written literally, token by token and step by step, in float64:
    S <- exp(g_t) S;  for j = 1..n: S <- S + beta_{t,j} k_{t,j}^T (v_{t,j} - k_{t,j} S);  o_t = scale q_t S
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.delta import gated_deltanet_flops
from archbench.mixers.delta_product import SPECS, GatedDeltaProduct
from archbench.ops.delta_product import gated_delta_product, gated_delta_product_step
from archbench.ops.delta_rule import gated_delta_rule
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import assert_decode_matches_forward, assert_grads_match, delta_rule_loop, rel


def oracle(q, k, v, g, beta, n, scale=None, initial_state=None):
    return delta_rule_loop(q, k, v, beta, g, n, scale=scale, initial_state=initial_state)


def make_inputs(n=2, B=2, T=25, H=3, K=8, V=6, dtype=torch.float32, seed=0, gated=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T * n, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T * n, H, V, generator=gen, dtype=dtype)
    beta = 2.0 * torch.rand(B, T * n, H, generator=gen, dtype=dtype)  # (0, 2): negative eigenvalues allowed
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype)) if gated else None
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return q, k, v, g, beta, s0


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
@pytest.mark.parametrize("n,T,chunk_size", [(2, 1, 16), (2, 25, 16), (3, 30, 7), (1, 20, 8)])
def test_chunked_matches_oracle(gated, n, T, chunk_size):
    q, k, v, g, beta, s0 = make_inputs(n=n, T=T, seed=T + n, gated=gated)
    o, s = gated_delta_product(q, k, v, g, beta, n, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    ro, rs = oracle(q, k, v, g, beta, n, initial_state=s0)
    assert o.shape == q.shape[:3] + (v.shape[-1],) and o.dtype == v.dtype
    assert rel(o, ro) < 1e-5 and rel(s, rs) < 1e-5


def test_float64_values_states_and_gradients_match_oracle():
    """Head dim 32 (a scale float32 cannot represent), 2 steps per token, 11 tokens in chunks of 8 steps."""
    n = 2
    q, k, v, g, beta, s0 = make_inputs(n=n, B=1, T=11, H=2, K=32, V=5, dtype=torch.float64)
    inputs = [q, k, v, g, beta, s0]
    for x in inputs:
        x.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(q.shape[:3] + (5,), generator=gen, dtype=torch.float64)
    ds = torch.randn(s0.shape, generator=gen, dtype=torch.float64)
    o, s = gated_delta_product(q, k, v, g, beta, n, initial_state=s0, output_final_state=True, chunk_size=8)
    ro, rs = oracle(q, k, v, g, beta, n, initial_state=s0)
    assert rel(o, ro) < 1e-12 and rel(s, rs) < 1e-12
    assert_grads_match((o, s), (ro, rs), (do, ds), inputs, ["q", "k", "v", "g", "beta", "s0"], 1e-9)


def test_one_step_per_token_is_the_gated_delta_rule():
    q, k, v, g, beta, s0 = make_inputs(n=1, T=30, seed=4)
    beta = beta / 2
    a, sa = gated_delta_product(q, k, v, g, beta, 1, initial_state=s0, output_final_state=True, chunk_size=16)
    b, sb = gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    assert rel(a, b) < 1e-6 and rel(sa, sb) < 1e-6


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
def test_step_reproduces_chunked(gated):
    n = 3
    q, k, v, g, beta, s0 = make_inputs(n=n, T=20, seed=5, gated=gated)
    o, s = gated_delta_product(q, k, v, g, beta, n, initial_state=s0, output_final_state=True, chunk_size=16)
    B, T, H = q.shape[:3]
    ks, vs, bs = k.unflatten(1, (T, n)), v.unflatten(1, (T, n)), beta.unflatten(1, (T, n))
    state, outs = s0.float(), []
    for t in range(T):
        o_t, state = gated_delta_product_step(q[:, t], ks[:, t], vs[:, t], None if g is None else g[:, t], bs[:, t], state)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o) < 1e-5 and rel(state, s) < 1e-5


def test_bad_arguments():
    q, k, v, g, beta, s0 = make_inputs(n=2, T=6)
    with pytest.raises(ValueError, match=r"k \[B, T\*n, H, K\]"):
        gated_delta_product(q, k, v, g, beta, 3)
    with pytest.raises(ValueError, match="num_householder"):
        gated_delta_product(q, k, v, g, beta, 0)
    with pytest.raises(ValueError, match="beta"):
        gated_delta_product(q, k, v, g, beta[:, :6], 2)
    with pytest.raises(ValueError, match="g"):
        gated_delta_product(q, k, v, g[:, :2], beta, 2)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        gated_delta_product(q, k, v, g, beta, 2, backend="triton")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        gated_delta_product(q, k, v, g, beta, 2, backend="fla")


# ---- mixer and registry entry --------------------------------------------------------------

CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=8)


@pytest.mark.parametrize("conv_size", [4, 0])
@pytest.mark.parametrize("neg", [False, True], ids=["beta01", "beta02"])
def test_mixer_step_and_prefill_reproduce_forward(conv_size, neg):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=32, n_heads=2, chunk_size=8, conv_size=conv_size)
    m = GatedDeltaProduct(cfg, num_householder=3, allow_neg_eigval=neg).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 7)
    assert m._gates(x)[1].max() > 1.0 if neg else m._gates(x)[1].max() < 1.0


def test_mixer_state_bytes_and_flops_grow_with_n():
    m = GatedDeltaProduct(CFG, num_householder=2)
    h, hd, w = 2, 16, CFG.conv_size - 1
    assert m.state_bytes(3, 10) == m.state_bytes(3, 10_000) == 3 * 4 * (h * hd * hd + (1 + 2 + 2) * h * hd * w)
    (spec,) = SPECS
    assert spec.flops(CFG, 1, 256) > 1.5 * gated_deltanet_flops(CFG, 1, 256)  # twice the recurrence, more projections
    assert spec.flops(CFG, 1, 256) > spec.flops(CFG, 1, 128)
    with pytest.raises(ValueError, match="num_householder"):
        GatedDeltaProduct(CFG, num_householder=0)


def test_spec():
    (spec,) = SPECS
    assert spec.name == "gated_deltaproduct" and spec.family == "linear/delta-rule"
    assert spec.backend_names == ["fla", "chunked"] and spec.resolve_backend("auto", "cpu") == "chunked"
    assert spec.backend("fla").unavailable_reason("cpu", "float32") is not None
    assert "256" in spec.backend("fla").config_reason(MixerConfig(d_model=512, n_heads=1))
    assert isinstance(spec.build(CFG, "chunked"), GatedDeltaProduct) and spec.build(CFG, "chunked").n == 2


@needs_fla
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
def test_fla_matches_reference(gated):
    n, dtype = 2, half(torch.bfloat16)
    q, k, v, g, beta, s0 = make_inputs(n=n, B=1, T=40, H=2, K=32, V=32, seed=7, gated=gated)
    beta = beta / 2
    q, k, v, beta = (x.to(FLA_DEVICE, dtype) for x in (q, k, v, beta))
    g = None if g is None else g.to(FLA_DEVICE)
    s0 = s0.to(FLA_DEVICE)
    o, s = gated_delta_product(q, k, v, g, beta, n, initial_state=s0, output_final_state=True, backend="fla")
    ro, rs = gated_delta_product(q, k, v, g, beta, n, initial_state=s0, output_final_state=True, backend="torch")
    assert o.dtype == dtype and rel(o, ro) < 2e-2 and rel(s, rs) < 2e-2
    T = q.shape[1]
    args = (q[:, 0], k.unflatten(1, (T, n))[:, 0], v.unflatten(1, (T, n))[:, 0], None if g is None else g[:, 0])
    ot, st = gated_delta_product_step(*args, beta.unflatten(1, (T, n))[:, 0], s0, backend="fla")
    rt, rst = gated_delta_product_step(*args, beta.unflatten(1, (T, n))[:, 0], s0, backend="torch")
    assert rel(ot, rt) < 2e-2 and rel(st, rst) < 2e-2
