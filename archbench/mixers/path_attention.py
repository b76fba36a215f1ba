"""PaTH attention (Yang et al., 2025, arXiv 2505.16381) as a token mixer.

    q, k, v = x W_q, x W_k, x W_v,   w_t = normalize(x_t W_w),   beta_t = 2 sigmoid(x_t W_b + b)
    o_i = sum_{j <= i} softmax_j(q_i^T H_i ... H_{j+1} k_j / sqrt(d)) v_j,   H_s = I - beta_s w_s w_s^T

(``archbench.ops.path_attention``), one w and beta per key/value head (grouped-query sharing as for
softmax attention). The accumulated Householder transforms are the position encoding, so there is
no RoPE (``config.rope_theta`` is not used); beta in (0, 2) allows negative eigenvalues, as in fla's
``PaTHAttention``. fla's layer also passes w through a short convolution and a low-rank map; here
w is one linear map, and no forget gate (the op takes one: PaTH-FoX).

Time O(T^2 d) to train (the reference adds O(T^2 d^2 / C) for moving queries across chunks),
O(S d) per decoded token: the decode state is the KV cache with keys kept transformed to the
current position, updated by one rank-1 step per token; 2 S H_kv d values, as for softmax attention.

Backends: ``fla`` (fla's ``parallel_path_attn``, which also returns the transformed key cache for
prefill) and ``naive`` (pure-PyTorch chunked reference). Decode steps attend with SDPA (``naive``:
the reference softmax).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from archbench.mixers.attention import (
    attention_spec,
    decode_backend,
    gated_projections,
    softmax_attention_flops,
    split_heads,
)
from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import cache_append, empty_cache, prefilled_cache
from archbench.ops.path_attention import FLA_HEAD_DIMS, householder_update, path_attention
from archbench.ops.softmax_attention import softmax_attention
from archbench.spec import Complexity, fla_and_reference


def path_fla_limits(config: MixerConfig) -> str | None:
    """``Backend.limits`` of fla's parallel_path_attn: head dims 16, 32, 64 or 128."""
    if config.hd not in FLA_HEAD_DIMS:
        return f"fla's parallel_path_attn takes head dimensions {'/'.join(map(str, FLA_HEAD_DIMS))} (this config: {config.hd}); change n_heads or use naive"
    return None


class PaTHAttention(ParallelMixer):
    backends = fla_and_reference(
        "fla parallel_path_attn (Triton)", "pure-PyTorch chunked reference (materialises the T x T logits)",
        limits=path_fla_limits, reference_name="naive",
    )  # fmt: skip

    def __init__(self, config: MixerConfig, backend: str = "naive"):
        super().__init__(config, backend)
        # k, v, w; beta per key/value head
        self.qkvw, self.b_proj, self.out = gated_projections(config, kv_groups=3, gate=config.kv_heads)

    def _project(self, x: torch.Tensor):
        h, hkv, sd = self.config.n_heads, self.config.kv_heads, self.state_dtype()
        q, k, v, w = split_heads(self.qkvw(x), (h, hkv, hkv, hkv), self.config.hd)
        return q, k, v, F.normalize(w.to(sd), dim=-1), 2 * torch.sigmoid(self.b_proj(x).to(sd))

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v, w, beta = self._project(x)
        o, cache = path_attention(
            q, k, v, w.to(k.dtype) if self.op_backend == "torch" else w, beta, output_final_state=want_state,
            chunk_size=self.config.chunk_size, backend=self.op_backend,
        )  # fmt: skip
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, prefilled_cache(x.shape[1], k=cache.to(k.dtype), v=v)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty cache of transformed keys and values; it doubles its capacity as it fills."""
        kv = (self.config.kv_heads, self.config.hd)
        return empty_cache(self.qkvw.weight, batch, k=kv, v=kv)

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q, k, v, w, beta = self._project(x_t[:, None])
        state["k"][:, :n] = householder_update(state["k"][:, :n], w[:, 0], beta[:, 0])  # every cached key moves through H_t
        cache_append(state, k=k[:, 0], v=v[:, 0])
        backend = decode_backend(self.op_backend)
        o = softmax_attention(q, state["k"][:, : n + 1], state["v"][:, : n + 1], causal=False, backend=backend)
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return 2 * batch * seq_len * self.config.kv_heads * self.config.hd * self.qkvw.weight.element_size()


def path_attention_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Softmax attention's FLOPs + the w and beta projections + the Householder work: carrying
    queries and keys through their chunk (4 d per pair of token and chunk position, C of them),
    the chunk transforms (4 d^2 C per chunk) and moving queries across chunks (2 d^2 per query
    per earlier chunk), the algorithm of the chunked form."""
    h, hkv, hd, d = config.n_heads, config.kv_heads, config.hd, config.d_model
    T, C = seq_len, min(config.chunk_size, seq_len)
    bt = batch * T
    proj = 2 * bt * d * (hkv * hd + hkv)
    within = 2 * 4 * bt * h * hd * C
    transforms = 4 * batch * h * hd * hd * T
    across = 2 * batch * h * hd * hd * T * (T / C - 1) / 2
    return softmax_attention_flops(config, batch, seq_len) + proj + within + transforms + max(0.0, across)


SPECS = (
    attention_spec(
        name="path_attention",
        family="full/softmax-position",
        description="PaTH attention: softmax attention with accumulated data-dependent Householder transforms as position encoding (Yang et al., 2025)",
        paper="PaTH Attention: Position Encoding via Accumulating Householder Transformations (arXiv 2505.16381)",
        complexity=Complexity("O(T^2 d)", "O(T d) fused, O(T^2) reference", "O(S d) per token", "O(S d) transformed KV cache"),
        backends=PaTHAttention.backends,
        factory=PaTHAttention,
        flops=path_attention_flops,
    ),
)
