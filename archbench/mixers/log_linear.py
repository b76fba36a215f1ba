"""Log-linear Mamba-2: Mamba-2 whose single state becomes a Fenwick tree of O(log T) states.

Guo et al. (2025, "Log-Linear Attention", arXiv 2506.04761) keep Mamba-2's block and its
scalar decay per head, and replace its one fixed-size state by the hierarchy of
``archbench.ops.log_linear``: the prefix of each query is cut into power-of-two buckets (finer
near the query), each compressed into its own state and read with a data-dependent weight

    lambda_t^(l) = softplus(L_{h,l} * (W_lambda x_t)_{h,l})          (L initialised to 1)

so memory grows with log T while compute stays O(T log T): between linear attention's fixed
state and softmax attention's growing cache. The rest is Mamba-2's (``archbench.mixers.ssm.Mamba2``,
ngroups = 1): q = C_t, k = B_t shared by all heads, v = dt_t x_t, g = A dt_t, the D skip, the
SiLU(z) gate, RMSNorm and the output projection; fla's ``LogLinearMamba2`` is the same layer.

``num_levels`` fixes how many levels the lambda projection produces, hence the longest sequence
the layer takes: 2^(num_levels - 1) tokens (21 levels, about a million tokens; fla uses 15, 16384).
Decode state: per head, one [N, P] state per level in use (about log2 T of them) and the conv
window. Backends: ``fla`` (``chunk_log_linear_attn``, forward and backward; it carries no
state here, so prefill and decode use the reference) and ``chunked`` (``archbench.ops.log_linear``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig
from archbench.mixers.ssm import Mamba2, mamba2_flops
from archbench.ops.log_linear import levels_needed, log_linear_attention, log_linear_attention_step
from archbench.spec import ArchSpec, Complexity, fla_and_reference

NUM_LEVELS = 21


class LogLinearMamba2(Mamba2):
    """Log-linear Mamba-2 (Guo et al., 2025, arXiv 2506.04761)."""

    backends = fla_and_reference(
        "fla chunk_log_linear_attn Triton kernel (no state carry: prefill uses the reference)",
        "pure-PyTorch chunked Fenwick-level reference",
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked", num_levels: int = NUM_LEVELS):
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        super().__init__(config, backend)
        self.num_levels = num_levels
        self.level_proj = nn.Linear(config.d_model, self.n_heads * num_levels, bias=False)
        self.L = nn.Parameter(torch.ones(self.n_heads, num_levels))

    def _op_inputs(self, u: torch.Tensor, xbc: torch.Tensor, dt: torch.Tensor):
        x, dt, Bm, Cm = self._ssm_inputs(xbc, dt)
        acc = self.state_dtype()
        g = -torch.exp(self.A_log.to(acc)) * dt
        lam = F.softplus(self.L.to(acc) * self.level_proj(u).to(acc).unflatten(-1, (self.n_heads, self.num_levels)))
        return x, Cm, Bm, (x * dt[..., None]).to(x.dtype), g, lam

    def _forward(self, u: torch.Tensor, want_state: bool):
        z, xbc, dt = self._split(self.in_proj(u))
        xbc, conv_state = self.conv.run(xbc, want_state)
        x, q, k, v, g, lam = self._op_inputs(u, xbc, dt)
        backend = "torch" if want_state else self.op_backend  # fla's adapter carries no state
        y, S = log_linear_attention(
            q, k, v, g, lam, scale=1.0, output_final_state=want_state, chunk_size=self.config.chunk_size, backend=backend
        )
        out = self._out(y + x * self.D.to(y.dtype)[:, None], z)
        if not want_state:
            return out, None
        return out, {"conv": conv_state, "levels": S.to(self.state_dtype()), "t": u.shape[1]}

    def init_state(self, batch: int) -> dict[str, Any]:
        levels = self._zeros(batch, self.n_heads, self.num_levels, self.d_state, self.head_dim)
        return {"conv": self.conv.init_state(batch), "levels": levels, "t": 0}

    def step(self, u_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        z, xbc, dt = self._split(self.in_proj(u_t))
        xbc, conv_state = self.conv.step(xbc, state["conv"])
        x, q, k, v, g, lam = self._op_inputs(u_t, xbc, dt)
        y, levels = log_linear_attention_step(q, k, v, g, lam, state["levels"], state["t"], scale=1.0)
        out = self._out(y + x * self.D.to(y.dtype)[:, None], z)
        return out, {"conv": conv_state, "levels": levels, "t": state["t"] + 1}

    def state_bytes(self, batch: int, seq_len: int) -> int:
        """The conv window and the level states a query after ``seq_len`` tokens reads (log2 of it)."""
        levels = min(self.num_levels, levels_needed(seq_len + 1))
        return self.conv.state_bytes(batch) + batch * self.n_heads * levels * self.d_state * self.head_dim * 4


def log_linear_mamba2_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Mamba-2's FLOPs plus the lambda projection, the level weights of the intra-chunk scores,
    and the inter-chunk read-out of the log2(T / C) level states (2 N P flops per level and token)."""
    d = config.d_model
    di, N, P = config.expand * d, config.d_state or 64, config.hd
    H = di // P
    C = min(config.chunk_size, max(seq_len, 1))
    active = max(levels_needed(max(seq_len, 1)) - C.bit_length(), 1)
    bt = batch * seq_len
    extra = 2 * bt * d * H * NUM_LEVELS + 2 * bt * C * H + 2 * bt * H * N * P * active
    return mamba2_flops(config, batch, seq_len) + float(extra)


def log_linear_mamba2_decode_flops(config: MixerConfig, batch: int, context: int) -> float:
    """One decode step after ``context`` tokens: Mamba-2's step plus the read-out of every level in use."""
    d = config.d_model
    di, N, P = config.expand * d, config.d_state or 64, config.hd
    extra = 2 * batch * d * (di // P) * NUM_LEVELS + 2 * batch * di * N * levels_needed(context + 1)
    return mamba2_flops(config, batch, 1) + float(extra)


SPECS = (
    ArchSpec(
        name="log_linear_mamba2",
        family="ssm/log-linear",
        description="Log-linear Mamba-2: a Fenwick tree of O(log T) SSD states with learned level weights (Guo et al., 2025)",
        paper="Log-Linear Attention (arXiv 2506.04761)",
        complexity=Complexity("O(T log T d N)", "O(T d + (T/C) d N)", "O(d N log T) per token", "O(d N log T) state"),
        backends=LogLinearMamba2.backends,
        factory=LogLinearMamba2,
        flops=log_linear_mamba2_flops,
        decode_flops=log_linear_mamba2_decode_flops,
    ),
)
