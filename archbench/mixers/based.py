"""Based (Arora et al., 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"): linear attention with a Taylor feature map for global recall, plus
exact softmax attention over a small sliding window for local precision, behind a short
convolution.

**Taylor feature map.** Per head, q and k are projected to ``FEATURE_DIM`` = f dimensions and

    phi(x) = [1, x / f^(1/4), vec(x x^T) / (sqrt(2) sqrt(f))]        (1 + f + f^2 features)

so that phi(q) . phi(k) = 1 + q.k / sqrt(f) + (q.k)^2 / (2 f): the second-order Taylor
expansion of exp(q.k / sqrt(f)), which is positive-leaning and sharp enough to look a key up.
The linear-attention branch is then normalised causal linear attention
(``archbench.ops.linear_attention`` with the normaliser as an extra value column):

    S_t = S_{t-1} + phi(k_t)^T [v_t, 1],   o_t = (phi(q_t) S_t)[:-1] / ((phi(q_t) S_t)[-1] + eps)

**The mixer.** x' = ShortConv_k(x) (depthwise, kernel ``conv_size``, none when 0), then

    y = W_o LinAttn_Taylor(x') + SWA_w(x')

with SWA the causal sliding-window softmax attention of ``archbench.mixers.sparse`` (window
``config.window``, 64 when unset: the Based paper's window). The paper stacks these as separate
layers (BaseConv, linear attention and window layers); here the two attention branches share a
layer, so a two-layer MQAR model has both in each layer. The decode state is fixed: per head
(1 + f + f^2) x (d_head + 1) fp32 values, the window's W keys and values, and the conv window.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from archbench.mixers.base import Mixer, MixerConfig
from archbench.mixers.common import ShortConv
from archbench.mixers.sparse import SlidingWindowAttention, sliding_window_flops
from archbench.ops.linear_attention import linear_attention, linear_attention_step
from archbench.spec import ArchSpec, Backend, Complexity, always, marginal_flops, reference_backend

FEATURE_DIM = 16  # the Based paper's feature dimension (Zoology's Figure 2 Based uses 8)
WINDOW = 64  # the Based paper's sliding window
EPS = 1e-6


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """phi(x) [..., 1 + f + f^2] for x [..., f] (module docstring)."""
    f = x.shape[-1]
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2.0) * math.sqrt(f))
    return torch.cat([torch.ones_like(x[..., :1]), x / f**0.25, second], dim=-1)


class Based(Mixer):
    # the sliding-window branch's backend (a backend of SlidingWindowAttention); the linear branch is the chunked reference
    backends = (
        Backend("sdpa", "chunked linear-attention reference + torch SDPA sliding window", always),
        reference_backend("pure-PyTorch references for both branches", "naive", op=None),
    )

    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__(config, backend)
        d, h, hd = config.d_model, config.n_heads, config.hd
        self.conv = ShortConv(d, config.conv_size, activation=False) if config.conv_size > 0 else None
        self.qk = nn.Linear(d, 2 * h * FEATURE_DIM, bias=False)
        self.v = nn.Linear(d, h * hd, bias=False)
        self.out = nn.Linear(h * hd, d, bias=False)
        self.swa = SlidingWindowAttention(dataclasses.replace(config, window=config.window or WINDOW), backend)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, k = self.qk(x).unflatten(-1, (2, h, FEATURE_DIM)).unbind(-3)
        v = self.v(x).unflatten(-1, (h, hd))
        return taylor_features(q), taylor_features(k), torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    @staticmethod
    def _normalise(o: torch.Tensor) -> torch.Tensor:
        return o[..., :-1] / (o[..., -1:] + EPS)

    def _linear(self, x: torch.Tensor, want_state: bool):
        q, k, v = self._project(x)
        o, state = linear_attention(q, k, v, scale=1.0, chunk_size=self.config.chunk_size, output_final_state=want_state)
        return self.out(self._normalise(o).flatten(2)), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = self.conv(x) if self.conv is not None else x
        return self._linear(xc, False)[0] + self.swa(xc)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        xc = self.conv(x) if self.conv is not None else x
        y_lin, lin = self._linear(xc, True)
        y_swa, swa = self.swa.prefill(xc)
        window = self.conv.window(x).to(self.state_dtype()) if self.conv is not None else None
        return y_lin + y_swa, {"conv": window, "linear": lin, "swa": swa}

    def init_state(self, batch: int) -> dict:
        h, hd, n = self.config.n_heads, self.config.hd, 1 + FEATURE_DIM + FEATURE_DIM**2
        conv = self.conv.init_state(batch).to(self.state_dtype()) if self.conv is not None else None
        linear = self.v.weight.new_zeros(batch, h, n, hd + 1, dtype=self.state_dtype())
        return {"conv": conv, "linear": linear, "swa": self.swa.init_state(batch)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.conv is not None:
            x_t, state["conv"] = self.conv.step(x_t, state["conv"].to(x_t.dtype))
        q, k, v = self._project(x_t)
        o, state["linear"] = linear_attention_step(q, k, v, state["linear"], scale=1.0)
        y_swa, state["swa"] = self.swa.step(x_t, state["swa"])
        return self.out(self._normalise(o).flatten(1)) + y_swa, state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        h, hd, n = self.config.n_heads, self.config.hd, 1 + FEATURE_DIM + FEATURE_DIM**2
        conv = self.conv.state_bytes(batch) if self.conv is not None else 0
        return batch * h * n * (hd + 1) * 4 + self.swa.state_bytes(batch, seq_len) + conv


def based_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """The linear branch (projections, feature map, chunked linear attention) + the window branch."""
    d, h, hd, c = config.d_model, config.n_heads, config.hd, config.chunk_size
    n, v = 1 + FEATURE_DIM + FEATURE_DIM**2, hd + 1
    proj = 2.0 * batch * seq_len * d * (2 * h * FEATURE_DIM + 2 * h * hd)
    mix = batch * h * seq_len * (4 * n * v + min(c, seq_len) * (n + v))
    conv = 2.0 * batch * seq_len * d * config.conv_size
    window = sliding_window_flops(dataclasses.replace(config, window=config.window or WINDOW), batch, seq_len)
    return float(proj + mix + conv + window)


def based_decode_flops(config: MixerConfig, batch: int, context: int) -> float:
    """One token of the linear branch (a fixed-state step) + the window branch's token ``context + 1``."""
    windowed = dataclasses.replace(config, window=config.window or WINDOW)
    linear = based_flops(config, batch, 1) - sliding_window_flops(windowed, batch, 1)
    return float(linear + marginal_flops(sliding_window_flops)(windowed, batch, context))


SPECS = (
    ArchSpec(
        name="based",
        family="linear/based",
        description="Based: Taylor-feature linear attention + sliding-window attention + short conv (Arora et al., 2024)",
        paper="Simple linear attention language models balance the recall-throughput tradeoff (arXiv 2402.18668)",
        complexity=Complexity("O(T f^2 d + T W d)", "O(T d + (T/C) f^2 d)", "O(f^2 d + W d) per token", "O(f^2 d + W d) state"),
        backends=Based.backends,
        factory=Based,
        flops=based_flops,
        decode_flops=based_decode_flops,
    ),
)
