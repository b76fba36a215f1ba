"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Replace exp(q . k) by phi(q) . phi(k) with the positive feature map phi(x) = elu(x) + 1:

    S_t = S_{t-1} + phi(k_t)^T v_t,        z_t = z_{t-1} + phi(k_t)
    o_t = phi(q_t) S_t / (phi(q_t) . z_t)

Time O(T d^2) to train or prefill, O(d^2) per decoded token, and a decode state of fixed
size H * d_head * (d_head + 1) whatever the context length. The normaliser z rides along
as one extra value column (v' = [v, 1]), so numerator and denominator come out of a
single ``linear_attention`` op call.

Backends: ``fla`` (flash-linear-attention's ``chunk_linear_attn`` Triton kernel, CUDA) and
``chunked`` (the pure-PyTorch chunked reference of ``archbench.ops``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.ops.linear_attention import linear_attention, linear_attention_step
from archbench.spec import ArchSpec, Complexity, fla_and_reference

EPS = 1e-6


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


class LinearAttention(ParallelMixer):
    backends = fla_and_reference("flash-linear-attention chunk_linear_attn Triton kernel")

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        h, hd = config.n_heads, config.hd
        self.qkv = nn.Linear(config.d_model, 3 * h * hd, bias=False)
        self.out = nn.Linear(h * hd, config.d_model, bias=False)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, k, v = self.qkv(x).unflatten(-1, (3, h, hd)).unbind(-3)
        ones = torch.ones_like(v[..., :1])
        return feature_map(q), feature_map(k), torch.cat([v, ones], dim=-1)

    @staticmethod
    def _normalise(o: torch.Tensor) -> torch.Tensor:
        return o[..., :-1] / (o[..., -1:] + EPS)

    def _forward(self, x: torch.Tensor, want_state: bool):
        q, k, v = self._project(x)
        o, state = self._scan(linear_attention, q, k, v, scale=1.0, want_state=want_state)
        return self.out(self._normalise(o).flatten(2)), state

    def init_state(self, batch: int) -> torch.Tensor:
        return self._zeros(batch, self.config.n_heads, self.config.hd, self.config.hd + 1)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._project(x_t)
        o, state = linear_attention_step(q, k, v, state, scale=1.0, backend=self.op_backend)
        return self.out(self._normalise(o).flatten(1)), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        h, hd = self.config.n_heads, self.config.hd
        return batch * h * hd * (hd + 1) * 4  # fp32 state, independent of seq_len


def linear_attention_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs of the chunked form: projections + intra-chunk quadratic + state update/read."""
    h, hd, d, c = config.n_heads, config.hd, config.d_model, config.chunk_size
    proj = 2 * batch * seq_len * d * 3 * h * hd + 2 * batch * seq_len * h * hd * d
    v = hd + 1
    mix = batch * h * seq_len * (4 * hd * v + min(c, seq_len) * (hd + v))  # one token (decode): c = 1
    return float(proj + mix)


# the cost of every layer with a [d_k, d_v] matrix state per head, chunked in training
MATRIX_STATE = Complexity(
    train_time="O(T d^2)",
    train_memory="O(T d + (T/C) d^2)",
    decode_time="O(d^2) per token",
    decode_memory="O(d^2) state",
)

SPECS = (
    ArchSpec(
        name="linear_attention",
        family="linear/linear-attention",
        description="Causal linear attention with elu+1 feature map (Katharopoulos et al., 2020)",
        paper="Transformers are RNNs (arXiv 2006.16236)",
        complexity=MATRIX_STATE,
        backends=LinearAttention.backends,
        factory=LinearAttention,
        flops=linear_attention_flops,
    ),
)
