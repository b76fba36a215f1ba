"""Correctness runs without autotuning: every Triton autotuner takes its first config that runs.

A fused kernel's output does not depend on which of its configs runs, only its speed does. On a
fresh GPU machine Triton compiles, and benchmarks, every config of every autotuned kernel the
first time it is called (fla's kernels have up to a dozen each): on the H200, 170 s finished 13
of the ~45 fused-vs-reference tests. With ``ARCHBENCH_TRITON_SINGLE_CONFIG=1`` the test session
(``tests/conftest.py``) patches Triton's ``Autotuner`` so that, for each new tuning key, configs
are tried in order, each run once (no timing), and the first that compiles and runs is kept;
the rest are never compiled. A config that runs out of resources is skipped as autotuning
would skip it. Never use this for timing: the kept config is not the fastest.
"""

from __future__ import annotations

INF = float("inf")


def _run_once(kernel_call, quantiles=None):
    kernel_call()  # compile and run this config once: no timing
    return [0.0, 0.0, 0.0]


def patch(autotuner_cls) -> None:
    """Patch ``autotuner_cls`` (triton.runtime.autotuner.Autotuner) in place; idempotent."""
    if getattr(autotuner_cls, "_archbench_single_config", False):
        return
    orig_run, orig_bench = autotuner_cls.run, autotuner_cls._bench

    def run(self, *args, **kwargs):
        self._archbench_found = False  # a new call: a new key may need tuning
        return orig_run(self, *args, **kwargs)

    def _bench(self, *args, config, **meta):
        if getattr(self, "_archbench_found", False):
            return [INF, INF, INF]  # a config before this one ran: never compile this one
        timing = orig_bench(self, *args, config=config, **meta)  # inf when it ran out of resources
        if timing[0] != INF:
            self._archbench_found = True
        return timing

    autotuner_cls.run, autotuner_cls._bench = run, _bench
    autotuner_cls.do_bench = property(lambda self: _run_once)
    autotuner_cls._archbench_single_config = True


def install() -> None:
    from triton.runtime.autotuner import Autotuner

    patch(Autotuner)
