"""Token mixers: nn.Modules mapping [B, T, D] -> [B, T, D], one file per family."""

from archbench.mixers.base import Mixer, MixerConfig

__all__ = ["Mixer", "MixerConfig"]
