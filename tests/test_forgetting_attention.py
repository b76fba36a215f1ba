"""FoX: the forget-biased softmax against a literal float64 loop (values and gradients, GQA, decode
offsets), the SDPA / FlexAttention / fla paths against the reference, and the mixer's decode cache."""

import sys

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.forgetting_attention import ForgettingAttention
from archbench.ops.forgetting_attention import forgetting_attention
from archbench.ops.softmax_attention import flex_unavailable_reason, softmax_attention
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import assert_decode_matches_forward


def oracle(q, k, v, g, scale=None):
    """Per query and head: softmax over keys j <= pos of scale q.k_j + sum_{l=j+1}^{pos} g_l."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for t in range(T):
            pos = S - T + t
            for h in range(H):
                x = h // (H // Hkv)
                logits = torch.stack(
                    [scale * q[b, t, h] @ k[b, j, x] + g[b, j + 1 : pos + 1, h].sum() for j in range(pos + 1)]
                )
                out[b, t, h] = logits.softmax(0) @ v[b, : pos + 1, x]
    return out


def _inputs(B, T, S, H, Hkv, D, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, T, H, D, dtype=dtype)
    k, v = torch.randn(B, S, Hkv, D, dtype=dtype), torch.randn(B, S, Hkv, D, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, S, H, dtype=dtype) + 1)
    return q, k, v, g


@pytest.mark.parametrize("T,S,Hkv", [(11, 11, 2), (3, 10, 1), (1, 7, 2)])
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_matches_float64_loop_with_gradients(T, S, Hkv, backend, monkeypatch):
    monkeypatch.setattr(sys.modules["archbench.ops.forgetting_attention"], "_ROW_SLAB", 2 * 4 * 4 * S)  # several row chunks
    q, k, v, g = (t.requires_grad_() for t in _inputs(2, T, S, 4, Hkv, 8))
    o = forgetting_attention(q, k, v, g, backend=backend)
    ref = oracle(q, k, v, g)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((o * w).sum(), (q, k, v, g))
    want = torch.autograd.grad((ref * w).sum(), (q, k, v, g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_open_gates_are_causal_softmax():
    q, k, v, g = _inputs(1, 9, 9, 2, 2, 8)
    o = forgetting_attention(q, k, v, torch.zeros_like(g))
    torch.testing.assert_close(o, softmax_attention(q, k, v, causal=True), rtol=1e-12, atol=1e-12)


def test_rejects_bad_inputs():
    q, k, v, g = _inputs(1, 4, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="g \\[B, S, H\\]"):
        forgetting_attention(q, k, v, g[..., :1])
    with pytest.raises(ValueError, match="torch, sdpa, flex, fla"):
        forgetting_attention(q, k, v, g, backend="nope")


def test_flex_on_cpu_matches_reference():
    if flex_unavailable_reason("cpu", torch.float32):
        pytest.skip(flex_unavailable_reason("cpu", torch.float32))
    q, k, v, g = _inputs(1, 40, 40, 4, 2, 16, torch.float32)
    torch.testing.assert_close(
        forgetting_attention(q, k, v, g, backend="flex"), forgetting_attention(q, k, v, g), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_mixer_decode_cache_and_bytes(backend):
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2)
    torch.manual_seed(0)
    m = ForgettingAttention(cfg, backend).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)  # past the initial capacity of 16
    _, state = assert_decode_matches_forward(m, x, 5, from_start=False, rtol=1e-9, atol=1e-10)
    assert state["len"] == 21
    assert m.state_bytes(1, 100) == 2 * 100 * 2 * 8 * 8 + 100 * 4 * 4  # fp64 K/V + fp32 gates


@needs_fla
def test_fla_matches_reference():
    dtype = half(torch.bfloat16)
    q, k, v, g = (t.to(FLA_DEVICE) for t in _inputs(1, 80, 80, 4, 2, 32, torch.float32))
    ref = forgetting_attention(q, k, v, g)
    o = forgetting_attention(q.to(dtype), k.to(dtype), v.to(dtype), g, backend="fla")
    assert ((o.float() - ref).norm() / ref.norm()).item() < 2e-2
