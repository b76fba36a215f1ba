"""Gated EMA mixer: y = W_o (SiLU(W_g x) * EMA(W_i x)), the damped-EMA sublayer of Mega without
its attention (Ma et al., 2022). A fixed state of D numbers per sequence, whatever the context."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer, MixerConfig
from archbench.spec import ArchSpec, Backend, Complexity, always
from example_arch.ema import ema, ema_step


class GatedEMA(Mixer):
    # its backends, preferred first; exactly one is the pure-PyTorch reference (``op``: the op backend it calls)
    backends = (Backend("reference", "pure-PyTorch chunked reference", always, reference=True),)

    def __init__(self, config: MixerConfig, backend: str = "reference"):
        super().__init__(config, backend)  # keeps config, backend and op_backend; refuses a name not in backends
        d = config.d_model
        self.inp, self.gate, self.out = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.decay_logit = nn.Parameter(torch.linspace(-2.0, 3.0, d))  # decays from 0.12 to 0.95

    def _decay(self) -> torch.Tensor:
        return torch.sigmoid(self.decay_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefill(x)[0]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, state = ema(self.inp(x), self._decay(), output_final_state=True, chunk_size=self.config.chunk_size)
        return self.out(F.silu(self.gate(x)) * h), state

    def init_state(self, batch: int) -> torch.Tensor:
        return self.out.weight.new_zeros(batch, self.config.d_model)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, state = ema_step(self.inp(x_t), self._decay(), state)
        return self.out(F.silu(self.gate(x_t)) * h), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return batch * self.config.d_model * self.out.weight.element_size()


def flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    d, c = config.d_model, min(config.chunk_size, seq_len)
    return float(batch * seq_len * (3 * 2 * d * d + 2 * c * d))  # three projections + the chunk's Toeplitz product


registry.register(ArchSpec(
    name="example_ema",
    family="example/ema",
    description="Gated damped EMA, the example of docs/adding-an-architecture.md (Ma et al., 2022)",
    paper="Mega: Moving Average Equipped Gated Attention (arXiv 2209.10655)",
    complexity=Complexity(train_time="O(T C d)", train_memory="O(T d)", decode_time="O(d) per token",
                          decode_memory="O(d) state"),
    backends=GatedEMA.backends,
    factory=GatedEMA,
    flops=flops,
), replace=True)
