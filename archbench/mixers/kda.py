"""Kimi Delta Attention: Gated DeltaNet with a forget gate per key channel.

Kimi Linear (Kimi Team, 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture",
arXiv 2510.26692) keeps Gated DeltaNet's delta-rule memory but gives its decay GLA's
granularity: every key channel of every head forgets at its own data-dependent rate,

    S_t = (I - beta_t k_t^T k_t) Diag(alpha_t) S_{t-1} + beta_t k_t^T v_t,    o_t = q_t S_t / sqrt(d_k)
    log alpha_t = -exp(A_log) * softplus(W_f2 W_f1 x_t + dt_bias)              (per channel, rank d_k)

so the decay spends the state's capacity channel by channel rather than all at once. The layer
otherwise follows Gated DeltaNet (and fla's ``KimiDeltaAttention``): q, k, v = SiLU(ShortConv(W x)),
q and k L2-normalised, beta_t = sigmoid(W_beta x_t) per head, and the output
RMSNorm(o) * sigmoid(W_g2 W_g1 x) (a low-rank sigmoid-gated norm per head) before W_o.
Training / prefill O(T (C + d_k) d_v) per head with chunk C; decode O(d_k d_v) per token per head
with a fixed state of H d_k d_v fp32 values plus three conv windows.

Backends: ``fla`` (flash-linear-attention's ``chunk_kda`` / ``fused_recurrent_kda`` Triton kernels,
q/k L2 norm fused) and ``chunked`` (the WY / UT-transform reference of ``archbench.ops.kda``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig
from archbench.mixers.delta import DELTA_RULE, GatedDeltaNet, _conv_flops, _delta_rule_op_flops, fla_wy
from archbench.ops.kda import FLA_MAX_HEAD_DIM, kda, kda_step
from archbench.spec import ArchSpec


class KimiDeltaAttention(GatedDeltaNet):
    """KDA layer (Kimi Linear, arXiv 2510.26692): the gated delta rule with per-channel decay."""

    _op, _step_op = staticmethod(kda), staticmethod(kda_step)
    backends = fla_wy("chunk_kda", FLA_MAX_HEAD_DIM)
    norm_eps = 1e-5

    def _decay_projections(self, config: MixerConfig) -> int:
        """Low-rank (rank hd) projections for the per-channel decay and the output gate, as in Kimi Linear;
        Mamba2-style initialisation, one A per head and one dt bias per channel."""
        d, h, hd = config.d_model, config.n_heads, config.hd
        self.f_proj = nn.Sequential(nn.Linear(d, hd, bias=False), nn.Linear(hd, h * hd, bias=False))
        self.g_proj = nn.Sequential(nn.Linear(d, hd, bias=False), nn.Linear(hd, h * hd, bias=True))
        return h * hd

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-decay g [..., H, hd] in fp32, beta [..., H]): g = -exp(A_log) softplus(W_f x + dt_bias)."""
        h, hd = self.config.n_heads, self.config.hd
        pre = (self.f_proj(x).float() + self.dt_bias.float()).unflatten(-1, (h, hd))
        g = -self.A_log.float().exp()[:, None] * F.softplus(pre)
        return g, torch.sigmoid(self.b_proj(x))

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = self.g_proj(x).unflatten(-1, (self.config.n_heads, self.config.hd))
        return self.o_proj((self.o_norm(o) * torch.sigmoid(gate)).flatten(-2))


def kda_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs: q/k/v/beta/out projections, the two rank-hd gate projections, short convs,
    the chunked delta rule, and the per-channel decay factors (about 6 passes over [T, H, K])."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2.0 * batch * seq_len * (d * (3 * h * hd + h) + h * hd * d)
    low_rank = 2.0 * batch * seq_len * 2 * (d * hd + hd * h * hd)
    decay = 6.0 * batch * seq_len * h * hd
    return proj + low_rank + decay + _conv_flops(config, batch, seq_len) + _delta_rule_op_flops(config, batch, seq_len)


SPECS = (
    ArchSpec(
        name="kda",
        family="linear/delta-rule",
        description="Kimi Delta Attention: gated delta rule with a decay per key channel (Kimi Linear, 2025)",
        paper="Kimi Linear: An Expressive, Efficient Attention Architecture (arXiv 2510.26692)",
        complexity=DELTA_RULE,
        backends=KimiDeltaAttention.backends,
        factory=KimiDeltaAttention,
        flops=kda_flops,
    ),
)
