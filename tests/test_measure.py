"""The measurement primitives: statistics, the repeat-until-stable loop, peak memory."""

import time

import numpy as np
import pytest
import torch

from archbench.measure.memory import PeakMemory, release_free_memory
from archbench.measure.timing import summarize, time_fn


def test_summarize_statistics():
    s = summarize([5.0, 1.0, 2.0, 3.0, 4.0], warmup_calls=2)
    assert s.median_s == 3.0 and s.min_s == 1.0 and s.repeats == 5 and s.warmup_calls == 2
    assert s.p10_s == pytest.approx(np.percentile([1, 2, 3, 4, 5], 10))
    assert s.iqr_s == pytest.approx(2.0) and s.rel_iqr == pytest.approx(2.0 / 3.0)
    row = s.as_row()
    assert row["time_median_s"] == 3.0 and row["time_samples_s"] == [5.0, 1.0, 2.0, 3.0, 4.0]
    assert row["noisy"] is True  # IQR/median 0.67 > 0.10
    assert summarize([1.0, 1.01, 0.99, 1.0]).as_row()["noisy"] is False
    with pytest.raises(ValueError):
        summarize([])


def test_time_fn_warms_up_and_respects_repeat_bounds():
    calls = []
    s = time_fn(lambda: calls.append(1), warmup=3, min_repeats=4, max_repeats=4, budget_s=10, target_rel_iqr=0.0)
    assert s.repeats == 4 and len(calls) == 3 + 4 and s.timer == "perf_counter"


def test_time_fn_warms_up_by_count_and_by_time():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.01)

    s = time_fn(slow, warmup=1, warmup_s=0.08, min_repeats=2, max_repeats=2, budget_s=10, target_rel_iqr=0.0)
    assert 6 <= s.warmup_calls <= 12 and len(calls) == s.warmup_calls + 2  # ~0.08 s of 0.01 s calls
    s = time_fn(slow, warmup=4, warmup_s=0.0, min_repeats=2, max_repeats=2, budget_s=10, target_rel_iqr=0.0)
    assert s.warmup_calls == 4  # the count is a minimum too


def test_device_times_are_read_back_only_where_the_protocol_looks():
    """A GPU timer enqueues calls without waiting; the protocol synchronises (``collect``) after each
    warm-up call, at its geometric spread checks and at the end: a handful of syncs for 100 calls."""
    from archbench.measure.timing import run_protocol

    class Deferred:
        def __init__(self):
            self.pending, self.launches, self.collects = 0, 0, 0

        def launch(self):
            self.launches += 1
            self.pending += 1

        def collect(self):
            self.collects += 1
            out = [1e-3 * (1 + (i % 2)) for i in range(self.pending)]  # a 2x spread: never stable
            self.pending = 0
            return out

    t = Deferred()
    s = run_protocol(t, warmup=3, warmup_s=0.0, min_repeats=10, max_repeats=100, budget_s=1e9, target_rel_iqr=0.01,
                     timer_name="fake")  # fmt: skip
    assert s.repeats == 100 and s.warmup_calls == 3 and t.launches == 103
    assert t.collects - 3 < 15, f"{t.collects - 3} syncs for 100 timed calls"
    now = [0.0]

    def clock():
        now[0] += 0.3  # every look at the clock: 0.3 s later
        return now[0]

    t = Deferred()
    s = run_protocol(t, warmup=0, warmup_s=0.0, min_repeats=2, max_repeats=1000, budget_s=1.0, target_rel_iqr=0.01,
                     timer_name="fake", clock=clock)  # fmt: skip
    assert 2 <= s.repeats < 6 and t.pending == 0, "the budget stops it, and every launched call is read"


def test_gpu_cells_warm_up_for_a_while_by_default():
    from archbench.bench import GPU_WARMUP_S, _warmup_s

    assert _warmup_s({"warmup_s": None}, "cuda:0") == GPU_WARMUP_S > 0
    assert _warmup_s({}, "cpu") == 0.0 and _warmup_s({"warmup_s": 1.5}, "cpu") == 1.5


def test_time_fn_stops_on_budget():
    t0 = time.perf_counter()
    s = time_fn(lambda: time.sleep(0.01), warmup=0, min_repeats=2, max_repeats=10_000, budget_s=0.15, target_rel_iqr=0.0)
    assert 2 <= s.repeats < 40 and time.perf_counter() - t0 < 2.0
    assert s.median_s == pytest.approx(0.01, rel=0.5)


def test_time_fn_rejects_bad_bounds():
    with pytest.raises(ValueError):
        time_fn(lambda: None, min_repeats=5, max_repeats=2)


def test_peak_memory_sees_a_transient_allocation():
    release_free_memory()

    def spike():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)
        del x

    with PeakMemory("cpu") as base:
        time.sleep(0.02)
    with PeakMemory("cpu") as pm:
        spike()
    assert pm.method == "rss_sampled_1ms"
    assert pm.peak_bytes - base.peak_bytes > 48 * 2**20


def test_measured_roofs_are_positive_and_cached():
    from archbench.measure.roofline import measure_peaks

    p = measure_peaks("cpu", "float32", budget_s=0.05)
    assert p["peak_tflops"] > 0 and p["peak_gbps"] > 0 and "mm 1024x1024 float32" in p["peak_method"]
    assert measure_peaks("cpu", "float32", budget_s=0.05) is p  # once per process


