"""RWKV-7 "Goose" time mixing (Peng et al., 2025, arXiv 2503.14456): a linear RNN whose
transition is diagonal plus rank one (DPLR), a generalised delta rule.

Per head (head size N), with the state S_t in R^{NxN} (keys x values, as everywhere in archbench):

    S_t = (diag(w_t) - (kappa_t * a_t)^T kappa_t) S_{t-1} + k~_t^T v_t
    o_t = r_t S_t

w_t in (exp(-exp(-0.5)), 1) is a data-dependent per-channel decay, kappa_t = normalise(k_t * k_k)
the removal key, a_t in (0, 1) its per-channel in-context learning rate and
k~_t = k_t * (1 + (a_t - 1) * k_a) the replacement key. The memory reads what it stores under
kappa_t, and writes that read-out back scaled by -a_t: with a_t = 1 and w_t = 1 it is exactly
the delta rule's "replace the value under kappa". In the terms of ``archbench.ops.dplr``
(S_t = (diag(e^{w}) + a^T b) S_{t-1} + k^T v) the op's log-decay is log w_t, its write vector
a = kappa * a_t and its read vector b = -kappa.

The block (time mixing only; the channel-mixing MLP belongs to the model):

    token shift     x'_c = x_t + (x_{t-1} - x_t) * mu_c        for c in r, w, k, v, a, g (static lerp)
    projections     r, k, v = W_r x'_r, W_k x'_k, W_v x'_v
    decay           log w = -e^{-0.5} sigmoid(w0 + tanh(x'_w A_w) B_w)      in (-0.607, 0)
    ICL rate        a = sigmoid(a0 + x'_a A_a B_a)
    gate            g = sigmoid(x'_g A_g) B_g
    keys            kappa = normalise(k * k_k) per head,  k~ = k * (1 + (a - 1) * k_a)
    mixing          o = DPLR recurrence above (scale 1)
    output          y = W_o ((GroupNorm_heads(o) + ((r * k~ * r_k) summed per head) v) * g)

The A_*/B_* pairs are the paper's low-rank ("LoRA") paths, with its rank heuristics. Omitted:
the value residual (v mixed with the first layer's v), a cross-layer path that a single mixer
cannot see; the channel-mixing (FFN) half of the RWKV block. Parameters are initialised in the
spirit of the paper's layer-0 initialisation (token-shift ratios, decay speeds, zero LoRA down
projections) except that the output projection is not zeroed, so the block is not the identity.

Decode state: the DPLR state [B, H, N, N] (fp32) plus the token-shift state (the previous x, [B, D]).

Backends: ``fla`` (flash-linear-attention's ``chunk_dplr_delta_rule`` Triton kernel, the one
``fla.ops.rwkv7.chunk_rwkv7`` wraps) and ``chunked`` (the pure-PyTorch chunked WY reference of
``archbench.ops.dplr``). Decode ``step`` uses ``dplr_step`` on both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.delta import fla_wy
from archbench.ops.dplr import dplr, dplr_flops, dplr_step
from archbench.spec import ArchSpec, Complexity

LOG_DECAY_BOUND = math.exp(-0.5)  # log w in (-e^{-0.5}, 0), i.e. w in (0.545, 1)
GROUPNORM_EPS = 64e-5  # the paper's code: 1e-5 * head_size_divisor**2 with divisor 8


def lora_rank(d_model: int, factor: float, power: float) -> int:
    """The paper's low-rank heuristic: factor * d**power rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * d_model**power / 32)) * 32)


