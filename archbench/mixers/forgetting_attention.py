"""Forgetting Transformer attention (FoX; Lin et al., 2025, arXiv 2503.02130).

    q, k, v = x W_q, x W_k, x W_v,   g_t = log sigmoid(x_t W_f + b_f)   (one gate per query head)
    o_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(d) + sum_{l=j+1}^{i} g_l) v_j,   out = o W_o

The forget gate down-weights old keys by the product of the gates since, data-dependently: a
learned, input-dependent recency bias inside softmax attention (``archbench.ops.forgetting_attention``).
As in the paper (and fla's ``ForgettingAttention`` layer) there is no RoPE: the forget gate is the
position signal, so ``config.rope_theta`` is not used. Grouped-query sharing as for softmax attention.

Time O(T^2 d) to train, O(S d) per decoded token. The decode state is the KV cache plus the log
gates of every cached position (fp32, one per query head): 2 S H_kv d + S H values. (The cumulative
gate could be kept instead, but the op takes the per-token gates, which keeps the cache exact.)

Backends (registry name -> op backend): ``fla`` (fla's ``parallel_forgetting_attn``), ``flex``
(FlexAttention with the bias as a score_mod; compiled), ``sdpa`` (torch SDPA per query chunk with the
bias as a float mask), ``naive`` (pure-PyTorch reference). Decode steps run SDPA (``naive``: the
reference): fla's kernel takes as many queries as keys, and a compiled flex kernel per cache length
would cost more than it saves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from archbench.mixers.attention import (
    attention_spec,
    decode_backend,
    gated_projections,
    naive_reference,
    softmax_attention_flops,
    split_heads,
)
from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import CACHE_ROOM, cache_append, empty_cache, prefilled_cache
from archbench.mixers.sparse import flex_backend
from archbench.ops.forgetting_attention import FLA_MAX_HEAD_DIM, forgetting_attention
from archbench.spec import Backend, Complexity, always, head_dim_at_most, requires_fla


class ForgettingAttention(ParallelMixer):
    backends = (
        Backend("fla", "fla parallel_forgetting_attn (Triton)", requires_fla,
                limits=head_dim_at_most(FLA_MAX_HEAD_DIM, "fla's parallel_forgetting_attn")),
        flex_backend("torch FlexAttention, forget bias as score_mod (compiled)"),
        Backend("sdpa", "torch SDPA per query chunk, forget bias as a float mask", always),
        naive_reference("pure-PyTorch reference (row chunks of materialised logits)"),
    )  # fmt: skip

    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__(config, backend)
        self.qkv, self.f_proj, self.out = gated_projections(config, kv_groups=2, gate=config.n_heads)  # k, v; a gate per head

    def _project(self, x: torch.Tensor):
        c = self.config
        q, k, v = split_heads(self.qkv(x), (c.n_heads, c.kv_heads, c.kv_heads), c.hd)
        return q, k, v, F.logsigmoid(self.f_proj(x).to(self.state_dtype()))

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v, g = self._project(x)
        o = forgetting_attention(q, k, v, g, backend=self.op_backend)
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, prefilled_cache(x.shape[1], k=k, v=v, g=g)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty KV cache and gate cache; they grow (doubling their capacity) as tokens are decoded."""
        w, kv = self.qkv.weight, (self.config.kv_heads, self.config.hd)
        g = w.new_zeros(batch, CACHE_ROOM, self.config.n_heads, dtype=self.state_dtype())
        return empty_cache(w, batch, k=kv, v=kv) | {"g": g}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q, k, v, g = self._project(x_t[:, None])
        cache_append(state, k=k[:, 0], v=v[:, 0], g=g[:, 0])
        keys, values, gates = state["k"][:, : n + 1], state["v"][:, : n + 1], state["g"][:, : n + 1]
        o = forgetting_attention(q, keys, values, gates, backend=decode_backend(self.op_backend))
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        kv = 2 * batch * seq_len * self.config.kv_heads * self.config.hd * self.qkv.weight.element_size()
        return kv + batch * seq_len * self.config.n_heads * 4  # fp32 log gates


def forgetting_attention_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Softmax attention's FLOPs + the gate projection + the bias added to each visible logit."""
    gate = 2.0 * batch * seq_len * config.d_model * config.n_heads
    bias = batch * config.n_heads * seq_len * (seq_len + 1) / 2
    return softmax_attention_flops(config, batch, seq_len) + gate + bias


SPECS = (
    attention_spec(
        name="forgetting_attention",
        family="full/softmax-gated",
        description="Forgetting Transformer (FoX): softmax attention with a data-dependent forget gate on the logits (Lin et al., 2025)",
        paper="Forgetting Transformer: Softmax Attention with a Forget Gate (arXiv 2503.02130)",
        complexity=Complexity("O(T^2 d)", "O(T d) fused, O(T C) reference (row chunks)", "O(S d) per token", "O(S d) KV cache + O(S H) gates"),
        backends=ForgettingAttention.backends,
        factory=ForgettingAttention,
        flops=forgetting_attention_flops,
    ),
)