# ---- CUDA-graph replay and CPU pinning --------------------------------------------------


class _FakeCuda:
    """Enough of torch.cuda for capture()'s control flow: streams, a graph that records what
    was captured and replays it."""

    def __init__(self, fail_capture=False):
        self.fail_capture, self.synced = fail_capture, 0
        outer = self

        class Stream:
            def wait_stream(self, other):
                pass

        class Graph:
            def __init__(self):
                self.captured = None

            def replay(self):
                self.captured()

        class GraphCtx:
            def __init__(self, graph):
                self.graph = graph

            def __enter__(self):
                outer.capturing = self.graph
                return self

            def __exit__(self, *exc):
                return False

        import contextlib

        self.Stream, self.CUDAGraph = Stream, Graph
        self.stream = lambda s: contextlib.nullcontext()
        self.current_stream = lambda: Stream()
        self.graph = GraphCtx
        self.capturing = None

    def synchronize(self):
        self.synced += 1


def test_cuda_graph_capture_replays_the_call_and_falls_back_with_a_reason():
    from types import SimpleNamespace

    from archbench.measure.cuda_graph import capture

    calls = []
    cuda = _FakeCuda()
    fake_torch = SimpleNamespace(cuda=cuda)

    def call():
        calls.append(1)
        if cuda.capturing is not None and cuda.capturing.captured is None:
            cuda.capturing.captured = call  # what a capture records

    g = capture(call, "cuda:0", warmup=2, torch_module=fake_torch)
    assert g.used and g.reason is None and len(calls) == 2 + 1 + 1  # warm-up, capture, check replay
    g.call()
    assert len(calls) == 5, "the timed call is the graph's replay"

    def host_sync():
        if cuda.capturing is not None:
            raise RuntimeError("operation not permitted when stream is capturing")

    cuda.capturing = None
    bad = capture(host_sync, "cuda", torch_module=fake_torch)
    assert not bad.used and bad.call is host_sync and "capture failed: RuntimeError" in bad.reason
    cpu = capture(call, "cpu", torch_module=fake_torch)
    assert not cpu.used and "CUDA device" in cpu.reason


def test_cuda_graph_capture_resets_before_warmup_and_capture_never_between_replays():
    from types import SimpleNamespace

    from archbench.measure.cuda_graph import capture

    cuda = _FakeCuda()
    log = []

    def call():
        log.append("call")
        if cuda.capturing is not None and cuda.capturing.captured is None:
            cuda.capturing.captured = call

    g = capture(call, "cuda", warmup=2, torch_module=SimpleNamespace(cuda=cuda), setup=lambda: log.append("reset"))
    assert g.used
    assert log == ["reset", "call", "reset", "call", "reset", "call", "call"]  # warm-ups, capture, check replay
    g.call()
    g.call()
    assert log[-2:] == ["call", "call"], "replays run without a reset"


def test_pinned_cpus_restricts_and_restores():
    import os

    from archbench.measure.pinning import pinned_cpus

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_setaffinity on this OS")
    before = os.sched_getaffinity(0)
    with pinned_cpus(True, 1) as cpus:
        assert cpus == sorted(before)[:1] and os.sched_getaffinity(0) == set(cpus)
    assert os.sched_getaffinity(0) == before
    with pinned_cpus(False, 1) as cpus:
        assert cpus is None and os.sched_getaffinity(0) == before


# ---- memory beyond the peak: saved activations, NVML's view of the process ----------------------


def test_saved_tensors_count_what_backward_keeps_once_per_storage():
    import torch

    from archbench.measure.memory import SavedTensors

    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    with SavedTensors(exclude=list(lin.parameters())) as st:
        torch.relu(lin(x)).sum().backward()
    assert st.bytes == x.numel() * 4 + 8 * 32 * 4  # linear keeps x (and W, excluded), relu its output
    y = torch.randn(4, 6, requires_grad=True) * 1.0  # one storage, two views saved by mul
    with SavedTensors() as st:
        (y[:, :3] * y[:, 3:]).sum().backward()
    assert st.bytes == y.numel() * 4
    with SavedTensors() as st:
        with torch.no_grad():
            torch.relu(lin(x))
    assert st.bytes == 0, "nothing is saved without autograd"


class _FakeProc:
    def __init__(self, pid, used):
        self.pid, self.usedGpuMemory = pid, used


class _FakeNvmlProcs:
    def __init__(self, procs=None, fail=False):
        self.procs, self.fail = procs or [], fail

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("Driver Not Loaded")

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self.procs


def test_nvml_process_memory_finds_this_process_or_says_why_not():
    from archbench.measure.memory import nvml_process_bytes

    nv = _FakeNvmlProcs([_FakeProc(11, 5 << 20), _FakeProc(42, 3 << 30)])
    assert nvml_process_bytes(0, pid=42, pynvml=nv) == (3 << 30, None)
    used, reason = nvml_process_bytes(0, pid=7, pynvml=nv)
    assert used is None and "does not list process 7" in reason
    used, reason = nvml_process_bytes(0, pid=11, pynvml=_FakeNvmlProcs([_FakeProc(11, None)]))
    assert used is None and "without its memory" in reason
    used, reason = nvml_process_bytes(0, pynvml=_FakeNvmlProcs(fail=True))
    assert used is None and "Driver Not Loaded" in reason
