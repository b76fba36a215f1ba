"""Softmax attention (Vaswani et al., 2017, "Attention Is All You Need").

    o_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(d)) v_s,   q = x W_q, k = x W_k, v = x W_v

Queries and keys carry rotary position embeddings (RoPE, Su et al., 2021, as in Llama;
``config.rope_theta``, None for none), applied at each token's absolute position, so the KV
cache holds rotated keys. Time O(T^2 d) to train or prefill, O(T d) per decoded token; the decode state is the KV
cache, 2 * T * H_kv * d_head values that grow with the context. Grouped-query attention
(n_kv_heads < n_heads) shares each key/value head among n_heads / n_kv_heads query heads.

The reference is the naive form (``backend="naive"``: the score matrix materialised);
``sdpa`` is torch's fused scaled_dot_product_attention, ``flash_attn`` the flash-attn
package. All three compute the same function and must agree within dtype tolerance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archbench.mixers.base import Mixer, MixerConfig, check_backend
from archbench.mixers.common import cache_append, empty_cache, prefilled_cache, rotary
from archbench.ops.softmax_attention import softmax_attention
from archbench.spec import ArchSpec, Backend, Complexity, always, marginal_flops, requires_flash_attn

# registry backend name -> op backend name
OP_BACKEND = {"naive": "torch", "sdpa": "sdpa", "flash_attn": "flash_attn"}


class QKVProjections:
    """The projections every attention variant shares: fused q/k/v (grouped-query: fewer
    k/v heads), RoPE on q and k at absolute positions ``offset ..``, and the output map."""

    config: MixerConfig

    def _init_proj(self, config: MixerConfig) -> None:
        h, hkv, hd = config.n_heads, config.kv_heads, config.hd
        self.qkv = nn.Linear(config.d_model, (h + 2 * hkv) * hd, bias=False)
        self.out = nn.Linear(h * hd, config.d_model, bias=False)

    def _project(self, x: torch.Tensor, offset: int = 0):
        B, T, _ = x.shape
        h, hkv, hd = self.config.n_heads, self.config.kv_heads, self.config.hd
        q, k, v = self.qkv(x).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q, k, v = q.view(B, T, h, hd), k.view(B, T, hkv, hd), v.view(B, T, hkv, hd)
        if self.config.rope_theta:
            q, k = rotary(q, offset, self.config.rope_theta), rotary(k, offset, self.config.rope_theta)
        return q, k, v

    def _elem(self) -> int:
        return self.qkv.weight.element_size()

    def _kv_bytes(self, batch: int, tokens: int) -> int:
        return 2 * batch * tokens * self.config.kv_heads * self.config.hd * self._elem()


class SoftmaxAttention(QKVProjections, Mixer):
    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__()
        self.config, self.backend = config, check_backend("softmax attention", backend, OP_BACKEND)
        self._init_proj(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        o = softmax_attention(q, k, v, causal=True, backend=OP_BACKEND[self.backend])
        return self.out(o.flatten(2))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward over the prompt; the KV cache is its keys and values (room for 16 more)."""
        q, k, v = self._project(x)
        o = softmax_attention(q, k, v, causal=True, backend=OP_BACKEND[self.backend])
        return self.out(o.flatten(2)), prefilled_cache(x.shape[1], k=k, v=v)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty KV cache; it grows (doubling its capacity) as tokens are decoded."""
        kv = (self.config.kv_heads, self.config.hd)
        return empty_cache(self.qkv.weight, batch, k=kv, v=kv)

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q, k, v = self._project(x_t[:, None], offset=n)
        cache_append(state, k=k[:, 0], v=v[:, 0])
        o = softmax_attention(
            q, state["k"][:, : n + 1], state["v"][:, : n + 1], causal=False, backend=OP_BACKEND[self.backend]
        )
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, seq_len)


def softmax_attention_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs: projections + causal QK^T and PV (half the square, as flash-attn counts)."""
    h, hkv, hd, d = config.n_heads, config.kv_heads, config.hd, config.d_model
    proj = 2 * batch * seq_len * d * (h + 2 * hkv) * hd + 2 * batch * seq_len * h * hd * d
    mix = 2 * batch * h * seq_len * seq_len * hd  # 2 matmuls x 2 flops x T^2/2 x hd
    return float(proj + mix)


SPECS = (
    ArchSpec(
        name="softmax_attention",
        family="full/softmax",
        description="Causal multi-head softmax attention (Vaswani et al., 2017)",
        paper="Attention Is All You Need (arXiv 1706.03762)",
        complexity=Complexity(
            train_time="O(T^2 d)",
            train_memory="O(T d) fused, O(T^2) naive",
            decode_time="O(T d) per token",
            decode_memory="O(T d) KV cache",
        ),
        backends=(
            Backend("flash_attn", "flash-attn package (Dao, 2023)", requires_flash_attn),
            Backend("sdpa", "torch.nn.functional.scaled_dot_product_attention", always),
            Backend("naive", "pure-PyTorch reference, materialises the T x T scores", always),
        ),
        time_exponent=2.0,
        factory=lambda cfg, backend: SoftmaxAttention(cfg, backend),
        flops=softmax_attention_flops,
        decode_flops=marginal_flops(softmax_attention_flops),
    ),
)
