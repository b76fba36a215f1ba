"""Rotary position embeddings (archbench.mixers.common.rotary): the pairwise rotation written
out, relative-position invariance, token-by-token decode against the whole sequence, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.mixers import common
from archbench.mixers.common import rotary


def _oracle(x: torch.Tensor, offset: int, theta: float) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) by pos * theta^(-2i/D), one pair at a time, in fp64."""
    x64 = x.double()
    out = x64.clone()
    D = x.shape[-1] - x.shape[-1] % 2
    half = D // 2
    for t in range(x.shape[1]):
        for i in range(half):
            a = (offset + t) * theta ** (-2 * i / D)
            c, s = math.cos(a), math.sin(a)
            x1, x2 = x64[:, t, :, i], x64[:, t, :, i + half]
            out[:, t, :, i], out[:, t, :, i + half] = x1 * c - x2 * s, x2 * c + x1 * s
    return out


@pytest.mark.parametrize("D", [64, 7, 2, 1])
@pytest.mark.parametrize("offset", [0, 13, 700])
def test_rotary_is_the_pairwise_rotation(D, offset):
    x = torch.randn(2, 5, 3, D)
    # angles are formed in fp32 (as Llama does): their absolute error grows with the position
    tol = 1e-5 + 1e-7 * (offset + 5) * float(x.abs().max())
    assert torch.allclose(rotary(x, offset, 10000.0).double(), _oracle(x, offset, 10000.0), atol=tol)
    xb = x.to(torch.bfloat16)
    assert rotary(xb, offset).dtype == torch.bfloat16
    assert torch.allclose(rotary(xb, offset).double(), _oracle(xb, offset, 10000.0), atol=5e-2)


def test_scores_depend_only_on_the_distance():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    s = [float((rotary(q, m + 5) * rotary(k, m)).sum()) for m in (0, 40, 1000)]
    assert max(s) - min(s) < 1e-4


def test_decode_positions_match_the_whole_sequence_as_the_tables_grow(monkeypatch):
    monkeypatch.setattr(common, "_ROPE_TABLES", {})
    x = torch.randn(1, 600, 2, 8)
    whole = rotary(x, 0)  # tables for 600 positions
    common._ROPE_TABLES.clear()
    steps = torch.cat([rotary(x[:, t : t + 1], t) for t in range(600)], dim=1)  # grow from 256 by doubling
    assert torch.allclose(steps, whole, atol=1e-6)
    assert common._ROPE_TABLES[(8, 10000.0, torch.float32, x.device)][0].shape[0] == 1024


def test_gradient_is_the_inverse_rotation():
    x = torch.randn(1, 4, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rotary(t, 3), (x,))
