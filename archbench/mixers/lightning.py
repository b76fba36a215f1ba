"""Lightning Attention, the linear-attention layer of MiniMax-01.

MiniMax-01 (MiniMax, 2025, "MiniMax-01: Scaling Foundation Models with Lightning Attention",
arXiv 2501.08313) interleaves seven lightning-attention layers with one softmax layer. Each
lightning layer is linear attention with a fixed decay per head (TransNormerLLM's form, Qin et
al., 2023), computed block by block (Lightning Attention-2, Qin et al., 2024, arXiv 2401.04658):

    q, k, v = SiLU(W_qkv x)                         (no short convolution, no positional encoding)
    S_t = exp(-s_h) S_{t-1} + k_t^T v_t,   o_t = q_t S_t          (no 1/sqrt(d) scale)
    y   = W_o (sigmoid(W_g x) * RMSNorm(o))                       (RMSNorm over all heads at once)

with ALiBi-like decay rates s_h = 2^{-8 (h + 1) / H} that shrink with depth
(``archbench.ops.lightning.minimax_slopes``; ``layer_idx`` / ``num_layers`` pick the layer, the
first layer, the most forgetful, by default). As in the transformers implementation
(``MiniMaxLightningAttention``). Time O(T d^2 / H) to train or prefill, O(d^2 / H) per decoded
token, a decode state of H d_k d_v fp32 numbers.

Backends: ``fla`` (flash-linear-attention's ``chunk_simple_gla`` with a constant per-head decay,
the kernel behind fla's ``chunk_lightning_attn``) and ``chunked`` (``archbench.ops.gla``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MatrixStateMixer, MixerConfig
from archbench.mixers.common import HeadRMSNorm
from archbench.mixers.gla import retnet_flops
from archbench.mixers.linear import MATRIX_STATE
from archbench.ops.lightning import lightning_attention, lightning_attention_step, minimax_slopes
from archbench.spec import ArchSpec, fla_and_reference


class LightningAttention(MatrixStateMixer):
    """MiniMax-01's lightning-attention layer (arXiv 2501.08313)."""

    backends = fla_and_reference(
        "flash-linear-attention chunk_simple_gla Triton kernel (constant g_gamma)",
        "pure-PyTorch chunked reference (simple GLA, constant decay)",
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked", layer_idx: int = 0, num_layers: int = 1):
        super().__init__(config, backend)
        h, hd, d = config.n_heads, config.hd, config.d_model
        self.qkv = nn.Linear(d, 3 * h * hd, bias=False)
        self.gate = nn.Linear(d, h * hd, bias=False)
        self.norm = HeadRMSNorm(h * hd, eps=1e-5)
        self.out = nn.Linear(h * hd, d, bias=False)
        self.register_buffer("slopes", minimax_slopes(h, layer_idx, num_layers), persistent=False)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, k, v = F.silu(self.qkv(x)).unflatten(-1, (3, h, hd)).unbind(-3)
        return q, k, v

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sigmoid(self.gate(x)) * self.norm(o.flatten(-2)))

    def _forward(self, x: torch.Tensor, want_state: bool):
        q, k, v = self._project(x)
        o, final = self._scan(lightning_attention, q, k, v, self.slopes, scale=1.0, want_state=want_state)
        return self._output(o, x), final

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._project(x_t)
        o, state = lightning_attention_step(q, k, v, self.slopes, state, scale=1.0, backend=self.op_backend)
        return self._output(o, x_t), state


SPECS = (
    ArchSpec(
        name="lightning_attention",
        family="linear/retention",
        description="Lightning Attention: linear attention with fixed per-head decays, MiniMax-01's layer (2025)",
        paper="MiniMax-01: Scaling Foundation Models with Lightning Attention (arXiv 2501.08313)",
        complexity=MATRIX_STATE,
        backends=LightningAttention.backends,
        factory=LightningAttention,
        flops=retnet_flops,  # RetNet's: the same projections and constant-decay core
    ),
)
