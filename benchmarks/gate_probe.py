"""A plugin mixer whose amount of work is a constant in its source, for measuring the gate.

``benchmarks/gate_power.py`` needs a code change of known size that slows one cell for real
(more arithmetic, not a multiplied number). This mixer's forward runs ``WORK_UNITS`` identical
causal linear-attention passes over the same projected q, k, v and sums them:

    y = W_o ( sum_{u=1..WORK_UNITS} LinAttn(q, k, v) ),   q, k, v = W_qkv x

so two copies of this file that differ only in ``WORK_UNITS`` (10 and 13) are two versions of
the code, the second doing 30% more work in the part that dominates the call (the projections
are shared and small). Each pass is a fresh computation; nothing is cached between passes.

Registered as ``gate_probe`` (backend ``ref``) when imported as a suite plugin
(``plugins: [gate_probe]`` with ``benchmarks/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import torch
from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer
from archbench.ops.linear_attention import linear_attention
from archbench.registry import ArchSpec, Backend, Complexity

WORK_UNITS = 10  # gate_power.py writes a copy with 13 for the slowed side


class GateProbe(Mixer):
    """``WORK_UNITS`` chunked linear-attention passes over one projection of ``x``."""

    def __init__(self, config, work_units: int = WORK_UNITS):
        super().__init__()
        self.config, self.backend, self.work_units = config, "ref", int(work_units)
        self.qkv = nn.Linear(config.d_model, 3 * config.n_heads * config.hd, bias=False)
        self.out = nn.Linear(config.n_heads * config.hd, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.config.n_heads, self.config.hd
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(dim=2)
        q, k = q.softmax(-1), k.softmax(-1)  # positive features, as in linear attention
        y = torch.zeros_like(v)
        for _ in range(self.work_units):
            o, _ = linear_attention(q, k, v, chunk_size=self.config.chunk_size)
            y = y + o
        return self.out(y.reshape(B, T, H * D))


if "gate_probe" not in registry.names():
    registry.register(
        ArchSpec(
            name="gate_probe",
            family="test/gate",
            description=f"{WORK_UNITS} linear-attention passes per call (benchmarks/gate_power.py)",
            paper="-",
            complexity=Complexity("O(T)", "O(T)", "O(1)", "-"),
            backends=(Backend("ref", "reference", registry.always, reference=True),),
            factory=lambda cfg, backend: GateProbe(cfg),
            has_decode=False,
        )
    )
