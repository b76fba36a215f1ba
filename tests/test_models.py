"""Layer stacks and LMs: the stack's decode step reproduces its forward, MoE routes, LM shapes."""

import pytest
import torch

from archbench.mixers.attention import SoftmaxAttention
from archbench.mixers.base import MixerConfig
from archbench.mixers.linear import LinearAttention
from archbench.models import LM, MoE, build_stack

CFG = MixerConfig(d_model=32, n_heads=4, chunk_size=8)
FACTORIES = {"A": lambda c: SoftmaxAttention(c, "sdpa"), "L": lambda c: LinearAttention(c, "chunked")}


@pytest.mark.parametrize("ffn", ["swiglu", "moe", None])
def test_stack_step_matches_forward(ffn):
    torch.manual_seed(0)
    stack = build_stack(CFG, "ALL", FACTORIES, ffn=ffn)
    x = torch.randn(2, 13, 32)
    y = stack(x)
    state = stack.init_state(2)
    steps = []
    for t in range(13):
        y_t, state = stack.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-4, atol=1e-5)
    assert stack.state_bytes(2, 100) == sum(b.mixer.state_bytes(2, 100) for b in stack.blocks)


def test_bad_pattern_says_which_letters():
    with pytest.raises(ValueError, match="letters must be from AL"):
        build_stack(CFG, "AXM", FACTORIES)


def test_moe_matches_dense_computation():
    torch.manual_seed(0)
    moe = MoE(16, 32, n_experts=4, top_k=2)
    x = torch.randn(3, 5, 16)
    probs = moe.router(x).softmax(-1)
    w, idx = probs.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    dense = torch.stack([e(x) for e in moe.experts], -2)  # [3, 5, E, 16]
    expect = (dense.gather(-2, idx[..., None].expand(-1, -1, -1, 16)) * w[..., None]).sum(-2)
    torch.testing.assert_close(moe(x), expect, rtol=1e-5, atol=1e-6)


def test_lm_forward_and_decode():
    torch.manual_seed(0)
    lm = LM(build_stack(CFG, "AL", FACTORIES), vocab_size=50)
    ids = torch.randint(0, 50, (2, 9))
    logits = lm(ids)
    assert logits.shape == (2, 9, 50)
    state = lm.init_state(2)
    out = []
    for t in range(9):
        lt, state = lm.step(ids[:, t], state)
        out.append(lt)
    torch.testing.assert_close(torch.stack(out, 1), logits, rtol=1e-4, atol=1e-4)


def test_stack_prefill_then_step():
    torch.manual_seed(0)
    stack = build_stack(CFG, "AL", FACTORIES, ffn="swiglu")
    x = torch.randn(2, 10, 32)
    y = stack(x)
    y_pre, state = stack.prefill(x[:, :6])
    torch.testing.assert_close(y_pre, y[:, :6], rtol=1e-5, atol=1e-5)
    for t in range(6, 10):
        y_t, state = stack.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)
