"""PaTH: the chunked reference against a literal float64 loop (values, gradients, the optional
gate, GQA, lengths that are not a multiple of the chunk), its transformed key cache against
rank-1 updates token by token, fla's kernel against the reference, and the mixer's decode."""

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.path_attention import PaTHAttention, path_fla_limits
from archbench.ops.path_attention import householder_update, path_attention
from archbench.ops.softmax_attention import softmax_attention
from fused_devices import FLA_DEVICE, half, needs_fla
from oracles import assert_decode_matches_forward


def oracle(q, k, v, w, beta, g=None):
    """Per query i: walk back over keys j = i, i-1, ..., carrying u = H_{j+1} ... H_i q_i."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            x = h // (H // Hkv)
            for i in range(T):
                u, logits = q[b, i, h], []
                for j in range(i, -1, -1):
                    gate = g[b, j + 1 : i + 1, h].sum() if g is not None else 0.0
                    logits.append(D**-0.5 * (u @ k[b, j, x] + gate))
                    u = u - beta[b, j, x] * (w[b, j, x] @ u) * w[b, j, x]
                out[b, i, h] = torch.stack(logits[::-1]).softmax(0) @ v[b, : i + 1, x]
    return out


def _inputs(B, T, H, Hkv, D, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, T, H, D, dtype=dtype)
    k, v = torch.randn(B, T, Hkv, D, dtype=dtype), torch.randn(B, T, Hkv, D, dtype=dtype)
    w = F.normalize(torch.randn(B, T, Hkv, D, dtype=dtype), dim=-1)
    beta = 2 * torch.rand(B, T, Hkv, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, dtype=dtype))
    return q, k, v, w, beta, g


@pytest.mark.parametrize("T,chunk,gated", [(11, 4, True), (11, 4, False), (7, 16, True), (9, 3, False)])
def test_matches_float64_loop_with_gradients(T, chunk, gated):
    q, k, v, w, beta, g = (t.requires_grad_() for t in _inputs(2, T, 4, 2, 6))
    g = g if gated else None
    o, _ = path_attention(q, k, v, w, beta, g, chunk_size=chunk)
    ref = oracle(q, k, v, w, beta, g)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    inputs = [t for t in (q, k, v, w, beta, g) if t is not None]
    r = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((o * r).sum(), inputs), torch.autograd.grad((ref * r).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_zero_beta_is_causal_softmax_and_cache_matches_rank1_updates():
    q, k, v, w, beta, _ = _inputs(1, 10, 2, 1, 8)
    o, _ = path_attention(q, k, v, w, torch.zeros_like(beta), chunk_size=4)
    torch.testing.assert_close(o, softmax_attention(q, k, v, causal=True), rtol=1e-12, atol=1e-12)
    _, cache = path_attention(q, k, v, w, beta, output_final_state=True, chunk_size=3)
    keys = k[:, :0]
    for t in range(10):
        keys = torch.cat([householder_update(keys, w[:, t], beta[:, t]), k[:, t : t + 1]], dim=1)
    torch.testing.assert_close(cache, keys, rtol=1e-12, atol=1e-12)


def test_rejects_bad_inputs():
    q, k, v, w, beta, g = _inputs(1, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="beta"):
        path_attention(q, k, v, w, beta[..., :1])
    with pytest.raises(ValueError, match="torch, fla"):
        path_attention(q, k, v, w, beta, backend="nope")
    assert path_fla_limits(MixerConfig(d_model=96, n_heads=2)) is not None  # head dim 48
    assert path_fla_limits(MixerConfig(d_model=128, n_heads=2)) is None


def test_mixer_decode_continues_prefill():
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, chunk_size=4)
    torch.manual_seed(0)
    m = PaTHAttention(cfg).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    assert_decode_matches_forward(m, x, 6, from_start=False, rtol=1e-9, atol=1e-10)
    assert m.state_bytes(1, 10) == 2 * 10 * 2 * 8 * 8


@needs_fla
def test_fla_matches_reference():
    q, k, v, w, beta, g = (t.to(FLA_DEVICE) for t in _inputs(1, 70, 4, 2, 16, torch.float32))
    dtype = half(torch.bfloat16)
    ref, ref_cache = path_attention(q, k, v, w, beta, g, output_final_state=True)
    o, cache = path_attention(q.to(dtype), k.to(dtype), v.to(dtype), w, beta, g, output_final_state=True, backend="fla")
    assert ((o.float() - ref).norm() / ref.norm()).item() < 2e-2
    assert ((cache.float() - ref_cache).norm() / ref_cache.norm()).item() < 2e-2
