"""Lightning Attention (MiniMax-01): chunked reference == the recurrence, step == chunked, the
decay schedule, the mixer, and fla's kernel.

The oracle is the recurrence written literally, one token at a time in float64:
    S_t = exp(-s_h) S_{t-1} + k_t^T v_t,   o_t = scale q_t S_t
"""

from __future__ import annotations

import math

import pytest
import torch

from archbench.mixers.base import MixerConfig
from archbench.mixers.lightning import SPECS, LightningAttention
from archbench.ops.lightning import lightning_attention, lightning_attention_step, minimax_slopes
from fused_devices import FLA_DEVICE, needs_fla
from oracles import assert_decode_matches_forward, rel


def oracle(q, k, v, slopes, scale, initial_state):
    S = initial_state.double()
    decay = torch.exp(-slopes.double())[None, :, None, None]
    outs = []
    for t in range(q.shape[1]):
        S = decay * S + torch.einsum("bhk,bhv->bhkv", k[:, t].double(), v[:, t].double())
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].double(), S) * scale)
    return torch.stack(outs, 1), S


def make_inputs(B=2, T=45, H=4, K=8, V=6, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return q, k, v, minimax_slopes(H).to(dtype), s0


def test_minimax_slopes_follow_the_paper_schedule():
    s = minimax_slopes(8)
    want = torch.tensor([2.0 ** (-(h + 1)) for h in range(8)]) * (1 + 1e-5)  # 2^{-8 (h+1) / 8}
    torch.testing.assert_close(s, want)
    last = minimax_slopes(8, layer_idx=9, num_layers=10)
    assert (last < 1e-4 * s).all() and (last > 0).all()  # the deepest layer barely forgets
    assert (minimax_slopes(8, 4, 10) < s).all()
    with pytest.raises(ValueError, match="layer_idx < num_layers"):
        minimax_slopes(8, layer_idx=3, num_layers=3)


@pytest.mark.parametrize("T,chunk_size", [(1, 16), (45, 16), (100, 37)])
def test_chunked_matches_oracle_in_float64(T, chunk_size):
    """Head dim 32 and MiniMax's scale 1 and the default K**-0.5 (not representable in float32)."""
    q, k, v, slopes, s0 = make_inputs(T=T, K=32, dtype=torch.float64, seed=T)
    for scale in (1.0, None):
        o, s = lightning_attention(q, k, v, slopes, scale, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
        ro, rs = oracle(q, k, v, slopes, 32**-0.5 if scale is None else scale, s0)
        assert o.dtype == torch.float64 and rel(o, ro) < 1e-12 and rel(s, rs) < 1e-12


def test_gradients_match_oracle():
    q, k, v, slopes, s0 = make_inputs(B=1, T=21, H=2, K=4, V=5, dtype=torch.float64)
    inputs = [q, k, v, s0]
    for x in inputs:
        x.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    o, s = lightning_attention(q, k, v, slopes, 1.0, initial_state=s0, output_final_state=True, chunk_size=8)
    ro, rs = oracle(q, k, v, slopes, 1.0, s0)
    got = torch.autograd.grad((o * do).sum() + s.sum(), inputs)
    want = torch.autograd.grad((ro * do).sum() + rs.sum(), inputs)
    for name, a, b in zip("q k v s0".split(), got, want):
        assert rel(a, b) < 1e-10, name


def test_step_reproduces_chunked():
    q, k, v, slopes, s0 = make_inputs(T=40, seed=3)
    o, s = lightning_attention(q, k, v, slopes, 1.0, initial_state=s0, output_final_state=True, chunk_size=16)
    state, outs = s0, []
    for t in range(q.shape[1]):
        o_t, state = lightning_attention_step(q[:, t], k[:, t], v[:, t], slopes, state, scale=1.0)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o) < 1e-5 and rel(state, s) < 1e-5


def test_bad_slopes():
    q, k, v, slopes, _ = make_inputs(T=5)
    with pytest.raises(ValueError, match=r"slopes \[H\]"):
        lightning_attention(q, k, v, slopes[:2])


# ---- mixer and registry entry --------------------------------------------------------------

CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=8)


def test_mixer_step_and_prefill_reproduce_forward():
    torch.manual_seed(0)
    m = LightningAttention(CFG).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 11)


def test_mixer_layer_depth_sets_the_decays():
    first, deep = LightningAttention(CFG), LightningAttention(CFG, layer_idx=3, num_layers=4)
    assert math.isclose(first.slopes[0].item(), 2.0**-4 * (1 + 1e-5), rel_tol=1e-6)  # H = 2: 2^{-8/2}
    assert (deep.slopes < 1e-4 * first.slopes).all()
    assert first.state_bytes(3, 10) == first.state_bytes(3, 10_000) == 3 * 2 * 16 * 16 * 4
    with pytest.raises(ValueError, match="fla, chunked"):
        LightningAttention(CFG, "flex")


def test_spec():
    (spec,) = SPECS
    assert spec.name == "lightning_attention" and spec.family == "linear/retention"
    assert spec.backend_names == ["fla", "chunked"] and spec.resolve_backend("auto", "cpu") == "chunked"
    assert spec.flops(CFG, 1, 512) > spec.flops(CFG, 1, 256) > 0


@needs_fla
def test_fla_matches_reference():
    q, k, v, slopes, s0 = make_inputs(B=1, T=80, H=2, K=32, V=32, seed=7)
    q, k, v, slopes, s0 = (x.to(FLA_DEVICE) for x in (q, k, v, slopes, s0))
    o, s = lightning_attention(q, k, v, slopes, 1.0, initial_state=s0, output_final_state=True, backend="fla")
    ro, rs = lightning_attention(q, k, v, slopes, 1.0, initial_state=s0, output_final_state=True, backend="torch")
    assert rel(o, ro) < 1e-2 and rel(s, rs) < 1e-2
    ot, st = lightning_attention_step(q[:, 0], k[:, 0], v[:, 0], slopes, s0, scale=1.0, backend="fla")
    rt, rst = lightning_attention_step(q[:, 0], k[:, 0], v[:, 0], slopes, s0, scale=1.0, backend="torch")
    assert rel(ot, rt) < 1e-2 and rel(st, rst) < 1e-2
