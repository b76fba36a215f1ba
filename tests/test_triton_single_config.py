"""The no-autotuning patch for GPU correctness runs (tests/triton_single_config.py): on a stand-in
with the control flow of Triton's Autotuner, and, where triton is installed, on a real autotuned
kernel under Triton's CPU interpreter."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from triton_single_config import INF, patch


class OutOfResources(Exception):
    pass


class FakeAutotuner:
    """Triton's Autotuner.run / _bench / do_bench shape: benchmark every config, keep the fastest."""

    def __init__(self, configs, fails=()):
        self.configs, self.fails, self.cache, self.compiled = configs, set(fails), {}, []

    @property
    def do_bench(self):
        return lambda kernel_call, quantiles: (kernel_call(), [1.0, 1.0, 1.0])[1]

    def _bench(self, *args, config, **meta):
        def kernel_call():
            self.compiled.append(config)
            if config in self.fails:
                raise OutOfResources(config)

        try:
            return self.do_bench(kernel_call, quantiles=(0.5, 0.2, 0.8))
        except OutOfResources:
            return [INF, INF, INF]

    def run(self, key):
        if key not in self.cache:
            timings = {c: self._bench(config=c) for c in self.configs}
            self.cache[key] = min(timings, key=timings.get)
        return self.cache[key]


def test_the_first_config_that_runs_is_kept_and_the_rest_never_compile():
    class Patched(FakeAutotuner):
        pass

    patch(Patched)
    patch(Patched)  # idempotent
    a = Patched(["c0", "c1", "c2", "c3"])
    assert a.run("k1") == "c0" and a.compiled == ["c0"]
    b = Patched(["c0", "c1", "c2", "c3"], fails={"c0", "c1"})
    assert b.run("k1") == "c2" and b.compiled == ["c0", "c1", "c2"]
    assert b.run("k2") == "c2" and b.compiled == ["c0", "c1", "c2", "c0", "c1", "c2"], "each new key tries again"
    assert b.run("k1") == "c2" and len(b.compiled) == 6, "a known key is not tuned again"
    plain = FakeAutotuner(["c0", "c1", "c2"])
    plain.run("k")
    assert plain.compiled == ["c0", "c1", "c2"], "unpatched: every config compiles"


def test_a_real_autotuned_kernel_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    script = tmp_path / "k.py"
    script.write_text(textwrap.dedent('''
        import torch, triton, triton.language as tl
        import triton_single_config
        triton_single_config.install()

        configs = [triton.Config({"BLOCK": b}) for b in (16, 32, 64)]

        @triton.autotune(configs=configs, key=["n"])
        @triton.jit
        def add(x, y, out, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            tl.store(out + offs, tl.load(x + offs, mask=m) + tl.load(y + offs, mask=m), mask=m)

        x, y = torch.randn(100), torch.randn(100)
        out = torch.empty(100)
        add[lambda meta: (triton.cdiv(100, meta["BLOCK"]),)](x, y, out, 100)
        assert torch.equal(out, x + y)
        assert add.best_config.kwargs == {"BLOCK": 16}, add.best_config
        print("ok")
    '''))
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
