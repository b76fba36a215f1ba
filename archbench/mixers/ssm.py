"""Selective state-space models: Mamba (S6) and Mamba2 (SSD).

**Mamba** (Gu & Dao, 2023, arXiv 2312.00752). The block widens x to d_inner = expand * d_model
with a gate branch z, runs a short causal convolution + SiLU, and makes the SSM's step and
input/output maps functions of the token ("selection"):

    [x, z] = W_in u,   x = SiLU(conv(x)),   [dt_low, B, C] = W_x x,   delta = softplus(W_dt dt_low + b_dt)
    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d]
    y_t = (C_t . h_t + D x_t) * SiLU(z_t),   out = W_out y

A = -exp(A_log) with the S4D-real init A[d, n] = -(n + 1), D = 1, dt_rank = ceil(d_model / 16)
and b_dt the inverse softplus of steps drawn log-uniformly in [1e-3, 1e-1]. The decode state is
the conv window and h: d_inner * (conv_size - 1 + N) values, whatever the context length.

**Mamba2** (Dao & Gu, 2024, arXiv 2405.21060). One input projection gives z, x, B, C and one
dt per head; the short convolution runs over (x, B, C); A is one scalar per head, so the
recurrence is the SSD form (``archbench.ops.ssd``) on heads of dim P = head_dim:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t,   y_t = C_t h_t + D x_t
    out = W_out RMSNorm(y * SiLU(z))

with ngroups = 1 (B, C shared by all heads), A init uniform in [1, 16] (stored as A_log) and
dt_bias as for Mamba. Decode state: conv window over d_inner + 2N channels and H * N * P.

Backends: ``chunked`` is the pure-PyTorch chunked reference of ``archbench.ops``; ``mamba_ssm``
uses mamba-ssm's kernels (selective_scan_fn for Mamba, the Triton SSD mamba_chunk_scan_combined
for Mamba2); ``fla`` (Mamba2 only) runs SSD as fla's chunk_simple_gla. Only the scan changes
between backends; projections, convolutions and norms are the same torch modules, and the decode
``step`` is always the torch recurrence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import HeadRMSNorm, ShortConv, dt_bias_init
from archbench.ops.selective_scan import selective_scan, selective_scan_step
from archbench.ops.ssd import ssd, ssd_step
from archbench.spec import (
    ArchSpec,
    Backend,
    Complexity,
    fla_gated_backward,
    reference_backend,
    requires_fla,
    requires_mamba_ssm,
)


def ssd_heads(config: MixerConfig, name: str) -> tuple[int, int, int, int]:
    """(d_inner, head_dim, n_heads, d_state) of a Mamba2-style block: d_inner = expand * d_model in heads
    of head_dim, d_state 64 by default."""
    di, P = config.expand * config.d_model, config.hd
    if di % P:
        raise ValueError(f"{name}: d_inner = expand * d_model = {di} is not a multiple of head_dim {P}")
    return di, P, di // P, config.d_state or 64


class _Conv(nn.Module):
    """ShortConv with its SiLU, or plain SiLU when conv_size is 0; same decode API either way."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.channels = channels
        self.conv = ShortConv(channels, kernel, activation=True, bias=True) if kernel > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else F.silu(x)

    def run(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward(x)`` and, with ``want_state``, the decode state after x [B, T, C] (``ShortConv.window``,
        in the weights' dtype); None without it or without a convolution."""
        if self.conv is None or not want_state:
            return self(x), None
        return self.conv(x), self.conv.window(x).to(self.conv.conv.weight.dtype)

    def init_state(self, batch: int) -> torch.Tensor | None:
        return self.conv.init_state(batch) if self.conv is not None else None

    def step(self, x_t: torch.Tensor, state):
        if self.conv is None:
            return F.silu(x_t), None
        return self.conv.step(x_t, state)

    def state_bytes(self, batch: int) -> int:
        return self.conv.state_bytes(batch) if self.conv is not None else 0


class _SSMBlock(ParallelMixer):
    """A Mamba-style block whose decode state is its convolution window and an SSM state of
    ``_ssm_shape`` per sequence (fp32)."""

    conv: _Conv

    def _ssm_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _state(self, out: torch.Tensor, conv_state, h: torch.Tensor | None, want_state: bool):
        """The parallel form's result: ``(out, the decode state after it, or None)``."""
        if not want_state:
            return out, None
        return out, {"conv": conv_state, "ssm": h.to(self.state_dtype()).contiguous()}

    def init_state(self, batch: int) -> dict[str, Any]:
        return {"conv": self.conv.init_state(batch), "ssm": self._zeros(batch, *self._ssm_shape())}

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self.conv.state_bytes(batch) + batch * math.prod(self._ssm_shape()) * 4  # fp32 h


class Mamba(_SSMBlock):
    """The Mamba (S6) block as a token mixer."""

    backends = (
        Backend("mamba_ssm", "mamba-ssm CUDA selective_scan_fn", requires_mamba_ssm),
        reference_backend("pure-PyTorch chunked selective scan"),
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        d = config.d_model
        self.d_inner = di = config.expand * d
        self.d_state = N = config.d_state or 16
        self.dt_rank = r = math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv = _Conv(di, config.conv_size)
        self.x_proj = nn.Linear(di, r + 2 * N, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
            self.dt_proj.bias.copy_(dt_bias_init(di))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def _ssm_shape(self) -> tuple[int, ...]:
        return self.d_inner, self.d_state

    def _ssm_inputs(self, x: torch.Tensor):
        """x (after conv) [..., d_inner] -> delta [..., d_inner], B, C [..., N]."""
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt).to(self.state_dtype()))
        return delta, Bm, Cm

    def _forward(self, u: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, conv_state = self.conv.run(x, want_state)
        delta, Bm, Cm = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.to(self.state_dtype()))
        y, h = selective_scan(
            x, delta, A, Bm, Cm, D=self.D.to(self.state_dtype()), output_final_state=want_state, backend=self.op_backend
        )
        return self._state(self.out_proj(y * F.silu(z)), conv_state, h, want_state)

    def step(self, u_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, z = self.in_proj(u_t).chunk(2, dim=-1)
        x, conv_state = self.conv.step(x, state["conv"])
        delta, Bm, Cm = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.to(self.state_dtype()))
        y, ssm = selective_scan_step(x, delta, A, Bm, Cm, state["ssm"], D=self.D.to(self.state_dtype()))
        return self.out_proj(y * F.silu(z)), {"conv": conv_state, "ssm": ssm}


class Mamba2(_SSMBlock):
    """The Mamba2 (SSD) block as a token mixer; ngroups = 1."""

    backends = (
        Backend("mamba_ssm", "mamba-ssm Triton SSD (mamba_chunk_scan_combined)", requires_mamba_ssm),
        Backend("fla", "fla chunk_simple_gla (SSD as simple GLA)", requires_fla, fla_gated_backward),
        reference_backend("pure-PyTorch SSD block decomposition"),
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        d = config.d_model
        self.d_inner, self.head_dim, self.n_heads, self.d_state = di, P, H, N = ssd_heads(config, "mamba2")
        self.in_proj = nn.Linear(d, 2 * di + 2 * N + H, bias=False)  # z, x, B, C, dt
        self.conv = _Conv(di + 2 * N, config.conv_size)
        self.dt_bias = nn.Parameter(dt_bias_init(H))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = HeadRMSNorm(di)  # over the whole d_inner (one group)
        self.out_proj = nn.Linear(di, d, bias=False)

    def _ssm_shape(self) -> tuple[int, ...]:
        return self.n_heads, self.d_state, self.head_dim

    def _split(self, zxbcdt: torch.Tensor):
        di, N, H = self.d_inner, self.d_state, self.n_heads
        return zxbcdt.split([di, di + 2 * N, H], dim=-1)

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        x, Bm, Cm = xbc.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.head_dim))
        dt = F.softplus(dt.to(self.state_dtype()) + self.dt_bias.to(self.state_dtype()))
        return x, dt, Bm.unsqueeze(-2), Cm.unsqueeze(-2)  # B, C with one group

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(y.flatten(-2) * F.silu(z)))

    def _forward(self, u: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        z, xbc, dt = self._split(self.in_proj(u))
        xbc, conv_state = self.conv.run(xbc, want_state)
        x, dt, Bm, Cm = self._ssm_inputs(xbc, dt)
        A = -torch.exp(self.A_log.to(self.state_dtype()))
        y, h = ssd(
            x, dt, A, Bm, Cm, D=self.D.to(self.state_dtype()), chunk_size=self.config.chunk_size,
            output_final_state=want_state, backend=self.op_backend,
        )  # fmt: skip
        return self._state(self._out(y, z), conv_state, h, want_state)

    def step(self, u_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        z, xbc, dt = self._split(self.in_proj(u_t))
        xbc, conv_state = self.conv.step(xbc, state["conv"])
        x, dt, Bm, Cm = self._ssm_inputs(xbc, dt)
        A = -torch.exp(self.A_log.to(self.state_dtype()))
        op_backend = "fla" if self.op_backend == "fla" else "torch"  # mamba_ssm has no step kernel wired here: reference update
        y, ssm = ssd_step(x, dt, A, Bm, Cm, state["ssm"], D=self.D.to(self.state_dtype()), backend=op_backend)
        return self._out(y, z), {"conv": conv_state, "ssm": ssm}


# ---- analytic forward FLOPs -------------------------------------------------------------


def mamba_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + depthwise conv + the scan (about 9 flops per state element and step:
    decay exp and multiply, input outer product, update, read-out)."""
    d = config.d_model
    di, N, r, k = config.expand * d, config.d_state or 16, math.ceil(d / 16), config.conv_size
    bt = batch * seq_len
    proj = 2 * bt * (d * 2 * di + di * (r + 2 * N) + r * di + di * d)
    conv = 2 * bt * di * k
    scan = 9 * bt * di * N + 4 * bt * di  # + D skip and SiLU gate
    return float(proj + conv + scan)


def mamba2_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + conv + the SSD chunked form (C B^T per chunk, masked mix, chunk states,
    state read-out) + gate and norm."""
    d = config.d_model
    di, N, P, k = config.expand * d, config.d_state or 64, config.hd, config.conv_size
    H = di // P
    Q = min(config.chunk_size, seq_len)
    bt = batch * seq_len
    proj = 2 * bt * d * (2 * di + 2 * N + H) + 2 * bt * di * d
    conv = 2 * bt * (di + 2 * N) * k
    ssd_mix = 2 * bt * Q * N + 2 * bt * Q * H * P + 4 * bt * H * N * P
    tail = 6 * bt * di
    return float(proj + conv + ssd_mix + tail)


# the cost of a chunked SSD-form block (Mamba2, Mamba-3)
SSD = Complexity("O(T C d + T d N)", "O(T d + (T/C) d N)", "O(d N) per token", "O(d N) state")

SPECS = (
    ArchSpec(
        name="mamba",
        family="ssm/selective",
        description="Mamba: selective state-space block, S6 scan (Gu & Dao, 2023)",
        paper="Mamba: Linear-Time Sequence Modeling with Selective State Spaces (arXiv 2312.00752)",
        complexity=Complexity("O(T d N)", "O(T d + d N)", "O(d N) per token", "O(d N) state"),
        backends=Mamba.backends,
        factory=Mamba,
        flops=mamba_flops,
    ),
    ArchSpec(
        name="mamba2",
        family="ssm/ssd",
        description="Mamba2: state-space duality (SSD) block, scalar decay per head (Dao & Gu, 2024)",
        paper="Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured "
        "State Space Duality (arXiv 2405.21060)",
        complexity=SSD,
        backends=Mamba2.backends,
        factory=Mamba2,
        flops=mamba2_flops,
    ),
)
