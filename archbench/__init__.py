"""archbench: measure efficient sequence-mixing architectures side by side."""

__version__ = "0.1.0"
