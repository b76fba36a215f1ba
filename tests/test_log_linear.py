"""Log-linear attention (Mamba-2 decay): chunked reference == the definition, step == chunked,
state carry across calls, the mixer, and fla's kernel.

The oracle is the definition written literally, in float64, one query at a time:
    o_t = scale sum_{s <= t} lambda_t^(lev(t, s)) e^{G_t - G_s} (q_t . k_s) v_s,  lev(t, s) = bit_length(t XOR s)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.log_linear import SPECS, LogLinearMamba2
from archbench.ops.gla import simple_gla
from archbench.ops.log_linear import levels_needed, log_linear_attention, log_linear_attention_step
from fused_devices import FLA_DEVICE, needs_fla
from oracles import assert_decode_matches_forward, rel


def oracle(q, k, v, g, lam, scale):
    B, T, G, K = q.shape
    H = v.shape[2]
    q, k = (x.double().repeat_interleave(H // G, dim=2) for x in (q, k))
    v, lam = v.double(), lam.double()
    G_ = g.double().cumsum(1)
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            w = lam[:, t, :, (t ^ s).bit_length()] * torch.exp(G_[:, t] - G_[:, s]) * (q[:, t] * k[:, s]).sum(-1)
            o[:, t] += w[..., None] * v[:, s]
    return o * scale


def make_inputs(B=2, T=45, G=1, H=2, K=8, V=4, L=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, G, K, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype))
    lam = F.softplus(torch.randn(B, T, H, L, generator=gen, dtype=dtype))
    return q, k, v, g, lam


def test_levels_needed():
    assert [levels_needed(n) for n in (0, 1, 2, 3, 4, 5, 16384, 16385)] == [1, 1, 2, 3, 3, 4, 15, 16]


@pytest.mark.parametrize("T,chunk_size", [(1, 8), (45, 8), (45, 16), (64, 37), (100, 64)])
def test_chunked_matches_definition_in_float64(T, chunk_size):
    """Head dim 32 with the default scale (not representable in float32), two value heads per q/k group."""
    q, k, v, g, lam = make_inputs(T=T, K=32, dtype=torch.float64, seed=T)
    o, s = log_linear_attention(q, k, v, g, lam, output_final_state=True, chunk_size=chunk_size)
    assert o.shape == v.shape and s.shape == (2, 2, 8, 32, 4)
    assert rel(o, oracle(q, k, v, g, lam, 32**-0.5)) < 1e-12


def test_unit_level_weights_are_mamba2():
    q, k, v, g, _ = make_inputs(T=50, G=2, seed=1)
    o, _ = log_linear_attention(q, k, v, g, torch.ones(2, 50, 2, 8), chunk_size=16)
    want, _ = simple_gla(q, k, v, g, chunk_size=16)
    assert rel(o, want) < 1e-5


def test_gradients_match_definition():
    q, k, v, g, lam = make_inputs(B=1, T=21, K=4, V=3, L=6, dtype=torch.float64, seed=2)
    inputs = [q, k, v, g, lam]
    for x in inputs:
        x.requires_grad_(True)
    do = torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = torch.autograd.grad((log_linear_attention(q, k, v, g, lam, chunk_size=4)[0] * do).sum(), inputs)
    want = torch.autograd.grad((oracle(q, k, v, g, lam, 0.5) * do).sum(), inputs)
    for name, a, b in zip("q k v g lam".split(), got, want):
        assert rel(a, b) < 1e-10, name


def test_step_and_split_calls_continue_the_sequence():
    """Token by token, and in calls cut at unaligned points (state + offset), equal one call."""
    q, k, v, g, lam = make_inputs(T=41, seed=4)
    o, s = log_linear_attention(q, k, v, g, lam, output_final_state=True, chunk_size=8)
    state, outs = torch.zeros(2, 2, 8, 8, 4), []
    for t in range(41):
        o_t, state = log_linear_attention_step(q[:, t], k[:, t], v[:, t], g[:, t], lam[:, t], state, t)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o) < 1e-5 and rel(state, s) < 1e-5
    pieces, state, offset = [], None, 0
    for a, b in ((0, 5), (5, 30), (30, 41)):
        part = [x[:, a:b] for x in (q, k, v, g, lam)]
        o_p, state = log_linear_attention(*part, initial_state=state, offset=offset, output_final_state=True, chunk_size=8)
        pieces.append(o_p)
        offset = b
    assert rel(torch.cat(pieces, 1), o) < 1e-5 and rel(state, s) < 1e-5


def test_bad_arguments():
    q, k, v, g, lam = make_inputs(T=20, L=4)
    with pytest.raises(ValueError, match="need 6 levels"):
        log_linear_attention(q, k, v, g, lam)  # 20 tokens: bit_length(19) + 1 = 6 levels
    q, k, v, g, lam = make_inputs(T=6, L=8)
    with pytest.raises(ValueError, match="offset"):
        log_linear_attention(q, k, v, g, lam, offset=3)
    with pytest.raises(ValueError, match="multiple of q/k groups"):
        log_linear_attention(q.expand(-1, -1, 3, -1), k.expand(-1, -1, 3, -1), v, g, lam)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        log_linear_attention(q, k, v, g, lam, backend="triton")


# ---- mixer and registry entry --------------------------------------------------------------

CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=8, d_state=8)


def test_mixer_step_and_prefill_reproduce_forward():
    torch.manual_seed(0)
    m = LogLinearMamba2(CFG).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 11)


def test_mixer_state_grows_with_log_t():
    m = LogLinearMamba2(CFG)
    per_level = 2 * m.n_heads * 8 * m.head_dim * 4
    conv = m.conv.state_bytes(2)
    assert m.state_bytes(2, 1023) == conv + 11 * per_level  # the query at position 1023 reads 11 levels
    assert m.state_bytes(2, 1024) == conv + 12 * per_level
    assert m.state_bytes(2, 1 << 30) == conv + m.num_levels * per_level
    with pytest.raises(ValueError, match="fla, chunked"):
        LogLinearMamba2(CFG, "mamba_ssm")


def test_spec():
    (spec,) = SPECS
    assert spec.name == "log_linear_mamba2" and spec.family == "ssm/log-linear"
    assert spec.backend_names == ["fla", "chunked"] and spec.resolve_backend("auto", "cpu") == "chunked"
    assert spec.flops(CFG, 1, 4096) > 2 * spec.flops(CFG, 1, 2048)  # T log T
    assert spec.decode_cost(CFG, 1, 4096) > spec.decode_cost(CFG, 1, 16) > 0  # more levels to read


@needs_fla
def test_fla_matches_reference():
    """K and V that the kernel does not take directly (padded by the adapter), 2 value heads per group."""
    q, k, v, g, lam = make_inputs(B=1, T=70, G=1, H=2, K=16, V=12, L=8, seed=7)
    q, k, v, g, lam = (x.to(FLA_DEVICE) for x in (q, k, v, g, lam))
    o, _ = log_linear_attention(q, k, v, g, lam, scale=1.0, backend="fla")
    ro, _ = log_linear_attention(q, k, v, g, lam, scale=1.0, backend="torch")
    assert rel(o, ro) < 1e-2
