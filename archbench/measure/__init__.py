"""Measurement primitives: timing, memory and environment. Nothing here knows about architectures."""

from archbench.measure.memory import PeakMemory, current_memory
from archbench.measure.timing import TimingStats, time_fn

__all__ = ["PeakMemory", "current_memory", "TimingStats", "time_fn"]
