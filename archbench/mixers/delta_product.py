"""Gated DeltaProduct: Gated DeltaNet with n delta-rule (Householder) steps per token.

DeltaProduct (Siems et al., 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via
Householder Products", arXiv 2502.10297) lets each token write n key-value pairs with n
consecutive delta-rule steps, so the state transition per token is a product of n generalised
Householder matrices: diagonal-plus-rank-n instead of DeltaNet's rank one, which is what
tracking states (permutation groups, say) needs. The gated variant puts Gated DeltaNet's decay
in front, once per token:

    S_t = prod_{j=n..1} (I - beta_{t,j} k_{t,j}^T k_{t,j}) exp(g_t) S_{t-1} + (the n writes),    o_t = q_t S_t / sqrt(d_k)

Layer (as fla's ``GatedDeltaProduct``): one query and n keys and values per token,
q = SiLU(ShortConv(W_q x)), [k_{t,1..n}] = SiLU(ShortConv(W_k x)) and likewise v (W_k, W_v of
width n H d), q and k L2-normalised, beta_{t,j} = sigmoid(W_beta x_t) per head and step (times 2
with ``allow_neg_eigval``, so that a reflection is possible), g_t as Gated DeltaNet's, the output
RMSNorm(o) * SiLU(W_g x) then W_o. ``num_householder`` is n (2 by default, the paper's usual
choice). Cost n times Gated DeltaNet's in the recurrence; the decode state is the same
H d_k d_v fp32 values (plus the conv windows, n times wider for k and v).

Backends: ``fla`` (``chunk_gated_delta_product``, fp16/bf16) and ``chunked`` (the reference of
``archbench.ops.delta_product``, the chunked gated delta rule over the T*n steps).
"""

from __future__ import annotations


import torch
from torch import nn

from archbench.mixers.base import MixerConfig
from archbench.mixers.common import ShortConv
from archbench.mixers.delta import WY_REFERENCE, GatedDeltaNet, _delta_rule_op_flops, fla_wy
from archbench.ops.delta_product import FLA_MAX_HEAD_DIM, gated_delta_product, gated_delta_product_step
from archbench.spec import ArchSpec, Complexity


class GatedDeltaProduct(GatedDeltaNet):
    """Gated DeltaProduct layer (Siems et al., 2025, arXiv 2502.10297): n Householder steps per token."""

    _op, _step_op = staticmethod(gated_delta_product), staticmethod(gated_delta_product_step)
    backends = fla_wy(
        "chunk_gated_delta_product", FLA_MAX_HEAD_DIM, half_only=True, gated=True,
        reference=f"{WY_REFERENCE} over the n T steps",
    )  # fmt: skip

    def __init__(self, config: MixerConfig, backend: str = "chunked", num_householder: int = 2, allow_neg_eigval: bool = False):
        super().__init__(config, backend)
        if num_householder < 1:
            raise ValueError(f"num_householder must be >= 1, got {num_householder}")
        self.n, self.allow_neg_eigval = num_householder, allow_neg_eigval
        d, h, hd, n = config.d_model, config.n_heads, config.hd, num_householder
        self.k_proj = nn.Linear(d, n * h * hd, bias=False)
        self.v_proj = nn.Linear(d, n * h * hd, bias=False)
        self.b_proj = nn.Linear(d, n * h, bias=False)
        if config.conv_size > 0:
            widths = (h * hd, n * h * hd, n * h * hd)
            self.convs = nn.ModuleList(ShortConv(w, config.conv_size, activation=True) for w in widths)

    def _split(self, outs: list[torch.Tensor]):
        """(q [..., H, hd], k and v [..., n, H, hd]) from the three projections."""
        h, hd, n = self.config.n_heads, self.config.hd, self.n
        return outs[0].unflatten(-1, (h, hd)), outs[1].unflatten(-1, (n, h, hd)), outs[2].unflatten(-1, (n, h, hd))

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-decay g [..., H] in fp32, beta [..., n, H]), beta in (0, 1), or (0, 2) with allow_neg_eigval."""
        g, _ = super()._gates(x)
        beta = torch.sigmoid(self.b_proj(x)).unflatten(-1, (self.n, self.config.n_heads))
        return g, (2.0 * beta if self.allow_neg_eigval else beta)

    def _mix(self, x: torch.Tensor, q, k, v, want_state: bool):
        g, beta = self._gates(x)  # k, v and beta flattened over (T, n): step j of token t at row t*n + j
        return self._run(q, k.flatten(1, 2), v.flatten(1, 2), g, beta.flatten(1, 2), self.n, want_state=want_state)


NUM_HOUSEHOLDER = 2  # the registry entry's n


def gated_deltaproduct_flops(config: MixerConfig, batch: int, seq_len: int, n: int = NUM_HOUSEHOLDER) -> float:
    """Forward FLOPs: projections (q, n keys, n values, n betas, decay, gate, out), short convs,
    and the chunked gated delta rule over the n * T steps."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    proj = 2.0 * batch * seq_len * (d * ((1 + 2 * n) * h * hd + n * h + h + h * hd) + h * hd * d)
    conv = 2.0 * batch * seq_len * (1 + 2 * n) * h * hd * config.conv_size
    return proj + conv + _delta_rule_op_flops(config, batch, n * seq_len)


SPECS = (
    ArchSpec(
        name="gated_deltaproduct",
        family="linear/delta-rule",
        description="Gated DeltaProduct: n = 2 delta-rule (Householder) steps per token plus a decay (Siems et al., 2025)",
        paper="DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products (arXiv 2502.10297)",
        complexity=Complexity("O(n T C d + n T d^2 / H)", "O(n T d + (n T/C) d^2 / H)", "O(n d^2 / H) per token", "O(d^2 / H) state"),
        backends=GatedDeltaProduct.backends,
        factory=lambda cfg, backend: GatedDeltaProduct(cfg, backend, num_householder=NUM_HOUSEHOLDER),
        flops=gated_deltaproduct_flops,
    ),
)
