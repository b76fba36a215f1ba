"""MLA: the up-projected and absorbed forms against a literal float64 loop (values, gradients,
decode offsets), SDPA against the reference, and the mixer's latent cache (its size is what the
decode state is)."""

import pytest
import torch

from archbench.mixers.attention import SoftmaxAttention
from archbench.mixers.base import MixerConfig
from archbench.mixers.mla import MultiHeadLatentAttention, mla_decode_flops, mla_flops
from archbench.ops.mla import mla
from oracles import assert_decode_matches_forward


def oracle(q_nope, q_rope, c, k_rope, w_uk, w_uv):
    """Per query and head: keys [W_UK c_s ; k^R_s], values W_UV c_s, softmax over s <= pos."""
    B, T, H, dn = q_nope.shape
    S = c.shape[1]
    scale = (dn + q_rope.shape[-1]) ** -0.5
    out = torch.zeros(B, T, H, w_uv.shape[1], dtype=c.dtype)
    for b in range(B):
        for t in range(T):
            pos = S - T + t
            for h in range(H):
                logits = torch.stack(
                    [
                        scale * (q_nope[b, t, h] @ (w_uk[h] @ c[b, s]) + q_rope[b, t, h] @ k_rope[b, s])
                        for s in range(pos + 1)
                    ]
                )
                out[b, t, h] = logits.softmax(0) @ torch.stack([w_uv[h] @ c[b, s] for s in range(pos + 1)])
    return out


def _inputs(B, T, S, H, dn, dr, r, dv):
    torch.manual_seed(0)
    d = torch.float64
    return (torch.randn(B, T, H, dn, dtype=d), torch.randn(B, T, H, dr, dtype=d), torch.randn(B, S, r, dtype=d),
            torch.randn(B, S, dr, dtype=d), torch.randn(H, dn, r, dtype=d) / r**0.5, torch.randn(H, dv, r, dtype=d) / r**0.5)  # fmt: skip


@pytest.mark.parametrize("T,S", [(9, 9), (3, 11), (1, 6)])
@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_both_forms_match_float64_loop_with_gradients(T, S, absorb, backend):
    args = [t.requires_grad_() for t in _inputs(2, T, S, 3, 8, 4, 12, 6)]
    o = mla(*args, absorb=absorb, backend=backend)
    ref = oracle(*args)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((o * w).sum(), args), torch.autograd.grad((ref * w).sum(), args)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_rejects_bad_inputs():
    args = _inputs(1, 4, 4, 2, 8, 4, 12, 6)
    with pytest.raises(ValueError, match="w_uk"):
        mla(*args[:4], args[4][:, :, :5], args[5])
    with pytest.raises(ValueError, match="torch, sdpa"):
        mla(*args, backend="nope")


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("rope_theta", [10000.0, None])
def test_mixer_absorbed_decode_continues_prefill(backend, rope_theta):
    cfg = MixerConfig(d_model=32, n_heads=4, rope_theta=rope_theta)
    torch.manual_seed(0)
    m = MultiHeadLatentAttention(cfg, backend).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    _, state = assert_decode_matches_forward(m, x, 4, from_start=False, rtol=1e-9, atol=1e-10)
    assert (
        set(state) == {"c", "kr", "len"}
        and state["c"].shape[-1] == 32
        and state["kr"].shape[-1] == (4 if rope_theta else 0)
    )


def test_latent_cache_is_the_decode_state():
    cfg = MixerConfig(d_model=1024, n_heads=16)  # head_dim 64: r = 256, d_R = 32
    m, mha = MultiHeadLatentAttention(cfg), SoftmaxAttention(cfg)
    assert m.state_bytes(1, 1000) == 1000 * (256 + 32) * 4
    assert mha.state_bytes(1, 1000) == 2 * 1000 * 16 * 64 * 4  # 7x the latent cache
    # the absorbed step reads the latent cache: its cost grows with H (r + d_R) per cached token
    assert mla_decode_flops(cfg, 1, 2001) - mla_decode_flops(cfg, 1, 2000) == 2 * 16 * (256 + 32) + 2 * 16 * 256
    assert mla_flops(cfg, 1, 2048) > mla_flops(cfg, 1, 1024)
    with pytest.raises(ValueError, match="kv_rank"):
        MultiHeadLatentAttention(cfg, rope_dim=3)
