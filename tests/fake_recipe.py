"""Stand-in recipes for testing recipe cells (instant), registered by this plugin:

* ``fake``: a teacher and a student row, progress events for ``steps`` steps; fails on request;
* ``fake_broken``: ``fake`` that always fails;
* ``fake_kill``: kills the run's runner (SIGKILL) the first time, when the file ``marker`` does not
  exist yet, then behaves as ``fake``: a run killed half-way that ``--resume`` finishes.
"""

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from archbench.recipes import register
from archbench.store import RunDir


@dataclass(frozen=True)
class FakeConfig:
    teacher: str = "default"
    steps: int = 3
    fail: bool = False
    seed: int = 0
    device: str = "cpu"


def run(config: FakeConfig, out_dir, progress=None) -> dict:
    if config.fail:
        raise RuntimeError("asked to fail")
    marker = getattr(config, "marker", None)
    if marker and not Path(marker).exists():
        Path(marker).write_text("killed once")
        os.kill(os.getppid(), signal.SIGKILL)  # the worker's parent: the runner
    rd = RunDir(out_dir).create()
    for step in range(config.steps):
        if progress:
            progress({"stage": "distil", "step": step, "steps": config.steps, "loss": 1.0 / (step + 1)})
    for model in ("teacher", "student"):
        rd.append({"key": model, "model": model, "status": "ok", "bits_per_byte": 2.0 + (model == "student"),
                   "steps": config.steps, "seed": config.seed})  # fmt: skip
    return {"steps": config.steps}


@dataclass(frozen=True)
class BrokenConfig(FakeConfig):
    fail: bool = True


@dataclass(frozen=True)
class KillConfig(FakeConfig):
    marker: str = ""


register("fake", __name__, "FakeConfig")
register("fake_broken", __name__, "BrokenConfig")
register("fake_kill", __name__, "KillConfig")
