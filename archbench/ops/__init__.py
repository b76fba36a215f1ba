"""Functional sequence ops in the [B, T, H, D] layout.

Each op has a pure-PyTorch reference (``backend="torch"``) that runs anywhere and
fused backends that are used when present. Ops know nothing of suites or reports.
Recurrent ops take ``initial_state`` / ``output_final_state`` and return ``(o, final_state)``;
each has a one-token ``*_step`` form for decode.
"""

from archbench.ops.delta_product import gated_delta_product, gated_delta_product_step
from archbench.ops.delta_rule import delta_rule, delta_rule_step, gated_delta_rule, gated_delta_rule_step
from archbench.ops.dplr import dplr, dplr_step
from archbench.ops.forgetting_attention import forgetting_attention
from archbench.ops.gla import gla, gla_step, simple_gla, simple_gla_step
from archbench.ops.kda import kda, kda_step
from archbench.ops.lightning import lightning_attention, lightning_attention_step
from archbench.ops.linear_attention import linear_attention, linear_attention_step
from archbench.ops.log_linear import log_linear_attention, log_linear_attention_step
from archbench.ops.long_conv import causal_long_conv, long_conv_step
from archbench.ops.mamba3 import mamba3, mamba3_step
from archbench.ops.mla import mla
from archbench.ops.moba import moba
from archbench.ops.nsa import nsa
from archbench.ops.path_attention import path_attention
from archbench.ops.selective_scan import selective_scan, selective_scan_step
from archbench.ops.softmax_attention import masked_attention, softmax_attention
from archbench.ops.ssd import ssd, ssd_step

__all__ = [
    "softmax_attention", "masked_attention", "nsa", "moba", "mla", "forgetting_attention", "path_attention",
    "linear_attention", "linear_attention_step",
    "simple_gla", "simple_gla_step", "gla", "gla_step",
    "delta_rule", "delta_rule_step", "gated_delta_rule", "gated_delta_rule_step",
    "dplr", "dplr_step",
    "ssd", "ssd_step", "selective_scan", "selective_scan_step", "mamba3", "mamba3_step",
    "kda", "kda_step", "gated_delta_product", "gated_delta_product_step",
    "lightning_attention", "lightning_attention_step", "log_linear_attention", "log_linear_attention_step",
    "causal_long_conv", "long_conv_step",
]  # fmt: skip
