"""Zoology's architectures (BaseConv, Hyena, H3, Based) and the short-convolution switch:
the ops against literal float64 loops, the mixers' recurrent forms against their parallel forms
(tests/test_zoo.py runs the catalogue contract over them too), and the switch's builds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from archbench import registry
from archbench.mixers.base import MixerConfig
from archbench.mixers.based import Based, taylor_features
from archbench.mixers.conv import H3, BaseConv, Hyena, ShortConvFront
from archbench.ops.long_conv import causal_long_conv, diag_ssm_kernel, diag_ssm_state, diag_ssm_step, long_conv_step
from oracles import assert_decode_matches_forward

CFG = MixerConfig(d_model=16, n_heads=2, chunk_size=4, d_state=6, window=5)


def test_causal_long_conv_matches_the_literal_sum():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 13, 3, dtype=torch.float64, generator=g)
    h = torch.randn(20, 3, dtype=torch.float64, generator=g)
    D = torch.randn(3, dtype=torch.float64, generator=g)
    want = torch.zeros_like(u)
    for t in range(13):
        for lag in range(t + 1):
            want[:, t] += h[lag] * u[:, t - lag]
        want[:, t] += D * u[:, t]
    torch.testing.assert_close(causal_long_conv(u, h, D), want, rtol=1e-10, atol=1e-10)
    hist, steps = None, []
    for t in range(13):
        y, hist = long_conv_step(u[:, t], hist, h, D)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-10, atol=1e-10)


def test_long_conv_refuses_a_short_filter():
    with pytest.raises(ValueError, match="L >= T"):
        causal_long_conv(torch.randn(1, 8, 2), torch.randn(4, 2))


def test_diag_ssm_kernel_is_the_recurrence():
    g = torch.Generator().manual_seed(1)
    C, N, T = 3, 4, 11
    log_a = -torch.rand(C, N, dtype=torch.float64, generator=g) - 0.05
    b, c = torch.randn(C, N, dtype=torch.float64, generator=g), torch.randn(C, N, dtype=torch.float64, generator=g)
    u = torch.randn(2, T, C, dtype=torch.float64, generator=g)
    x = torch.zeros(2, C, N, dtype=torch.float64)
    want = []
    for t in range(T):  # the literal recurrence x = a x + b u, y = c . x
        x = torch.exp(log_a) * x + b * u[:, t, :, None]
        want.append((c * x).sum(-1))
    want = torch.stack(want, 1)
    torch.testing.assert_close(causal_long_conv(u, diag_ssm_kernel(log_a, b, c, T)), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(diag_ssm_state(u, log_a, b), x, rtol=1e-10, atol=1e-10)
    state, steps = torch.zeros(2, C, N, dtype=torch.float64), []
    for t in range(T):
        y, state = diag_ssm_step(u[:, t], state, log_a, b, c)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-10, atol=1e-10)


def test_taylor_features_approximate_exp():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(5, 8, dtype=torch.float64, generator=g), torch.randn(5, 8, dtype=torch.float64, generator=g)
    s = (q * k).sum(-1) / math.sqrt(8)
    dot = (taylor_features(q) * taylor_features(k)).sum(-1)
    torch.testing.assert_close(dot, 1 + s + s**2 / 2, rtol=1e-12, atol=1e-12)
    assert taylor_features(q).shape[-1] == 1 + 8 + 64


def test_based_linear_branch_matches_a_literal_loop():
    """Based's output = normalised Taylor linear attention (a float64 loop here) + its window branch."""
    torch.manual_seed(0)
    m = Based(dataclasses.replace(CFG, conv_size=0), "naive").double()
    x = torch.randn(2, 9, CFG.d_model, dtype=torch.float64)
    q, k, v = m._project(x)  # phi(q), phi(k), [v, 1]
    S = torch.zeros(2, CFG.n_heads, q.shape[-1], v.shape[-1], dtype=torch.float64)
    outs = []
    for t in range(9):
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        outs.append(o[..., :-1] / (o[..., -1:] + 1e-6))
    linear = m.out(torch.stack(outs, 1).flatten(2))
    with torch.no_grad():
        torch.testing.assert_close(m(x), linear + m.swa(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls", [BaseConv, Hyena, H3])
def test_gated_convolutions_decode_like_their_forward_in_fp32(cls):
    torch.manual_seed(0)
    m = cls(CFG, "fft")
    x = torch.randn(2, 12, CFG.d_model)
    assert_decode_matches_forward(m, x, 7, from_start=False, rtol=1e-4, atol=1e-5)


def test_state_bytes_grow_only_for_the_long_convolutions():
    for name, grows in (("base_conv", True), ("hyena", True), ("h3", False), ("based", False)):
        m = registry.get(name).build(CFG, registry.get(name).reference.name)
        assert (m.state_bytes(1, 2048) > m.state_bytes(1, 1024)) == grows, name


def test_new_catalogue_entries_have_references():
    for name in ("base_conv", "hyena", "h3", "based"):
        spec = registry.get(name)
        assert "arXiv" in spec.paper and spec.decode_cost(CFG, 1, 64) > 0


# ---- the short-convolution switch ---------------------------------------------------------


def _build(name: str, **changes):
    spec = registry.get(name)
    return spec.build(dataclasses.replace(CFG, **changes), spec.reference.name)


@pytest.mark.parametrize("name", ["linear_attention", "gla", "deltanet", "mamba2", "based"])
def test_short_conv_gives_every_recurrent_mixer_the_same_front_conv(name):
    torch.manual_seed(0)
    m = _build(name, short_conv=3).double()
    assert isinstance(m, ShortConvFront) and m.conv.kernel == 3
    assert m.inner.config.conv_size == 0, "the family's own convolutions are removed"
    assert not any(isinstance(sub, ShortConvFront) for sub in m.inner.modules())
    x = torch.randn(2, 10, CFG.d_model, dtype=torch.float64)
    y, _ = assert_decode_matches_forward(m, x, 6, from_start=False)
    with torch.no_grad():
        torch.testing.assert_close(y, m.inner(m.conv(x)))
    assert m.state_bytes(1, 64) == m.inner.state_bytes(1, 64) + CFG.d_model * 2 * 8


def test_short_conv_zero_removes_convolutions_and_unset_builds_as_published():
    none = _build("deltanet", short_conv=0)
    assert not isinstance(none, ShortConvFront) and none.config.conv_size == 0
    published = _build("deltanet")
    assert not isinstance(published, ShortConvFront) and published.config.conv_size == CFG.conv_size
    for name in ("softmax_attention", "hyena", "h3"):  # attention and the gated convolutions are left as published
        assert not isinstance(_build(name, short_conv=3), ShortConvFront)
    with pytest.raises(ValueError, match="short_conv must be >= 0"):
        MixerConfig(short_conv=-1)
