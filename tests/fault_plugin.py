"""Test-only architectures for the fault-injection matrix (tests/test_faults.py), loaded by suites
by *file path* (``plugins: [/abs/path/tests/fault_plugin.py]``), so that the path form of plugins
is exercised by every run of the matrix.

``fault_sleep`` takes ``ARCHBENCH_FAULT_SLEEP_S`` seconds per call (default 0.15): slow enough
to land a signal mid-run, fast enough to keep the matrix short. ``fault_segv`` dereferences a
null pointer (a segfault inside the cell, as a broken kernel would); ``fault_raise`` raises from a
line the error row must quote.
"""

import ctypes
import os
import time

from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer
from archbench.registry import ArchSpec, Backend, Complexity


class FaultMixer(Mixer):
    def __init__(self, config, how: str):
        super().__init__()
        self.config, self.backend, self.how = config, "ref", how
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x):
        if self.how == "segv":
            ctypes.string_at(0)  # SIGSEGV
        if self.how == "raise":
            raise RuntimeError("fault_plugin: the failing line")
        time.sleep(float(os.environ.get("ARCHBENCH_FAULT_SLEEP_S", "0.15")))
        return self.proj(x)


def lifeline_child(lifeline, parent_pid) -> None:  # pragma: no cover - runs in a child
    """A process that relies on the lifeline watchdog alone (no death signal): it must exit once
    the lifeline's write end closes."""
    import sys

    from archbench.run import worker

    sys.platform = "watchdog-only"  # skip PR_SET_PDEATHSIG
    worker.die_with_parent(parent_pid, lifeline)
    time.sleep(60)


_C = Complexity("-", "-", "-", "-")
for _how in ("sleep", "segv", "raise"):
    if f"fault_{_how}" not in registry.names():
        registry.register(
            ArchSpec(
                name=f"fault_{_how}",
                family="test/fault",
                description=f"fault-injection test mixer: {_how}",
                paper="-",
                complexity=_C,
                backends=(Backend("ref", "test", registry.always, reference=True),),
                factory=lambda cfg, backend, how=_how: FaultMixer(cfg, how),
                has_decode=False,
            )
        )
