"""Energy sources with fake NVML and a fake powercap tree: counters, fallback, wrap-around, absence."""

import itertools

import pytest

from archbench.measure.energy import (
    NvmlCounter,
    NvmlPowerSampler,
    RaplCounter,
    integrate_power,
    energy_source,
    measure_energy,
    nvml_source,
    rapl_source,
)


class FakeNvml:
    """A stand-in for pynvml: an energy counter that grows 50 mJ per read, or none."""

    def __init__(self, counter=True, power=True, driver=True):
        self.counter, self.power, self.driver = counter, power, driver
        self._mj = itertools.count(1_000_000, 50_000)

    def nvmlInit(self):
        if not self.driver:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise RuntimeError("Not Supported")
        return next(self._mj)

    def nvmlDeviceGetPowerUsage(self, h):
        if not self.power:
            raise RuntimeError("Not Supported")
        return 300_000  # 300 W in mW


def test_nvml_counter_preferred():
    src, reason = nvml_source(0, pynvml=FakeNvml())
    assert isinstance(src, NvmlCounter) and reason is None
    src.start()
    assert src.stop() == pytest.approx(50.0)  # 50_000 mJ -> 50 J


def test_nvml_falls_back_to_power_sampling():
    src, _ = nvml_source(0, pynvml=FakeNvml(counter=False))
    assert isinstance(src, NvmlPowerSampler)
    t = iter([0.0, 0.5, 1.0, 1.5, 2.0] + [2.0] * 100)
    src.clock = lambda: next(t)
    src.interval_s = 10  # the thread will not sample; start/stop samples only
    src.start()
    assert src.stop() == pytest.approx(300.0 * 0.5)


def test_no_driver_or_no_readings_gives_reason():
    src, reason = nvml_source(0, pynvml=FakeNvml(driver=False))
    assert src is None and "NVML unavailable" in reason
    src, reason = nvml_source(0, pynvml=FakeNvml(counter=False, power=False))
    assert src is None and "neither" in reason


def test_integrate_power_trapezoids():
    assert integrate_power([(0, 100), (1, 200), (3, 200)]) == pytest.approx(150 + 400)
    assert integrate_power([(0, 100)]) == 0.0


def _zone(root, name, energy, rng):
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(str(energy))
    (z / "max_energy_range_uj").write_text(str(rng))
    return z


def test_rapl_handles_wrap_around(tmp_path):
    z0 = _zone(tmp_path, "intel-rapl:0", 999_000, 1_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 5, 1_000_000)  # a subzone (core): not double counted
    src, reason = rapl_source(tmp_path)
    assert isinstance(src, RaplCounter) and len(src.zones) == 1 and reason is None
    src.start()
    (z0 / "energy_uj").write_text("4000")  # wrapped: 1000 uJ to the top + 4000 uJ after
    assert src.stop() == pytest.approx(5000e-6)


def test_rapl_missing_or_unreadable(tmp_path):
    assert rapl_source(tmp_path / "nope")[0] is None
    assert "no RAPL package zones" in rapl_source(tmp_path)[1]


def test_measure_energy_fills_a_window_and_divides():
    clock = itertools.count(0.0, 0.25)  # each clock read advances 0.25 s
    src, _ = nvml_source(0, pynvml=FakeNvml())
    res = measure_energy(lambda: None, src, min_window_s=1.0, clock=lambda: next(clock))
    assert res.source == "nvml" and res.calls == 4
    assert res.joules_per_call == pytest.approx(50.0 / 4) and res.avg_watts == pytest.approx(50.0)
    row = res.as_row(tokens_per_call=100)
    assert row["energy_j_per_token"] == pytest.approx(50.0 / 4 / 100)


def test_measure_energy_without_source_is_none_with_reason():
    res = measure_energy(lambda: None, None, reason="no RAPL here")
    assert res.source == "none" and res.joules_per_call is None and res.reason == "no RAPL here"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="the real NVML counter needs a CUDA device")
def test_real_nvml_energy_of_a_busy_gpu_is_plausible():
    """On a GPU node: one second of large matmuls reads a positive energy from NVML, and the
    implied average power lies between an idle card's and any card's limit."""
    import torch

    src, reason = energy_source("cuda:0")
    assert src is not None, reason
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    result = measure_energy(lambda: x @ x, src, sync=torch.cuda.synchronize, min_window_s=1.0)
    assert result.source in ("nvml", "nvml_power"), result.reason
    assert result.calls > 10 and result.joules_per_call > 0
    assert 30 < result.avg_watts < 1500, f"{result.avg_watts:.0f} W"
