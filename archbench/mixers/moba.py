"""Mixture of Block Attention (MoBA; Lu et al., 2025, arXiv 2502.13189) as a token mixer.

The projections of softmax attention (``archbench.mixers.attention``: q, k, v with grouped-query
sharing, RoPE at absolute positions, output map); each query then attends to its own block of
l = ``config.block_size`` keys (causally) and to the ``config.block_count - 1`` past blocks whose
mean key scores highest against it (``archbench.ops.moba``; ``block_count`` counts the own block,
as MoBA's top-k does). The routing is parameter-free, as in the paper.

Time O(T (k l + T / l) d) with a kernel that skips unchosen blocks (FlexAttention), O(T S d) for
the dense-masked reference and SDPA; per decoded token O(S / l d) to score the blocks plus
O(k l d) to attend. The decode state is the whole KV cache (any past block may be chosen later);
block means are recomputed from it at each step, O(S d), the order of one attention step.

Backends (registry name -> op backend): ``flex`` (FlexAttention with a block mask from the routing;
compiled; CUDA, and CPU in fp32/bf16 for the forward), ``sdpa`` (torch SDPA with the boolean key
mask per query chunk), ``naive`` (pure-PyTorch reference). fla's ``parallel_moba`` is not adapted:
it runs flash-attn's varlen CUDA kernels (no Triton), which FlexAttention's block-sparse path
covers on the same GPUs. Decode steps use the reference or SDPA.
"""

from __future__ import annotations

from typing import Any

import torch

from archbench.mixers.attention import QKVProjections
from archbench.mixers.base import MixerConfig, ParallelMixer, check_backend
from archbench.mixers.common import cache_append, empty_cache, prefilled_cache
from archbench.mixers.sparse import _proj_flops, flex_backward, requires_flex
from archbench.ops.moba import moba
from archbench.spec import ArchSpec, Backend, Complexity, always, marginal_flops

OP_BACKEND = {"flex": "flex", "sdpa": "sdpa", "naive": "torch"}


class MoBA(QKVProjections, ParallelMixer):
    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__()
        self.config, self.backend = config, check_backend("MoBA", backend, OP_BACKEND)
        self.block, self.topk = config.block_size, config.block_count
        self._init_proj(config)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v = self._project(x)
        o = moba(q, k, v, self.block, self.topk, backend=OP_BACKEND[self.backend])
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, prefilled_cache(x.shape[1], k=k, v=v)

    def init_state(self, batch: int) -> dict[str, Any]:
        """An empty KV cache; it grows (doubling its capacity) as tokens are decoded."""
        kv = (self.config.kv_heads, self.config.hd)
        return empty_cache(self.qkv.weight, batch, k=kv, v=kv)

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q, k, v = self._project(x_t[:, None], offset=n)
        cache_append(state, k=k[:, 0], v=v[:, 0])
        backend = "torch" if self.backend == "naive" else "sdpa"
        o = moba(q, state["k"][:, : n + 1], state["v"][:, : n + 1], self.block, self.topk, backend=backend)
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, seq_len)


def moba_pairs(seq_len: int, block_size: int, topk: int) -> int:
    """(query, key) pairs MoBA computes: per query, its own block up to itself plus
    min(topk - 1, complete past blocks) routed blocks of block_size keys."""
    l, pairs = block_size, 0
    for c in range(-(-seq_len // l)):
        m = min(l, seq_len - c * l)  # queries in block c, each with c complete past blocks
        pairs += m * (m + 1) // 2 + m * l * min(topk - 1, c)
    return pairs


def moba_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + block means + the gate (query x past block means) + QK^T and PV over the
    routed pairs."""
    l, h, hd = config.block_size, config.n_heads, config.hd
    nb = seq_len // l
    means = batch * seq_len * config.kv_heads * hd
    gate = 2.0 * batch * h * hd * (l * nb * (nb - 1) // 2 + nb * (seq_len - nb * l))  # sum_t (complete past blocks)
    mix = 4.0 * batch * h * hd * moba_pairs(seq_len, l, config.block_count)
    return _proj_flops(config, batch, seq_len) + means + gate + mix


SPECS = (
    ArchSpec(
        name="moba",
        family="sparse/dynamic",
        description="MoBA: softmax attention over the own block + top-k past blocks routed by mean keys (Lu et al., 2025)",
        paper="MoBA: Mixture of Block Attention for Long-Context LLMs (arXiv 2502.13189)",
        complexity=Complexity(
            train_time="O(T (k l + T/l) d)",
            train_memory="O(T d + T H T/l) flex, O(T C) reference (row chunks)",
            decode_time="O((S/l + k l) d) per token",
            decode_memory="O(S d) KV cache",
        ),
        backends=(
            Backend(
                "flex",
                "torch FlexAttention with a block mask from the routing (compiled)",
                requires_flex,
                flex_backward,
            ),
            Backend("sdpa", "torch SDPA per query chunk with the routed boolean key mask", always),
            Backend("naive", "pure-PyTorch reference (gate, top-k, masked logits in row chunks)", always),
        ),
        time_exponent=2.0,
        factory=lambda cfg, backend: MoBA(cfg, backend),
        flops=moba_flops,
        decode_flops=marginal_flops(moba_flops),
    ),
)
