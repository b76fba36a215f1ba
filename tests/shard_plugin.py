"""Test-only architectures for the scale-out tests (tests/test_shards.py, tests/test_executors.py),
loaded by file path like tests/fault_plugin.py.

``probe_sleep`` sleeps ``ARCHBENCH_PROBE_SLEEP_S`` seconds per call (default 0.02) and, when
``ARCHBENCH_PROBE_FILE`` is set, appends one line per cell to it: the worker's pid, its
``CUDA_VISIBLE_DEVICES`` and the cores it may run on, so a test sees where each cell ran.
``crash_once`` kills the *runner* (the worker's parent: a shard dying mid-sweep, as a lost node
or the OOM killer would) the first time it runs, marked by the file ``ARCHBENCH_CRASH_ONCE``;
later runs just compute.
"""

import os
import signal
import time
from pathlib import Path

from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer
from archbench.registry import ArchSpec, Backend, Complexity


class ProbeMixer(Mixer):
    def __init__(self, config, how: str):
        super().__init__()
        self.config, self.backend, self.how = config, "ref", how
        self.proj = nn.Linear(config.d_model, config.d_model)
        probe = os.environ.get("ARCHBENCH_PROBE_FILE")
        if probe:
            cores = ",".join(map(str, sorted(os.sched_getaffinity(0)))) if hasattr(os, "sched_getaffinity") else "-"
            with open(probe, "a") as f:
                f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')} {cores}\n")

    def forward(self, x):
        if self.how == "crash_once":
            marker = Path(os.environ["ARCHBENCH_CRASH_ONCE"])
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                os.kill(os.getppid(), signal.SIGKILL)  # the runner: this shard dies mid-sweep
                time.sleep(30)  # ...and this worker with it (its death signal)
            except FileExistsError:
                pass
        else:
            time.sleep(float(os.environ.get("ARCHBENCH_PROBE_SLEEP_S", "0.02")))
        return self.proj(x)


_C = Complexity("-", "-", "-", "-")
for _how in ("sleep", "crash_once"):
    if f"probe_{_how}" not in registry.names():
        registry.register(
            ArchSpec(
                name=f"probe_{_how}",
                family="test/probe",
                description=f"scale-out test mixer: {_how}",
                paper="-",
                complexity=_C,
                backends=(Backend("ref", "test", registry.always, reference=True),),
                factory=lambda cfg, backend, how=_how: ProbeMixer(cfg, how),
                has_decode=False,
            )
        )
