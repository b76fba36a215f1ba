"""Multi-head Latent Attention (MLA; DeepSeek-V2, 2024, arXiv 2405.04434) as a token mixer.

    q_t = x_t W_Q -> per head [q^N ; q^R],   [c~_t ; k^R~_t] = x_t W_DKV,   c_t = RMSNorm(c~_t)
    k^R_t = RoPE(k^R~_t) (one rotary key for all heads),   q^R = RoPE(q^R)
    k_{t,h} = [W_UK,h c_t ; k^R_t],   v_{t,h} = W_UV,h c_t,   out = concat_h(o_h) W_O

with the attention of ``archbench.ops.mla``. Dimensions from the common config: d_n = d_v =
head_dim, d_R = head_dim / 2 (DeepSeek-V2: 128 and 64), latent rank r = 4 head_dim (DeepSeek-V2
and V2-Lite: 512 for head_dim 128), all overridable. The query is projected directly (as in
V2-Lite; V2's low-rank query compression saves activations, not cache). ``rope_theta=None`` drops
the decoupled rotary part (d_R = 0).

The decode state is the latent cache: r + d_R values per token (``state_bytes``), against
2 H head_dim for multi-head attention; decode runs the absorbed form (W_UK on the query, W_UV on
the output), which reads only that cache. Time O(T^2 H d) to train, O(S H (r + d_R)) per
decoded token.

Backends: ``sdpa`` (torch's fused scaled_dot_product_attention on the up-projected keys and
values, and on the latent multi-query form for decode) and ``naive`` (pure-PyTorch reference).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archbench.mixers.attention import naive_reference
from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import HeadRMSNorm, cache_append, empty_cache, prefilled_cache, rotary
from archbench.ops.mla import mla
from archbench.spec import ArchSpec, Backend, Complexity, always


def mla_dims(config: MixerConfig) -> tuple[int, int, int]:
    """(d_n = d_v, d_R, r) of the default MLA layer for ``config``."""
    hd = config.hd
    return hd, (hd // 2 if config.rope_theta else 0), 4 * hd


class MultiHeadLatentAttention(ParallelMixer):
    backends = (
        Backend("sdpa", "torch SDPA on the up-projected keys; latent multi-query SDPA for decode", always),
        naive_reference("pure-PyTorch reference, materialises the T x T scores"),
    )

    def __init__(
        self, config: MixerConfig, backend: str = "sdpa", kv_rank: int | None = None, rope_dim: int | None = None
    ):
        super().__init__(config, backend)
        dn, dr, r = mla_dims(config)
        self.dn, self.dr, self.rank = dn, dr if rope_dim is None else rope_dim, r if kv_rank is None else kv_rank
        if self.rank < 1 or self.dr < 0 or self.dr % 2:
            raise ValueError(f"MLA needs kv_rank >= 1 and an even rope_dim >= 0 (got {self.rank}, {self.dr})")
        h, d = config.n_heads, config.d_model
        self.q_proj = nn.Linear(d, h * (dn + self.dr), bias=False)
        self.kv_down = nn.Linear(d, self.rank + self.dr, bias=False)
        self.kv_norm = HeadRMSNorm(self.rank)
        self.kv_up = nn.Linear(self.rank, h * 2 * dn, bias=False)  # per head: W_UK rows, then W_UV rows
        self.out = nn.Linear(h * dn, d, bias=False)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.kv_up.weight.view(self.config.n_heads, 2 * self.dn, self.rank)
        return w[:, : self.dn], w[:, self.dn :]  # w_uk [H, d_n, r], w_uv [H, d_v, r]

    def _project(self, x: torch.Tensor, offset: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.config.n_heads, self.dn + self.dr)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        c, k_rope = self.kv_down(x).split([self.rank, self.dr], dim=-1)
        c = self.kv_norm(c)
        if self.dr:
            q_rope = rotary(q_rope, offset, self.config.rope_theta)
            k_rope = rotary(k_rope[:, :, None], offset, self.config.rope_theta)[:, :, 0]
        return q_nope, q_rope, c, k_rope

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q_nope, q_rope, c, k_rope = self._project(x)
        o = mla(q_nope, q_rope, c, k_rope, *self._weights(), backend=self.op_backend)
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, prefilled_cache(x.shape[1], c=c, kr=k_rope)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty latent cache (c and the shared rotary key); it doubles its capacity as it fills."""
        return empty_cache(self.kv_down.weight, batch, c=(self.rank,), kr=(self.dr,))

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q_nope, q_rope, c, k_rope = self._project(x_t[:, None], offset=n)
        cache_append(state, c=c[:, 0], kr=k_rope[:, 0])
        o = mla(
            q_nope, q_rope, state["c"][:, : n + 1], state["kr"][:, : n + 1], *self._weights(),
            absorb=True, backend=self.op_backend,
        )  # fmt: skip
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        """The latent cache: (r + d_R) values per token, shared by all heads."""
        return batch * seq_len * (self.rank + self.dr) * self.kv_down.weight.element_size()


def mla_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Up-projected form: projections (query, down, up, output) + causal QK^T over d_n + d_R and
    PV over d_v (half the square, as flash-attn counts)."""
    dn, dr, r = mla_dims(config)
    h, d, bt = config.n_heads, config.d_model, batch * seq_len
    proj = 2 * bt * (d * h * (dn + dr) + d * (r + dr) + r * h * 2 * dn + h * dn * d)
    mix = batch * h * seq_len * seq_len * (dn + dr + dn)
    return float(proj + mix)


def mla_decode_flops(config: MixerConfig, batch: int, context: int) -> float:
    """One absorbed decode step after ``context`` tokens: projections of the new token, W_UK on
    the query (H d_n r), scores over S = context + 1 latent keys (H S (r + d_R)), the latent mix
    (H S r), W_UV on the output (H r d_v) and the output map."""
    dn, dr, r = mla_dims(config)
    h, d, S = config.n_heads, config.d_model, context + 1
    proj = 2 * (d * h * (dn + dr) + d * (r + dr) + h * dn * d)
    absorbed = 2 * h * dn * r + 2 * h * S * (r + dr) + 2 * h * S * r + 2 * h * r * dn
    return float(batch * (proj + absorbed))


SPECS = (
    ArchSpec(
        name="mla",
        family="full/softmax-latent",
        description="Multi-head Latent Attention: low-rank joint KV latent + decoupled RoPE, latent decode cache (DeepSeek-V2, 2024)",
        paper="DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model (arXiv 2405.04434)",
        complexity=Complexity("O(T^2 H d)", "O(T H d) fused, O(T^2) naive", "O(S H (r + d_R)) per token (absorbed)", "O(S (r + d_R)) latent cache"),
        backends=MultiHeadLatentAttention.backends,
        time_exponent=2.0,
        factory=MultiHeadLatentAttention,
        flops=mla_flops,
        decode_flops=mla_decode_flops,
    ),
)
