"""MoBA: routing and attention against a literal float64 loop (values, gradients, GQA, decode
offsets, lengths that are not a multiple of the block), SDPA / FlexAttention against the
reference, and the mixer's decode cache."""

import sys

import pytest
import torch

from archbench.mixers.base import MixerConfig
from archbench.mixers.moba import MoBA, moba_flops, moba_pairs
from archbench.ops.moba import moba
from archbench.ops.softmax_attention import flex_unavailable_reason, softmax_attention
from oracles import assert_decode_matches_forward


def oracle(q, k, v, l, topk):
    """Per query and head: score each complete past block by q . mean(keys), keep the top
    topk - 1, attend to them and to the own block up to the query."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for t in range(T):
            pos = S - T + t
            cur = pos // l
            for h in range(H):
                x = h // (H // Hkv)
                scores = {j: float(q[b, t, h] @ k[b, j * l : (j + 1) * l, x].mean(0)) for j in range(cur)}
                chosen = sorted(scores, key=scores.get, reverse=True)[: topk - 1]
                keys = sorted([s for j in chosen for s in range(j * l, (j + 1) * l)] + list(range(cur * l, pos + 1)))
                p = torch.stack([q[b, t, h] @ k[b, s, x] * D**-0.5 for s in keys]).softmax(0)
                out[b, t, h] = p @ v[b, keys, x]
    return out


def _inputs(B, T, S, H, Hkv, D, dtype=torch.float64):
    torch.manual_seed(0)
    return (
        torch.randn(B, T, H, D, dtype=dtype),
        torch.randn(B, S, Hkv, D, dtype=dtype),
        torch.randn(B, S, Hkv, D, dtype=dtype),
    )


@pytest.mark.parametrize("T,S,Hkv,l,topk", [(19, 19, 2, 4, 3), (3, 22, 1, 5, 2), (1, 13, 2, 3, 9), (10, 10, 2, 4, 1)])
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_matches_float64_loop_with_gradients(T, S, Hkv, l, topk, backend, monkeypatch):
    monkeypatch.setattr(sys.modules["archbench.ops.moba"], "_ROW_SLAB", 2 * 4 * 3 * S)  # several row chunks
    q, k, v = (t.requires_grad_() for t in _inputs(2, T, S, 4, Hkv, 8))
    o = moba(q, k, v, l, topk, backend=backend)
    ref = oracle(q, k, v, l, topk)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((o * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_every_block_chosen_is_causal_softmax():
    q, k, v = _inputs(1, 23, 23, 2, 2, 8)
    torch.testing.assert_close(moba(q, k, v, 4, 6), softmax_attention(q, k, v, causal=True), rtol=1e-12, atol=1e-12)


def test_rejects_bad_inputs():
    q, k, v = _inputs(1, 4, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="block_size and topk"):
        moba(q, k, v, 0, 2)
    with pytest.raises(ValueError, match="torch, sdpa, flex"):
        moba(q, k, v, 2, 2, backend="nope")


def test_flex_on_cpu_matches_reference():
    """Several query blocks, queries offset into the keys, MoBA blocks straddling flex blocks."""
    T, S, l, topk = 150, 230, 48, 3
    if flex_unavailable_reason("cpu", torch.float32):
        pytest.skip(flex_unavailable_reason("cpu", torch.float32))
    q, k, v = _inputs(1, T, S, 4, 2, 16, torch.float32)
    torch.testing.assert_close(moba(q, k, v, l, topk, backend="flex"), moba(q, k, v, l, topk), rtol=1e-4, atol=1e-5)


def test_mixer_decode_and_flops():
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, block_size=3, block_count=2)
    torch.manual_seed(0)
    m = MoBA(cfg, "naive").double()
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 7, from_start=False, rtol=1e-9, atol=1e-10)
    assert m.state_bytes(1, 50) == 2 * 50 * 2 * 8 * 8
    # pairs: per query its own block up to itself + min(topk - 1, past blocks) full blocks
    assert moba_pairs(7, 3, 2) == sum(t % 3 + 1 + 3 * min(1, t // 3) for t in range(7))
    assert moba_flops(cfg, 1, 2048) < moba_flops(
        MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, block_size=3, block_count=8), 1, 2048
    )
