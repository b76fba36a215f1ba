"""DeltaNet and Gated DeltaNet: linear attention that overwrites instead of only adding.

DeltaNet (Schlag et al., 2021; Yang et al., 2024, "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", arXiv 2406.06484) keeps the linear-attention state
S in R^{d_k x d_v} per head but writes with the delta rule: it reads the value currently
stored under the key, k_t S_{t-1}, and moves it a fraction beta_t towards v_t,

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}) = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t = q_t S_t / sqrt(d_k)

Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2024, "Gated Delta Networks: Improving Mamba2
with Delta Rule", arXiv 2412.06464) adds Mamba2's data-dependent decay in front,
S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t with
alpha_t = exp(-exp(A_log) * softplus(W_a x_t + dt_bias)): the decay clears memory quickly,
the delta rule edits it precisely.

Layer (both papers): q, k, v = SiLU(ShortConv(W_{q,k,v} x)), q and k L2-normalised per head
(so I - beta k^T k is a contraction), beta_t = sigmoid(W_beta x_t) per head, a per-head RMSNorm
on the output (Gated DeltaNet: RMSNorm(o) * SiLU(W_g x), a gated norm), then W_o.
Training / prefill O(T (C + d_k) d_v) with chunk C, decode O(d_k d_v) per token per head
with a fixed state: H d_k d_v fp32 values plus three (conv_size - 1)-token conv windows.

Backends: ``fla`` (flash-linear-attention's chunk_delta_rule / chunk_gated_delta_rule Triton
kernels, q/k L2 norm fused in the kernel) and ``chunked`` (the WY / UT-transform reference of
``archbench.ops.delta_rule``). Decode always uses the exact one-token recurrence.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import HeadRMSNorm, ShortConv, dt_bias_init
from archbench.ops.delta_rule import (
    delta_rule,
    delta_rule_step,
    gated_delta_rule,
    gated_delta_rule_step,
    l2norm,
)
from archbench.spec import ArchSpec, Backend, Complexity, fla_and_reference, head_dim_at_most, requires_cuda_module, requires_fla

FLA_HINT = "pip install 'archbench[gpu]' on a CUDA machine"
# fla's chunk_delta_rule asserts half precision; its gated kernel also takes fp32.
requires_fla_half = requires_cuda_module("fla", FLA_HINT, dtypes=("float16", "bfloat16"), interpretable=True)


WY_REFERENCE = "pure-PyTorch chunked WY / UT-transform reference"


def fla_wy(
    kernel: str, max_head_dim: int = 256, *, half_only: bool = False, gated: bool = False, reference: str = WY_REFERENCE
) -> tuple[Backend, Backend]:
    """``fla`` (fla's chunked delta-rule ``kernel``, head dimensions up to ``max_head_dim``; fp16/bf16 only
    with ``half_only``; with ``gated``, no backward where fla's gated chunk backward is wrong) and the WY /
    UT-transform reference: the backends of the delta-rule entries."""
    return fla_and_reference(
        f"fla {kernel} Triton kernel" + (" (fp16/bf16)" if half_only else ""), reference,
        detect=requires_fla_half if half_only else requires_fla, gated=gated,
        limits=head_dim_at_most(max_head_dim, f"fla's {kernel}"),
    )  # fmt: skip


def mamba2_decay(
    n_heads: int, n_dt: int, a_range: tuple[float, float], dt_min: float, dt_max: float, dt_floor: float
) -> tuple[nn.Parameter, nn.Parameter]:
    """Mamba2's initialisation of a data-dependent decay -exp(A_log) softplus(. + dt_bias):
    (A_log [n_heads] with A ~ U[a_range], dt_bias [n_dt] = softplus^{-1}(dt), dt log-uniform in [dt_min, dt_max])."""
    A_log = nn.Parameter(torch.empty(n_heads).uniform_(*a_range).log())
    return A_log, nn.Parameter(dt_bias_init(n_dt, dt_min, dt_max, dt_floor))


class _DeltaBase(ParallelMixer):
    """Projections, short convolutions, the op call and decode shared by the delta-rule layers; each
    layer names its op pair (``_op``, ``_step_op``) and defines its gates and its output."""

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        d, h, hd = config.d_model, config.n_heads, config.hd
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, h * hd, bias=False)
        self.v_proj = nn.Linear(d, h * hd, bias=False)
        self.b_proj = nn.Linear(d, h, bias=False)  # beta_t = sigmoid(W_beta x_t), one per head
        if config.conv_size > 0:
            self.convs = nn.ModuleList(ShortConv(h * hd, config.conv_size, activation=True) for _ in range(3))
        else:
            self.convs = None
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    # -- pieces shared by forward and step --------------------------------------------

    def _qkv(self, x: torch.Tensor, want_state: bool = False):
        """x [B, T, D] -> ((q, k, v), conv states): SiLU(conv(W x)) for q, k, v, each [B, T, H, hd]
        (not yet normalised); with ``want_state`` also the three conv windows after x, as
        ``ShortConv.step`` keeps them (None without convs or without ``want_state``)."""
        outs, states = [], []
        for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
            y = proj(x)
            if self.convs is not None and want_state:
                y, window = self.convs[i].prefill(y)
                states.append(window)
            elif self.convs is not None:
                y = self.convs[i](y)
            else:
                y = F.silu(y)
            outs.append(y)
        return self._split(outs), (states if want_state and self.convs is not None else None)

    def _qkv_step(self, x_t: torch.Tensor, conv_states: list | None):
        outs, new_states = [], []
        for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
            y = proj(x_t)
            if self.convs is not None:
                y, st = self.convs[i].step(y, conv_states[i])
                new_states.append(st)
            else:
                y = F.silu(y)
            outs.append(y)
        return self._split(outs), (new_states if self.convs is not None else None)

    def _split(self, outs: list[torch.Tensor]):
        """The three projections [..., H hd] -> (q, k, v), each [..., H, hd]."""
        h, hd = self.config.n_heads, self.config.hd
        return tuple(y.unflatten(-1, (h, hd)) for y in outs)

    # -- what each layer defines: its op pair, its gates and its output -------------------

    _op: Callable  # the chunked op, called as _op(q, k, v, *gates, chunk_size=, backend=, qk_l2norm=True, ...)
    _step_op: Callable  # its one-token form, called as _step_op(q, k, v, *gates, state, backend=)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The op's inputs after q, k, v (beta; or log-decay g and beta) for x [..., D]."""
        raise NotImplementedError

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [..., H, hd] -> normalised, (gated), projected [..., D]."""
        raise NotImplementedError

    def _mix(self, x: torch.Tensor, q, k, v, want_state: bool):
        """The chunked op over the sequence: (o [B, T, H, hd], final state [B, H, K, V] or None)."""
        return self._run(q, k, v, *self._gates(x), want_state=want_state)

    def _run(self, *inputs: torch.Tensor | int, want_state: bool):
        return self._scan(self._op, *inputs, want_state=want_state, qk_l2norm=True)

    # -- parallel form (training and prefill) -------------------------------------------

    def _forward(self, x: torch.Tensor, want_state: bool):
        (q, k, v), conv = self._qkv(x, want_state)
        o, S = self._mix(x, q, k, v, want_state)
        y = self._output(o, x)
        return y, ({"conv": conv, "S": S} if want_state else None)

    # -- decode -----------------------------------------------------------------------

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        (q, k, v), conv = self._qkv_step(x_t, state["conv"])
        o, S = self._step_op(l2norm(q), l2norm(k), v, *self._gates(x_t), state["S"], backend=self.op_backend)
        return self._output(o, x_t), {"conv": conv, "S": S}

    def init_state(self, batch: int) -> dict[str, Any]:
        h, hd = self.config.n_heads, self.config.hd
        conv = [c.init_state(batch) for c in self.convs] if self.convs is not None else None
        return {"conv": conv, "S": self._zeros(batch, h, hd, hd)}

    def state_bytes(self, batch: int, seq_len: int) -> int:
        h, hd = self.config.n_heads, self.config.hd
        conv = sum(c.state_bytes(batch) for c in self.convs) if self.convs is not None else 0
        return batch * h * hd * hd * 4 + conv  # fp32 state + conv windows, independent of seq_len


class DeltaNet(_DeltaBase):
    """DeltaNet layer (Yang et al., 2024, arXiv 2406.06484)."""

    _op, _step_op = staticmethod(delta_rule), staticmethod(delta_rule_step)
    backends = fla_wy("chunk_delta_rule", half_only=True)

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        self.o_norm = HeadRMSNorm(config.hd)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.sigmoid(self.b_proj(x)),)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.o_norm(o).flatten(-2))


class GatedDeltaNet(_DeltaBase):
    """Gated DeltaNet layer (Yang, Kautz & Hatamizadeh, 2024, arXiv 2412.06464).

    The decay is Mamba2's, g = -exp(A_log) softplus(W_a x + dt_bias) with Mamba2's initialisation
    (``dt_min``, ``dt_max``, ``dt_floor``, ``a_range``); layers with another decay granularity
    (KDA) override ``_decay_projections``, ``_gates`` and ``_output``."""

    _op, _step_op = staticmethod(gated_delta_rule), staticmethod(gated_delta_rule_step)
    backends = fla_wy("chunk_gated_delta_rule", gated=True)
    norm_eps = 1e-6  # the output RMSNorm's

    def __init__(
        self,
        config: MixerConfig,
        backend: str = "chunked",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        a_range: tuple[float, float] = (1.0, 16.0),
    ):
        super().__init__(config, backend)
        n_dt = self._decay_projections(config)
        self.A_log, self.dt_bias = mamba2_decay(config.n_heads, n_dt, a_range, dt_min, dt_max, dt_floor)
        self.o_norm = HeadRMSNorm(config.hd, eps=self.norm_eps)

    def _decay_projections(self, config: MixerConfig) -> int:
        """Builds the decay's and the output gate's projections; returns how many dt biases the decay has."""
        d, h, hd = config.d_model, config.n_heads, config.hd
        self.a_proj = nn.Linear(d, h, bias=False)  # input-dependent step size, as Mamba2's dt
        self.g_proj = nn.Linear(d, h * hd, bias=False)  # output gate
        return h

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-decay g, beta), each [..., H]; g = -exp(A_log) softplus(W_a x + dt_bias) in fp32."""
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        return g, torch.sigmoid(self.b_proj(x))

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = self.g_proj(x).unflatten(-1, (self.config.n_heads, self.config.hd))
        return self.o_proj((self.o_norm(o) * F.silu(gate)).flatten(-2))


# ---- analytic cost ----------------------------------------------------------------------


def _delta_rule_op_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs of the chunked WY form per the reference: per chunk of C tokens and head,
    Gram and score matrices (2 C^2 K), the UT transform (~C^3 / 3) and W, U (C^2 (K + V)),
    the chunk pass (2 C K V), and the read-out (C K V + C^2 V); 2 FLOPs per multiply-add."""
    h, k, v = config.n_heads, config.hd, config.hd
    c = max(1, min(config.chunk_size, seq_len))
    per_chunk = 2 * c * c * k + c**3 / 3 + c * c * (k + v) + 3 * c * k * v + c * c * v
    return 2.0 * batch * h * (seq_len / c) * per_chunk


def _conv_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    return 2.0 * batch * seq_len * 3 * config.n_heads * config.hd * config.conv_size


def deltanet_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs: q/k/v/beta/out projections + short convs + the chunked delta rule."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2.0 * batch * seq_len * d * (3 * h * hd + h) + 2.0 * batch * seq_len * h * hd * d
    return proj + _conv_flops(config, batch, seq_len) + _delta_rule_op_flops(config, batch, seq_len)


def gated_deltanet_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """As DeltaNet plus the decay (W_a) and output-gate (W_g) projections."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    extra = 2.0 * batch * seq_len * d * (h + h * hd)
    return deltanet_flops(config, batch, seq_len) + extra


# the cost of a chunked delta-rule layer with a [d_k, d_v] state per head
DELTA_RULE = Complexity(
    train_time="O(T C d + T d^2 / H)",
    train_memory="O(T d + (T/C) d^2 / H)",
    decode_time="O(d^2 / H) per token",
    decode_memory="O(d^2 / H) state",
)

SPECS = (
    ArchSpec(
        name="deltanet",
        family="linear/delta-rule",
        description="DeltaNet: linear attention with delta-rule updates, chunked WY form (Yang et al., 2024)",
        paper="Parallelizing Linear Transformers with the Delta Rule over Sequence Length (arXiv 2406.06484)",
        complexity=DELTA_RULE,
        backends=DeltaNet.backends,
        factory=DeltaNet,
        flops=deltanet_flops,
    ),
    ArchSpec(
        name="gated_deltanet",
        family="linear/delta-rule",
        description="Gated DeltaNet: delta rule plus Mamba2-style decay and output gate (Yang et al., 2024)",
        paper="Gated Delta Networks: Improving Mamba2 with Delta Rule (arXiv 2412.06464)",
        complexity=DELTA_RULE,
        backends=GatedDeltaNet.backends,
        factory=GatedDeltaNet,
        flops=gated_deltanet_flops,
    ),
)
