"""Test-only architectures that fail on purpose, registered as a suite plugin.

Each one fails inside the worker in a different way, so the runner's isolation can be
tested: a Python exception, a hard crash (SIGABRT), a hang, and an out-of-memory.
"""

import os
import time

import torch
from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer
from archbench.registry import ArchSpec, Backend, Complexity


class Faulty(Mixer):
    def __init__(self, config, how: str):
        super().__init__()
        self.config, self.backend, self.how = config, "ref", how
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x):
        if self.how == "raise":
            raise ValueError("deliberate failure <script>alert(1)</script>")
        if self.how == "abort":
            os.abort()
        if self.how == "hang":
            time.sleep(3600)
        if self.how == "oom":
            torch.empty(1 << 52, dtype=torch.uint8)  # 4 PiB: the allocator refuses
        if self.how == "oom_long" and x.shape[1] >= 32:
            torch.empty(1 << 52, dtype=torch.uint8)
        if self.how == "slow":
            time.sleep(float(os.environ.get("ARCHBENCH_TEST_SLOW_S", "0.3")))
        return self.proj(x)


_C = Complexity("-", "-", "-", "-")
for _how in ("raise", "abort", "hang", "oom", "oom_long", "slow"):
    if f"test_{_how}" not in registry.names():
        registry.register(
            ArchSpec(
                name=f"test_{_how}",
                family="test/faulty",
                description=f"test mixer that does: {_how}",
                paper="-",
                complexity=_C,
                backends=(Backend("ref", "test", registry.always, reference=True),),
                factory=lambda cfg, backend, how=_how: Faulty(cfg, how),
                has_decode=False,
            )
        )
