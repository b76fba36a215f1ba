"""Long sequences run in segments (``archbench.ops.segments``) and linear attention in chunk
groups: both must give what one whole-sequence pass gives, outputs, final states and gradients."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from archbench import ops

segments = importlib.import_module("archbench.ops.segments")
linear_attention_mod = importlib.import_module("archbench.ops.linear_attention")


def _inputs(name: str, T: int = 50, B: int = 2, H: int = 3, K: int = 8):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    q, k, v = r(B, T, H, K), F.normalize(r(B, T, H, K), dim=-1), r(B, T, H, K)
    beta, gate = torch.sigmoid(r(B, T, H)), F.logsigmoid(r(B, T, H))
    h0 = r(B, H, K, K)
    if name == "delta_rule":
        return (q, k, v, beta), h0
    if name == "gated_delta_rule":
        return (q, k, v, gate, beta), h0
    if name == "dplr":
        a = -F.normalize(r(B, T, H, K), dim=-1)
        w = -torch.exp(r(B, T, H, K) * 0.5)
        return (q, k, v, w, a, -a * torch.rand(B, T, H, 1, generator=g, dtype=torch.float64)), h0
    if name == "ssd":  # x [B,T,H,P], dt [B,T,H], A [H], B, C [B,T,G,N]
        return (v, F.softplus(r(B, T, H)), -torch.rand(H, generator=g, dtype=torch.float64) - 0.5,
                r(B, T, 1, 6), r(B, T, 1, 6)), r(B, H, 6, K)  # fmt: skip
    raise KeyError(name)


def _run(name, args, h0, chunk):
    return getattr(ops, name)(*args, initial_state=h0, output_final_state=True, chunk_size=chunk)


@pytest.mark.parametrize("name", ["delta_rule", "gated_delta_rule", "dplr", "ssd"])
def test_segmented_reference_equals_one_pass(name, monkeypatch):
    args, h0 = _inputs(name)
    leaves = [a.clone().requires_grad_(True) for a in args]
    o1, s1 = _run(name, leaves, h0, chunk=8)  # T=50 < SEGMENT_LEN: one pass
    g1 = torch.autograd.grad((o1.sum() + s1.sum()), leaves)
    monkeypatch.setattr(segments, "SEGMENT_LEN", 16)  # 4 segments of 16, 16, 16, 2 tokens
    leaves2 = [a.clone().requires_grad_(True) for a in args]
    o2, s2 = _run(name, leaves2, h0, chunk=8)
    g2 = torch.autograd.grad((o2.sum() + s2.sum()), leaves2)
    torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2, s1, rtol=1e-9, atol=1e-9)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_segments_are_whole_chunks_and_cover_the_sequence():
    spans = []

    def run(pos, other, s):  # pos holds each token's index: the span a segment covers
        assert torch.equal(other, pos * 2)  # every sequence is cut at the same places
        spans.append((int(pos[0, 0]), int(pos[0, -1]) + 1))
        return pos.float(), (s or 0) + 1

    pos = torch.arange(70)[None]
    o, s = segments.by_segments(run, (pos, pos * 2), None, chunk_size=8, seg_len=20)  # 20 -> 16 (two chunks)
    assert spans == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 70)] and s == 5
    assert torch.equal(o, pos.float())
    spans.clear()
    segments.by_segments(run, (pos[:, :10], pos[:, :10] * 2), None, chunk_size=64, seg_len=16)  # a chunk longer than a segment
    assert spans == [(0, 10)]


def test_linear_attention_chunk_groups_equal_one_group(monkeypatch):
    args, h0 = _inputs("delta_rule", T=77)
    q, k, v = (a.clone().requires_grad_(True) for a in args[:3])
    o1, s1 = ops.linear_attention(q, k, v, initial_state=h0, output_final_state=True, chunk_size=8)
    g1 = torch.autograd.grad(o1.sum() + s1.sum(), (q, k, v))
    monkeypatch.setattr(linear_attention_mod, "GROUP_ELEMS", 1)  # one chunk per group
    o2, s2 = ops.linear_attention(q, k, v, initial_state=h0, output_final_state=True, chunk_size=8)
    g2 = torch.autograd.grad(o2.sum() + s2.sum(), (q, k, v))
    torch.testing.assert_close(o2, o1)
    torch.testing.assert_close(s2, s1)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b)
