"""Energy per call, from a hardware counter, or an honest "none".

Sources, in order of preference:

* ``nvml``       NVIDIA's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
                 millijoules since driver load; Volta and later), read before and after a
                 timed window.
* ``nvml_power`` where that counter is missing: ``nvmlDeviceGetPowerUsage`` (milliwatts)
                 sampled in a thread and integrated over the window (trapezoids).
* ``rapl``       Intel/AMD RAPL package counters on CPUs
                 (``/sys/class/powercap/<zone>/energy_uj``; each counter wraps at its
                 ``max_energy_range_uj``, which is handled).
* ``none``       no readable source; the reason is recorded. Never a made-up number.

``measure_energy`` repeats the call until the window lasts at least ``min_window_s``
(counters tick every few ms, so short windows would be mostly quantisation), then divides.
The counters measure the whole device (or CPU package): other work on it during the
window is counted too, which is why the runner runs one cell at a time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class EnergyResult:
    source: str  # nvml | nvml_power | rapl | none
    joules_per_call: float | None = None
    avg_watts: float | None = None
    calls: int = 0
    window_s: float = 0.0
    reason: str | None = None  # why there is no number (source none)

    def as_row(self, tokens_per_call: int | None = None) -> dict:
        per_token = None
        if self.joules_per_call is not None and tokens_per_call:
            per_token = self.joules_per_call / tokens_per_call
        return {
            "energy_source": self.source,
            "energy_j_per_call": self.joules_per_call,
            "energy_j_per_token": per_token,
            "avg_power_w": self.avg_watts,
            "energy_calls": self.calls,
            "energy_window_s": self.window_s,
            "energy_reason": self.reason,
        }


class CounterSource(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> float:
        """Joules consumed between start() and stop()."""
        ...


# ---- NVML ---------------------------------------------------------------------------------


def _nvml_handle(pynvml, device_index: int):
    """The counter of torch's ``cuda:<device_index>``: in a worker pinned to one GPU by
    ``CUDA_VISIBLE_DEVICES`` that is the pinned GPU, not NVML's device 0 (``env.physical_gpu``)."""
    from archbench.measure.env import nvml_handle

    return nvml_handle(pynvml, device_index)


class NvmlCounter:
    name = "nvml"

    def __init__(self, pynvml, handle):
        self.nvml, self.handle = pynvml, handle
        self._start = 0

    def start(self) -> None:
        self._start = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def stop(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._start) / 1e3


class NvmlPowerSampler:
    """Integrates power samples (mW) over the window; for GPUs without the energy counter."""

    name = "nvml_power"

    def __init__(self, pynvml, handle, interval_s: float = 0.01, clock: Callable[[], float] = time.monotonic):
        self.nvml, self.handle, self.interval_s, self.clock = pynvml, handle, interval_s, clock
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self._samples.append((self.clock(), self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._samples = []
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        return integrate_power(self._samples)


def integrate_power(samples: list[tuple[float, float]]) -> float:
    """Trapezoidal integral of (time s, power W) samples, in joules."""
    total = 0.0
    for (t0, p0), (t1, p1) in zip(samples, samples[1:]):
        total += (t1 - t0) * (p0 + p1) / 2
    return total


def nvml_source(device_index: int = 0, pynvml=None) -> tuple[CounterSource | None, str | None]:
    """The best NVML source for a GPU, or (None, reason)."""
    if pynvml is None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            return None, "nvidia-ml-py is not installed"
    try:
        handle = _nvml_handle(pynvml, device_index)
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML unavailable ({type(e).__name__}: {e})"
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return NvmlCounter(pynvml, handle), None
    except Exception:
        pass
    try:
        pynvml.nvmlDeviceGetPowerUsage(handle)
        return NvmlPowerSampler(pynvml, handle), None
    except Exception as e:
        return None, f"NVML has neither an energy counter nor power readings for GPU {device_index} ({e})"


# ---- RAPL ---------------------------------------------------------------------------------


class RaplCounter:
    """Sum of the top-level package zones' counters, wrap-around handled per zone."""

    name = "rapl"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self._start: list[int] = []

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        total_uj = 0
        for before, after, rng in zip(self._start, self._read(), self.ranges):
            total_uj += after - before if after >= before else after + rng - before
        return total_uj / 1e6


def rapl_source(root: Path = POWERCAP_ROOT) -> tuple[CounterSource | None, str | None]:
    if not root.is_dir():
        return None, f"no RAPL powercap interface ({root} missing)"
    zones = sorted(z for z in root.glob("*rapl:*") if z.name.count(":") == 1 and (z / "energy_uj").exists())
    if not zones:
        return None, f"no RAPL package zones under {root}"
    try:
        src = RaplCounter(zones)
        src.start()
        return src, None
    except (OSError, ValueError) as e:
        return None, f"RAPL counters are not readable ({e}); they usually need root"


def energy_source(device: str) -> tuple[CounterSource | None, str | None]:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return nvml_source(index)
    return rapl_source()


# ---- measurement ----------------------------------------------------------------------------


def measure_energy(
    fn: Callable[[], object],
    source: CounterSource | None,
    *,
    reason: str | None = None,
    min_window_s: float = 1.0,
    max_calls: int = 100_000,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EnergyResult:
    """Call ``fn`` repeatedly for at least ``min_window_s`` between two counter reads."""
    if source is None:
        return EnergyResult("none", reason=reason or "no energy source")
    if sync:
        sync()
    calls = 0
    source.start()
    t0 = clock()
    while True:
        fn()
        calls += 1
        if sync:
            sync()
        elapsed = clock() - t0
        if elapsed >= min_window_s or calls >= max_calls:
            break
    joules = source.stop()
    if joules <= 0:
        return EnergyResult("none", calls=calls, window_s=elapsed, reason=f"{source.name} counter did not advance")
    return EnergyResult(source.name, joules / calls, joules / elapsed if elapsed > 0 else None, calls, elapsed)
