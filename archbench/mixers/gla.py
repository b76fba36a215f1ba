"""Gated linear attention layers: RetNet, GLA and HGRN2.

All three keep a matrix state per head, S_t in R^{K x V}, that decays and accumulates an
outer product each step, and read it with a query:

    S_t = Lambda_t S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

They differ in the decay Lambda_t and in where k comes from:

* RetNet, multi-scale retention (Sun et al., 2023): Lambda_t = gamma_h I, a fixed decay per
  head, gamma_h = 1 - 2^(-5 - h) for heads h = 0 .. H-1, so the heads see different time
  scales. Output: GroupNorm per head, times a swish gate, then the output projection.
  This is ``simple_gla`` with a constant log-decay g = log gamma_h.
* GLA (Yang et al., 2023): Lambda_t = diag(alpha_t), a data-dependent decay per key channel
  from a low-rank projection, log alpha_t = logsigmoid(x_t W_1 W_2 + b) / 16 (rank 16,
  logit normaliser 16, as in the paper). Output: per-head RMSNorm, times a swish gate.
  This is ``gla``.
* HGRN2 (Qin et al., 2024): a gated linear RNN whose forget gate f_t in (0, 1)^K is the decay
  and whose input gate is tied to it, k_t = 1 - f_t; the outer product with the input
  v_t = x_t W_i expands the state from K to K x V ("state expansion"), and the output gate
  q_t = SiLU(x_t W_q) reads it. f_t = beta + (1 - beta) sigmoid(x_t W_f) with a lower bound
  beta in [0, 1) (HGRN's per-layer lower bound: 0 for the first layer, rising with depth;
  here a constructor argument). Output: RMSNorm over all heads, then the output projection.
  This is ``gla`` with g = log f.

Dimensions follow the shared config: H = n_heads heads of K = V = head_dim (the GLA paper's
K = V / 2 and RetNet's V = 2K are not used, so that every family gets the same head shape).
Time O(T d^2) to train or prefill, O(d^2) per decoded token, decode state H K V fp32 numbers.

Backends: ``fla`` (flash-linear-attention's ``chunk_simple_gla`` / ``chunk_gla`` Triton
kernels) and ``chunked`` (the pure-PyTorch chunked reference of ``archbench.ops.gla``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MatrixStateMixer, MixerConfig
from archbench.mixers.common import HeadRMSNorm
from archbench.mixers.linear import MATRIX_STATE
from archbench.ops.gla import gla, gla_step, simple_gla, simple_gla_step
from archbench.spec import ArchSpec, fla_and_reference


class RetNet(MatrixStateMixer):
    """Multi-scale retention (Sun et al., 2023, arXiv 2307.08621).

    Per head h: S_t = gamma_h S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(K), gamma_h = 1 - 2^(-5-h);
    y = W_O (swish(x W_G) * GroupNorm_H(o)). The xPos relative-position rotation of q and k is
    omitted (the decay alone carries position), as are the paper's extra normalisers of the
    parallel form, which GroupNorm's scale invariance cancels.
    """

    backends = fla_and_reference("flash-linear-attention chunk_simple_gla Triton kernel (constant g_gamma)")

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        h, hd, d = config.n_heads, config.hd, config.d_model
        self.qkvg = nn.Linear(d, 4 * h * hd, bias=False)
        self.norm = nn.GroupNorm(h, h * hd, eps=1e-5)
        self.out = nn.Linear(h * hd, d, bias=False)
        gamma = 1.0 - torch.pow(2.0, -5.0 - torch.arange(h, dtype=torch.float64))
        self.register_buffer("log_gamma", gamma.log().float(), persistent=False)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, k, v, gate = self.qkvg(x).unflatten(-1, (4, h, hd)).unbind(-3)
        return q, k, v, gate

    def _output(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        shape = o.shape[:-2]
        o = self.norm(o.reshape(-1, o.shape[-2] * o.shape[-1])).reshape(*shape, -1)
        return self.out(F.silu(gate.flatten(-2)) * o)

    def _forward(self, x: torch.Tensor, want_state: bool):
        q, k, v, gate = self._project(x)
        o, final = self._scan(simple_gla, q, k, v, self.log_gamma, want_state=want_state)
        return self._output(o, gate), final

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, gate = self._project(x_t)
        o, state = simple_gla_step(q, k, v, self.log_gamma, state, backend=self.op_backend)
        return self._output(o, gate), state


class GLA(MatrixStateMixer):
    """Gated linear attention (Yang et al., 2023, arXiv 2312.06635).

    Per head: S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(K),
    log alpha_t = logsigmoid(x_t W_1 W_2 + b) / 16 with W_1 W_2 of rank 16;
    y = W_O (swish(x W_r) * RMSNorm(o)) with the norm per head.
    """

    gate_rank = 16
    gate_logit_normalizer = 16.0
    backends = fla_and_reference("flash-linear-attention chunk_gla Triton kernel")

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        h, hd, d = config.n_heads, config.hd, config.d_model
        self.qkvr = nn.Linear(d, 4 * h * hd, bias=False)  # q, k, v and the output gate r
        self.gate_down = nn.Linear(d, self.gate_rank, bias=False)
        self.gate_up = nn.Linear(self.gate_rank, h * hd, bias=True)
        self.norm = HeadRMSNorm(hd, eps=1e-5)
        self.out = nn.Linear(h * hd, d, bias=False)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, k, v, r = self.qkvr(x).unflatten(-1, (4, h, hd)).unbind(-3)
        g = F.logsigmoid(self.gate_up(self.gate_down(x))).unflatten(-1, (h, hd)) / self.gate_logit_normalizer
        return q, k, v, g, r

    def _output(self, o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.out((F.silu(r) * self.norm(o)).flatten(-2))

    def _forward(self, x: torch.Tensor, want_state: bool):
        q, k, v, g, r = self._project(x)
        o, final = self._scan(gla, q, k, v, g, want_state=want_state)
        return self._output(o, r), final

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, g, r = self._project(x_t)
        o, state = gla_step(q, k, v, g, state, backend=self.op_backend)
        return self._output(o, r), state


class HGRN2(MatrixStateMixer):
    """HGRN2, gated linear RNN with state expansion (Qin et al., 2024, arXiv 2404.07904).

    Per head: f_t = beta + (1 - beta) sigmoid(x_t W_f), S_t = diag(f_t) S_{t-1} + (1 - f_t)^T v_t,
    v_t = x_t W_i, o_t = SiLU(x_t W_q) S_t / sqrt(K); y = W_O RMSNorm(o). ``lower_bound`` is beta
    (0 for a first layer). The read-out scale 1/sqrt(K) follows the released implementation;
    the RMSNorm that follows makes it immaterial.
    """

    backends = GLA.backends

    def __init__(self, config: MixerConfig, backend: str = "chunked", lower_bound: float = 0.0):
        super().__init__(config, backend)
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"HGRN2 lower_bound must be in [0, 1), got {lower_bound}")
        self.lower_bound = float(lower_bound)
        h, hd, d = config.n_heads, config.hd, config.d_model
        self.qfi = nn.Linear(d, 3 * h * hd, bias=False)  # output gate (query), forget gate, input
        self.norm = HeadRMSNorm(h * hd, eps=1e-5)
        self.out = nn.Linear(h * hd, d, bias=False)

    def _project(self, x: torch.Tensor):
        h, hd = self.config.n_heads, self.config.hd
        q, f, i = self.qfi(x).unflatten(-1, (3, h, hd)).unbind(-3)
        lb = self.lower_bound
        # log f and 1 - f without cancellation: 1 - sigmoid(z) = sigmoid(-z)
        g = F.logsigmoid(f)
        if lb > 0.0:
            g = torch.logaddexp(torch.full_like(g, math.log(lb)), math.log1p(-lb) + g)
        k = (1.0 - lb) * torch.sigmoid(-f)
        return F.silu(q), k, i, g

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(o.flatten(-2)))

    def _forward(self, x: torch.Tensor, want_state: bool):
        q, k, v, g = self._project(x)
        o, final = self._scan(gla, q, k, v, g, want_state=want_state)
        return self._output(o), final

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, g = self._project(x_t)
        o, state = gla_step(q, k, v, g, state, backend=self.op_backend)
        return self._output(o), state


# ---- analytic forward FLOPs -----------------------------------------------------------


def _mix_flops(config: MixerConfig, batch: int, seq_len: int, per_channel_decay: bool) -> float:
    """Chunked gated linear attention core: intra-chunk scores and values, state read and update."""
    h, hd, c = config.n_heads, config.hd, min(config.chunk_size, max(seq_len, 1))
    per_token = 4 * hd * hd + c * (hd + hd)  # q S, k^T v per token; causal half of (q k^T) v in the chunk
    if per_channel_decay:  # decay factors of q and k: exp + mul per key channel at log2(C) + 1 levels
        per_token += 4 * hd * (max(c - 1, 0).bit_length() + 1)
    else:
        per_token += 2 * c  # the masked [C, C] decay matrix
    return float(batch * h * seq_len * per_token)


def retnet_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs of a constant-decay layer (RetNet, Lightning Attention): q/k/v and gate projections
    in, the output out, and the chunked decayed core."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2 * batch * seq_len * d * 5 * h * hd  # q, k, v, gate in; output out
    return float(proj + _mix_flops(config, batch, seq_len, per_channel_decay=False))


def gla_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2 * batch * seq_len * (d * 5 * h * hd + GLA.gate_rank * (d + h * hd))
    return float(proj + _mix_flops(config, batch, seq_len, per_channel_decay=True))


def hgrn2_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2 * batch * seq_len * d * 4 * h * hd  # q, f, i in; output out
    return float(proj + _mix_flops(config, batch, seq_len, per_channel_decay=True))


SPECS = (
    ArchSpec(
        name="retnet",
        family="linear/retention",
        description="Multi-scale retention: fixed per-head decays, swish gate, GroupNorm (Sun et al., 2023)",
        paper="Retentive Network: A Successor to Transformer for Large Language Models (arXiv 2307.08621)",
        complexity=MATRIX_STATE,
        backends=RetNet.backends,
        factory=RetNet,
        flops=retnet_flops,
    ),
    ArchSpec(
        name="gla",
        family="linear/gated",
        description="Gated linear attention: data-dependent per-channel decay, low-rank gate (Yang et al., 2023)",
        paper="Gated Linear Attention Transformers with Hardware-Efficient Training (arXiv 2312.06635)",
        complexity=MATRIX_STATE,
        backends=GLA.backends,
        factory=GLA,
        flops=gla_flops,
    ),
    ArchSpec(
        name="hgrn2",
        family="linear/gated",
        description="HGRN2: gated linear RNN with outer-product state expansion, tied input gate (Qin et al., 2024)",
        paper="HGRN2: Gated Linear RNNs with State Expansion (arXiv 2404.07904)",
        complexity=MATRIX_STATE,
        backends=HGRN2.backends,
        factory=HGRN2,
        flops=hgrn2_flops,
    ),
)
