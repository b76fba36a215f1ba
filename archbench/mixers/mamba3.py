"""Mamba-3 (SISO) as a token mixer ("Mamba-3: Improved Sequence Modeling using State Space
Principles", Lahoti et al., 2026, arXiv 2603.15569; layer as in mamba-ssm / ``fla.layers.mamba3``).

One input projection gives z, x (d_inner = expand * d_model each), B and C (N each, one group),
and per head dd_dt, dd_A and the trapezoid logit, plus A = N / 4 angle rates (rope fraction 1/2):

    dt = softplus(dd_dt + dt_bias),   A_t = min(-softplus(dd_A), -1e-4),   lam = sigmoid(trap)
    B_h = RMSNorm(B) + B_bias_h,   C_h = RMSNorm(C) + C_bias_h        (per-head biases, init 1)
    dtheta_{t,h} = dt_{t,h} theta_t                                   (the complex state's rotation)
    y = Mamba3(x, dt, A_t dt, lam, B, C, dtheta) + D x                (``archbench.ops.mamba3``)
    out = W_out (y * SiLU(z))

Against Mamba-2 there is no short convolution (the trapezoid's two-token input replaces it), the
decay A is data-dependent, B and C are normalised and biased, and the state rotates. Time
O(T (C + N) d) chunked, O(d N) per decoded token; the decode state is h (H N P values) plus the
previous token's rotated B and x and the angles: H (N P + N + P + N / 4) fp32 values.

Backends: ``fla`` (fla's ``chunk_simple_gla`` kernel for the recurrence; the rotation and trapezoid
weights are elementwise torch) and ``chunked`` (pure-PyTorch reference). mamba-ssm's own Mamba-3
kernels are not adapted (they need a CUDA build of mamba-ssm with Mamba-3, and CuTe DSL for decode).
Decode ``step`` is the torch recurrence. MIMO is not covered.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import HeadRMSNorm, dt_bias_init
from archbench.mixers.ssm import SSD, ssd_heads
from archbench.ops.mamba3 import empty_state, mamba3, mamba3_step
from archbench.spec import ArchSpec, fla_and_reference

A_FLOOR = 1e-4


class Mamba3(ParallelMixer):
    """The Mamba-3 SISO block as a token mixer; ngroups = 1."""

    backends = fla_and_reference(
        "fla chunk_simple_gla for the recurrence (rotation, trapezoid in torch)",
        "pure-PyTorch chunked reference (simple-GLA form + trapezoid correction)",
        gated=True,
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        d = config.d_model
        self.d_inner, self.head_dim, self.n_heads, self.d_state = di, P, H, N = ssd_heads(config, "mamba3")
        self.n_angles = N // 4
        if self.n_angles < 1:
            raise ValueError(f"mamba3 needs d_state >= 4 for its rotary angles (got {N})")
        self.in_proj = nn.Linear(d, 2 * di + 2 * N + 3 * H + self.n_angles, bias=False)
        self.dt_bias = nn.Parameter(dt_bias_init(H))
        self.B_bias = nn.Parameter(torch.ones(H, N))
        self.C_bias = nn.Parameter(torch.ones(H, N))
        self.B_norm = HeadRMSNorm(N)
        self.C_norm = HeadRMSNorm(N)
        self.D = nn.Parameter(torch.ones(H))
        self.out_proj = nn.Linear(di, d, bias=False)

    def _inputs(self, u: torch.Tensor):
        """u [..., d_model] -> z, x [..., H, P], dt, a, lam [..., H], B, C [..., H, N], dtheta [..., H, A]."""
        di, N, H, P = self.d_inner, self.d_state, self.n_heads, self.head_dim
        z, x, Bm, Cm, dd_dt, dd_A, trap, angles = self.in_proj(u).split([di, di, N, N, H, H, H, self.n_angles], dim=-1)
        sd = self.state_dtype()
        dt = F.softplus(dd_dt.to(sd) + self.dt_bias.to(sd))
        A = (-F.softplus(dd_A.to(sd))).clamp(max=-A_FLOOR)
        lam = torch.sigmoid(trap.to(sd))
        Bm = self.B_norm(Bm).unsqueeze(-2) + self.B_bias.to(Bm.dtype)
        Cm = self.C_norm(Cm).unsqueeze(-2) + self.C_bias.to(Cm.dtype)
        dtheta = angles.to(sd).unsqueeze(-2) * dt[..., None]
        return z, x.unflatten(-1, (H, P)), dt, A * dt, lam, Bm, Cm, dtheta

    def _forward(self, u: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        z, x, dt, a, lam, Bm, Cm, dtheta = self._inputs(u)
        y, state = mamba3(
            x, dt, a, lam, Bm, Cm, dtheta, D=self.D.to(self.state_dtype()), output_final_state=want_state,
            chunk_size=self.config.chunk_size, backend=self.op_backend,
        )  # fmt: skip
        out = self.out_proj(y.flatten(-2) * F.silu(z))
        return out, ({"ssm": state} if want_state else None)

    def init_state(self, batch: int) -> dict[str, Any]:
        w = self.in_proj.weight
        return {
            "ssm": empty_state(
                batch, self.n_heads, self.d_state, self.head_dim, self.n_angles, self.state_dtype(), w.device
            )
        }

    def step(self, u_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        z, x, dt, a, lam, Bm, Cm, dtheta = self._inputs(u_t)
        y, ssm = mamba3_step(x, dt, a, lam, Bm, Cm, dtheta, state["ssm"], D=self.D.to(self.state_dtype()))
        return self.out_proj(y.flatten(-2) * F.silu(z)), {"ssm": ssm}

    def state_bytes(self, batch: int, seq_len: int) -> int:
        H, N, P = self.n_heads, self.d_state, self.head_dim
        return batch * H * (N * P + N + P + self.n_angles) * 4  # fp32 h, B~_{t-1}, x_{t-1}, angles


def mamba3_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + the chunked recurrence (per-head C~ B~^T per chunk, masked mix, chunk states,
    state read-out) + norms, rotations and trapezoid weights + gate."""
    d = config.d_model
    di, N, P = config.expand * d, config.d_state or 64, config.hd
    H, A = di // P, (config.d_state or 64) // 4
    Q = min(config.chunk_size, seq_len)
    bt = batch * seq_len
    proj = 2 * bt * d * (2 * di + 2 * N + 3 * H + A) + 2 * bt * di * d
    scan = 2 * bt * Q * H * N + 2 * bt * Q * H * P + 4 * bt * H * N * P
    elementwise = 12 * bt * H * N + 6 * bt * di
    return float(proj + scan + elementwise)


SPECS = (
    ArchSpec(
        name="mamba3",
        family="ssm/ssd",
        description="Mamba-3 (SISO): exponential-trapezoidal SSM with rotary (complex) state and data-dependent decay (Lahoti et al., 2026)",
        paper="Mamba-3: Improved Sequence Modeling using State Space Principles (arXiv 2603.15569)",
        complexity=SSD,
        backends=Mamba3.backends,
        factory=Mamba3,
        flops=mamba3_flops,
    ),
)
