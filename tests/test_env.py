"""Environment facts: NVML fields read one by one (fake NVML), and the busy-GPU warning."""

import os
from types import SimpleNamespace

from archbench.measure.env import busy_warning, collect_env, nvml_device_info


class FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, others=(), power=True):
        self.others, self.power = others, power

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlSystemGetDriverVersion(self):
        return b"560.35.03"

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxClockInfo(self, h, which):
        return 1980

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        if not self.power:
            raise RuntimeError("Not Supported")
        return 700_000

    def nvmlDeviceGetTemperature(self, h, which):
        return 41

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p) for p in (os.getpid(), *self.others)]


def test_nvml_fields_and_missing_ones():
    info = nvml_device_info(0, pynvml=FakeNvml(power=False))
    assert info["driver"] == "560.35.03" and info["gpu_sm_clock_mhz"] == 1980 and info["gpu_mem_clock_mhz"] == 2619
    assert "gpu_power_limit_w" not in info  # unsupported field left out, the rest still read
    assert info["gpu_other_processes"] == []  # our own process does not count
    assert nvml_device_info(0, pynvml=FakeNvml())["gpu_power_limit_w"] == 700.0


def test_busy_gpu_warning():
    info = nvml_device_info(0, pynvml=FakeNvml(others=(4242,)))
    assert "4242" in busy_warning(info)
    assert busy_warning({"gpu_other_processes": []}) is None and busy_warning({}) is None


def test_no_driver():
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert nvml_device_info(0, pynvml=Broken())["nvml"].startswith("unavailable")


def test_collect_env_on_cpu_has_versions():
    env = collect_env("cpu")
    assert env["torch"] and env["python"] and env["cpu_count"] >= 1 and env["device_name"]


def test_archbench_version_is_known_from_a_checkout(monkeypatch):
    """On the GPU node archbench runs from a checkout on PYTHONPATH, not installed: the env still says which."""
    import archbench
    from archbench.measure import env as env_mod

    monkeypatch.setattr(env_mod, "package_version", lambda dist: None)
    assert collect_env("cpu")["archbench"] == archbench.__version__
