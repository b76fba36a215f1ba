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

from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import cache_append, empty_cache, prefilled_cache, rotary
from archbench.ops.softmax_attention import softmax_attention
from archbench.spec import ArchSpec, Backend, Complexity, always, marginal_flops, reference_backend, requires_flash_attn


def naive_reference(description: str) -> Backend:
    """The pure-PyTorch reference of an attention entry, named ``naive`` (it calls the ops' ``torch``)."""
    return reference_backend(description, "naive")


def decode_backend(op: str, keep: tuple[str, ...] = ("torch",)) -> str:
    """The op backend a decode step attends with: ``op`` when it is one of ``keep``, else SDPA (compiling
    a FlexAttention kernel per cache length, or fla's kernels that take as many queries as keys, would
    cost more than they save)."""
    return op if op in keep else "sdpa"


def attention_spec(*, flops, time_exponent: float = 2.0, **fields: Any) -> ArchSpec:
    """The catalogue entry of an attention mixer (``ArchSpec`` of ``fields``): training time quadratic in T
    unless said otherwise, and a decode step that costs what the next token costs in the parallel form
    (``marginal_flops``)."""
    return ArchSpec(flops=flops, decode_flops=marginal_flops(flops), time_exponent=time_exponent, **fields)


def gated_projections(config: MixerConfig, kv_groups: int, gate: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The layers of an attention variant with a per-token gate, made in this order: the fused projection
    to n_heads query heads and ``kv_groups`` groups of kv_heads heads (keys, values, ...), a biased
    projection to ``gate`` gate logits, and the output projection."""
    h, hd, d = config.n_heads, config.hd, config.d_model
    fused = nn.Linear(d, (h + kv_groups * config.kv_heads) * hd, bias=False)
    return fused, nn.Linear(d, gate, bias=True), nn.Linear(h * hd, d, bias=False)


def split_heads(y: torch.Tensor, heads: tuple[int, ...], hd: int) -> tuple[torch.Tensor, ...]:
    """A fused projection y [..., sum(heads) * hd] cut into one [..., n, hd] tensor per entry n of ``heads``."""
    parts = y.split([n * hd for n in heads], dim=-1)
    return tuple(part.unflatten(-1, (n, hd)) for part, n in zip(parts, heads))


class QKVProjections:
    """The projections every attention variant shares: fused q/k/v (grouped-query: fewer
    k/v heads), RoPE on q and k at absolute positions ``offset ..``, and the output map."""

    config: MixerConfig

    def _init_proj(self, config: MixerConfig) -> None:
        h, hkv, hd = config.n_heads, config.kv_heads, config.hd
        self.qkv = nn.Linear(config.d_model, (h + 2 * hkv) * hd, bias=False)
        self.out = nn.Linear(h * hd, config.d_model, bias=False)

    def _project(self, x: torch.Tensor, offset: int = 0):
        c = self.config
        q, k, v = split_heads(self.qkv(x), (c.n_heads, c.kv_heads, c.kv_heads), c.hd)
        if c.rope_theta:
            q, k = rotary(q, offset, c.rope_theta), rotary(k, offset, c.rope_theta)
        return q, k, v

    def _elem(self) -> int:
        return self.qkv.weight.element_size()

    def _kv_bytes(self, batch: int, tokens: int) -> int:
        return 2 * batch * tokens * self.config.kv_heads * self.config.hd * self._elem()


class KVCacheAttention(QKVProjections, ParallelMixer):
    """An attention mixer over softmax attention's projections whose decode state is the whole KV cache
    (rotated keys and values, doubling its capacity as it fills); each variant says how queries attend
    to keys (``_attend``), over the sequence or, in a decode step, over the cache."""

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decode: bool) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v = self._project(x)
        y = self.out(self._attend(q, k, v, decode=False).flatten(2))
        return y, (prefilled_cache(x.shape[1], k=k, v=v) if want_state else None)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty KV cache; it grows (doubling its capacity) as tokens are decoded."""
        kv = (self.config.kv_heads, self.config.hd)
        return empty_cache(self.qkv.weight, batch, k=kv, v=kv)

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        q, k, v = self._project(x_t[:, None], offset=state["len"])
        n = cache_append(state, k=k[:, 0], v=v[:, 0])
        o = self._attend(q, state["k"][:, :n], state["v"][:, :n], decode=True)
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, seq_len)


class SoftmaxAttention(KVCacheAttention):
    backends = (
        Backend("flash_attn", "flash-attn package (Dao, 2023)", requires_flash_attn),
        Backend("sdpa", "torch.nn.functional.scaled_dot_product_attention", always),
        naive_reference("pure-PyTorch reference, materialises the T x T scores"),
    )

    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__(config, backend)
        self._init_proj(config)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decode: bool) -> torch.Tensor:
        return softmax_attention(q, k, v, causal=not decode, backend=self.op_backend)


def softmax_attention_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Forward FLOPs: projections + causal QK^T and PV (half the square, as flash-attn counts)."""
    h, hkv, hd, d = config.n_heads, config.kv_heads, config.hd, config.d_model
    proj = 2 * batch * seq_len * d * (h + 2 * hkv) * hd + 2 * batch * seq_len * h * hd * d
    mix = 2 * batch * h * seq_len * seq_len * hd  # 2 matmuls x 2 flops x T^2/2 x hd
    return float(proj + mix)


SPECS = (
    attention_spec(
        name="softmax_attention",
        family="full/softmax",
        description="Causal multi-head softmax attention (Vaswani et al., 2017)",
        paper="Attention Is All You Need (arXiv 1706.03762)",
        complexity=Complexity("O(T^2 d)", "O(T d) fused, O(T^2) naive", "O(T d) per token", "O(T d) KV cache"),
        backends=SoftmaxAttention.backends,
        factory=SoftmaxAttention,
        flops=softmax_attention_flops,
    ),
)
