"""Functional sequence ops in the [B, T, H, D] layout.

Each op has a pure-PyTorch reference (``backend="torch"``) that runs anywhere and
fused backends that are used when present. Ops know nothing of suites or reports.
"""

from archbench.ops.softmax_attention import softmax_attention
from archbench.ops.linear_attention import linear_attention, linear_attention_step

__all__ = ["softmax_attention", "linear_attention", "linear_attention_step"]