class RWKV7(ParallelMixer):
    """RWKV-7 time mixing: token shift, DPLR recurrence with an in-context learning rate, bonus, gate."""

    backends = fla_wy("chunk_dplr_delta_rule")

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        d, H, N = config.d_model, config.n_heads, config.hd
        A = H * N
        self.rank_w = lora_rank(d, 1.8, 0.5)
        self.rank_a = lora_rank(d, 1.8, 0.5)
        self.rank_g = lora_rank(d, 0.6, 0.8)

        # token shift: one static interpolation weight per channel for r, w, k, v, a, g
        ddd = torch.arange(d, dtype=torch.float32) / d
        powers = torch.tensor([0.2, 0.9, 0.7, 0.7, 0.9, 0.2])[:, None]
        self.mix = nn.Parameter(1.0 - ddd[None, :] ** powers)  # [6, d]

        self.receptance = nn.Linear(d, A, bias=False)
        self.key = nn.Linear(d, A, bias=False)
        self.value = nn.Linear(d, A, bias=False)
        self.output = nn.Linear(A, d, bias=False)

        # decay: log w = -e^{-0.5} sigmoid(w0 + tanh(x w1) w2); w0 spreads decay speeds over channels
        n = torch.arange(A, dtype=torch.float32) / max(A - 1, 1)
        self.w0 = nn.Parameter(-7.0 + 5.0 * n**0.85 + 0.5)
        self.w1 = nn.Parameter(torch.zeros(d, self.rank_w))
        self.w2 = nn.Parameter(nn.init.orthogonal_(torch.empty(self.rank_w, A), gain=0.1))
        # in-context learning rate a = sigmoid(a0 + x a1 a2)
        self.a0 = nn.Parameter(torch.zeros(A))
        self.a1 = nn.Parameter(torch.zeros(d, self.rank_a))
        self.a2 = nn.Parameter(nn.init.orthogonal_(torch.empty(self.rank_a, A), gain=0.1))
        # output gate g = sigmoid(x g1) g2
        self.g1 = nn.Parameter(torch.zeros(d, self.rank_g))
        self.g2 = nn.Parameter(nn.init.orthogonal_(torch.empty(self.rank_g, A), gain=0.1))

        self.k_k = nn.Parameter(torch.full((A,), 0.85))  # removal-key scale (before normalisation)
        self.k_a = nn.Parameter(torch.ones(A))  # how much a scales the replacement key
        self.r_k = nn.Parameter(torch.zeros(H, N))  # bonus: the current token's r . (k * r_k)
        self.ln_x = nn.GroupNorm(H, A, eps=GROUPNORM_EPS)

    # -- the block around the recurrence -------------------------------------------------

    def _inputs(self, x: torch.Tensor, x_prev: torch.Tensor):
        """x, x_prev [..., d] -> r, k~, v, log w, a_op, b_op [..., H, N] and the gate g [..., H * N]."""
        H, N = self.config.n_heads, self.config.hd
        xx = x_prev - x
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, xx, m) for m in self.mix)  # x + (x_prev - x) * m, one op each
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        log_w = -LOG_DECAY_BOUND * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        heads = lambda t: t.unflatten(-1, (H, N))  # noqa: E731
        kappa = F.normalize(heads(k * self.k_k), dim=-1, eps=1e-12)
        k = k * torch.addcmul(1 - self.k_a, a, self.k_a)  # k * (1 + (a - 1) k_a), the [A]-sized part folded
        r, k, v, a = heads(r), heads(k), heads(v), heads(a)
        # transition diag(w) - (kappa * a)^T kappa  ==  diag(e^{log w}) + a_op^T b_op
        return r, k, v, heads(log_w), kappa * a, -kappa, g

    def _finish(self, o: torch.Tensor, r, k, v, g) -> torch.Tensor:
        """o, r, k, v [..., H, N]; g [..., H * N] -> y [..., d]."""
        lead = o.shape[:-2]
        o = self.ln_x(o.flatten(-2).reshape(-1, o.shape[-2] * o.shape[-1])).view(*lead, -1)
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v  # the current token, read directly
        return self.output((o + bonus.flatten(-2)) * g)

    def _forward(self, x: torch.Tensor, want_state: bool):
        x_prev = F.pad(x, (0, 0, 1, -1))  # x_{t-1}, zero before the first token
        r, k, v, log_w, a, b, g = self._inputs(x, x_prev)
        o, S = self._scan(dplr, r, k, v, log_w, a, b, scale=1.0, want_state=want_state)
        y = self._finish(o, r, k, v, g)
        if not want_state:
            return y, None
        # token-shift state: the last x (a copy, so the state does not keep the prompt alive)
        shift = x[:, -1].clone() if x.shape[1] else x.new_zeros(x.shape[0], x.shape[-1])
        return y, (S, shift)

    # -- decode ----------------------------------------------------------------------------

    def init_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the DPLR state [B, H, N, N] fp32, the previous token x [B, d])."""
        H, N = self.config.n_heads, self.config.hd
        return self._zeros(batch, H, N, N), self.receptance.weight.new_zeros(batch, self.config.d_model)

    def step(self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        S, x_prev = state
        r, k, v, log_w, a, b, g = self._inputs(x_t, x_prev.to(x_t.dtype))
        o, S = dplr_step(r, k, v, log_w, a, b, S, scale=1.0, backend=self.op_backend)
        return self._finish(o, r, k, v, g), (S, x_t)

    def state_bytes(self, batch: int, seq_len: int) -> int:
        H, N, d = self.config.n_heads, self.config.hd, self.config.d_model
        return batch * H * N * N * 4 + batch * d * self.receptance.weight.element_size()


def rwkv7_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs: projections, the three low-rank paths, the chunked DPLR op, and the elementwise tail."""
    d, H, N = config.d_model, config.n_heads, config.hd
    A = H * N
    tokens = batch * seq_len
    proj = 2 * tokens * d * A * 3 + 2 * tokens * A * d
    ranks = (lora_rank(d, 1.8, 0.5), lora_rank(d, 1.8, 0.5), lora_rank(d, 0.6, 0.8))
    lora = 2 * tokens * sum(r * (d + A) for r in ranks)
    mix = dplr_flops(batch, seq_len, H, N, N, config.chunk_size)
    tail = tokens * (12 * d + 30 * A)  # token shift, gates, normalisations, bonus
    return float(proj + lora + mix + tail)


SPECS = (
    ArchSpec(
        name="rwkv7",
        family="rnn/rwkv",
        description="RWKV-7 Goose: linear RNN with a diagonal-plus-low-rank (generalised delta rule) transition "
        "(Peng et al., 2025)",
        paper='RWKV-7 "Goose" with Expressive Dynamic State Evolution (arXiv 2503.14456)',
        complexity=Complexity("O(T d (C + d_head))", "O(T d + (T/C) d d_head)", "O(d d_head) per token", "O(d d_head) state + O(d) token shift"),
        backends=RWKV7.backends,
        factory=RWKV7,
        flops=rwkv7_flops,
        tags=("linear-rnn", "dplr", "delta-rule"),
    ),
)
