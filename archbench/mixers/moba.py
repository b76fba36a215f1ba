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

import torch

from archbench.mixers.attention import KVCacheAttention, attention_spec, decode_backend, naive_reference
from archbench.mixers.base import MixerConfig
from archbench.mixers.sparse import _proj_flops, flex_backend
from archbench.ops.moba import moba
from archbench.spec import Backend, Complexity, always


class MoBA(KVCacheAttention):
    backends = (
        flex_backend("torch FlexAttention with a block mask from the routing (compiled)"),
        Backend("sdpa", "torch SDPA per query chunk with the routed boolean key mask", always),
        naive_reference("pure-PyTorch reference (gate, top-k, masked logits in row chunks)"),
    )

    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__(config, backend)
        self.block, self.topk = config.block_size, config.block_count
        self._init_proj(config)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decode: bool) -> torch.Tensor:
        backend = decode_backend(self.op_backend) if decode else self.op_backend
        return moba(q, k, v, self.block, self.topk, backend=backend)


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
    attention_spec(
        name="moba",
        family="sparse/dynamic",
        description="MoBA: softmax attention over the own block + top-k past blocks routed by mean keys (Lu et al., 2025)",
        paper="MoBA: Mixture of Block Attention for Long-Context LLMs (arXiv 2502.13189)",
        complexity=Complexity("O(T (k l + T/l) d)", "O(T d + T H T/l) flex, O(T C) reference (row chunks)", "O((S/l + k l) d) per token", "O(S d) KV cache"),
        backends=MoBA.backends,
        factory=MoBA,
        flops=moba_flops,
    ),
)
