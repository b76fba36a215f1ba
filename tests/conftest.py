import importlib.util
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # so spawned workers and CLI subprocesses can import test plugins
    sys.path.insert(0, str(TESTS))

if os.environ.get("ARCHBENCH_TRITON_SINGLE_CONFIG"):  # GPU correctness runs: no autotuning (see the module)
    import triton_single_config

    triton_single_config.install()

import triton_interpreter  # noqa: E402

if triton_interpreter.active() and importlib.util.find_spec("triton") is not None:
    triton_interpreter.install()  # fla's kernels on a CPU (see the module and tests/fused_devices.py)


@pytest.fixture
def cli_env():
    """Environment for running the archbench CLI in a subprocess with the test plugins importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: faster, and far steadier, on a loaded
    2-core machine, where two threads stall at every barrier (the recipe tests use it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_runtest_logreport(report):
    """ARCHBENCH_INSTAFAIL=1: print each failure's traceback the moment it happens (under xdist too),
    so a run killed at its time limit, as on a GPU node with a time limit, still shows why tests failed."""
    if report.failed and os.environ.get("ARCHBENCH_INSTAFAIL"):
        sys.stderr.write(f"\nFAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n")
        sys.stderr.flush()
