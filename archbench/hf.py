"""Hugging Face ``transformers`` model families as model-level architectures.

The zoo's mixers are written here from their papers; people also compare the implementations
they deploy. ``hf_llama`` (softmax attention with RoPE, GQA and SwiGLU MLPs), ``hf_mamba2``
(the Mamba2 SSD stack) and ``hf_jamba`` (Mamba layers with one attention layer in four and
MoE MLPs) are built from small configs derived from the cell (d_model, n_heads, n_kv_heads,
head_dim, d_state, expand, conv_size, n_layers, vocab_size): no download, random weights.
They are *model-level* archs (``level: model`` cells): token ids in, logits out, with
``prefill`` / ``step`` over the library's own cache, so fwd, fwd_bwd, prefill and decode are
measured exactly as for the zoo's small LMs. ``transformers`` is optional (``pip install
transformers``); without it these entries are listed as unavailable, with the reason.

The deployed hybrids that transformers ships are entries too, at the same small sizes:
``hf_qwen3_next`` (gated DeltaNet + gated attention, MoE), ``hf_falcon_h1`` (attention and Mamba2
heads in parallel in every layer), ``hf_granite_hybrid`` (Granite-4.0-H: Mamba2 + attention, MoE),
``hf_lfm2`` (gated short convolutions + GQA attention) and ``hf_kimi_linear`` (Kimi Delta Attention
+ MLA, MoE). Their caches mix KV, convolution and recurrent states whose layout changes between
transformers versions, so their state bytes are measured from the cache a prefill returns.

transformers picks its fused kernels (hub kernels, mamba-ssm, causal-conv1d, fla) by itself, per
function, when it imports a model file; the row's ``kernels`` field does not see inside the
library, so model rows also carry ``implementations``: per mixer class, the path it takes on the
cell's device (``archbench.hf_paths.implementations``), so a slow row says why.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch
from torch import nn

from archbench.mixers.base import MixerConfig
from archbench.spec import ArchSpec, Backend, Complexity
from archbench.spec import Unsupported as spec_Unsupported


def requires_transformers(device: str, dtype: str | None = None) -> str | None:
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install transformers)"
    return None


def _mlp_width(d_model: int) -> int:
    """The SwiGLU width archbench's own blocks use (ratio 4, x 2/3, a multiple of 8)."""
    return max(8, int(round(d_model * 4 * 2 / 3 / 8)) * 8)


class HFCausalLM(nn.Module):
    """A transformers causal LM behind archbench's model interface: ``forward(ids) -> logits``,
    ``prefill(ids) -> (logits, state)``, ``step(ids_t, state) -> (logits_t, state)``."""

    def __init__(self, model: nn.Module, state_bytes_fn):
        super().__init__()
        self.model = model
        self._state_bytes = state_bytes_fn
        params = inspect.signature(model.forward).parameters
        # transformers 5 passes every cache as `cache`; 4.x used past_key_values (Mamba: cache_params)
        self.cache_kw = next((k for k in ("cache", "cache_params", "past_key_values") if k in params), "past_key_values")

    @staticmethod
    def _cache_of(out) -> Any:
        for name in ("cache", "past_key_values", "cache_params"):
            c = getattr(out, name, None)
            if c is not None:
                return c
        return None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states (task training scores only the positions it needs)."""
        return self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h)

    def init_state(self, batch: int) -> dict[str, Any]:
        return {"cache": None, "pos": 0}

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.model(input_ids=ids, use_cache=True)
        return out.logits, {"cache": self._cache_of(out), "pos": ids.shape[1]}

    def step(self, ids_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        pos = state["pos"]
        kwargs = {self.cache_kw: state["cache"]} if state["cache"] is not None else {}
        out = self.model(
            input_ids=ids_t[:, None], use_cache=True, cache_position=torch.tensor([pos], device=ids_t.device), **kwargs
        )
        return out.logits[:, -1], {"cache": self._cache_of(out), "pos": pos + 1}

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return int(self._state_bytes(batch, seq_len, next(self.parameters()).element_size()))

    def implementations(self, device: str) -> list[dict]:
        """Per mixer class, the path transformers takes on ``device`` (``hf_paths.implementations``)."""
        from archbench.hf_paths import implementations

        return implementations(self.model, device)


def _llama(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = config
    hf = LlamaConfig(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model),
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.hd,
        max_position_embeddings=1 << 20, rope_theta=c.rope_theta or 10000.0, tie_word_embeddings=True,
        attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    kv = lambda B, T, elem: 2 * n_layers * B * T * c.kv_heads * c.hd * elem  # noqa: E731 - K and V per layer
    return HFCausalLM(LlamaForCausalLM(hf), kv)


def _mamba2(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    c = config
    inner, state = c.expand * c.d_model, c.d_state or 64
    head_dim = c.hd if inner % c.hd == 0 else inner // c.n_heads
    kernel = max(c.conv_size, 2)
    hf = Mamba2Config(
        vocab_size=vocab_size, hidden_size=c.d_model, num_hidden_layers=n_layers, state_size=state,
        expand=c.expand, head_dim=head_dim, num_heads=inner // head_dim, n_groups=1, conv_kernel=kernel,
        chunk_size=c.chunk_size, tie_word_embeddings=True,
    )  # fmt: skip
    conv_dim = inner + 2 * state  # x, B, C go through the short convolution (n_groups = 1)

    def nbytes(B, T, elem):  # a fixed state: the conv window and the SSM state, per layer
        return n_layers * B * (conv_dim * kernel + inner * state) * elem

    return HFCausalLM(Mamba2ForCausalLM(hf), nbytes)


def _jamba(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import JambaConfig, JambaForCausalLM

    c = config
    state, inner, kernel = c.d_state or 16, c.expand * c.d_model, max(c.conv_size, 2)
    period, offset = 4, min(1, n_layers - 1)  # one attention layer in four, as Jamba
    hf = JambaConfig(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model),
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
        num_experts=8, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
        attn_layer_period=period, attn_layer_offset=offset, mamba_d_state=state, mamba_expand=c.expand,
        mamba_d_conv=kernel, tie_word_embeddings=True, attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    n_attn = sum(1 for i in range(n_layers) if i % period == offset)
    hd = c.d_model // c.n_heads

    def nbytes(B, T, elem):
        attn = 2 * n_attn * B * T * c.kv_heads * hd
        mamba = (n_layers - n_attn) * B * (inner * kernel + inner * state)
        return (attn + mamba) * elem

    return HFCausalLM(JambaForCausalLM(hf), nbytes)


def _layer_types(n_layers: int, period: int, offset: int, attn: str, other: str) -> list[str]:
    """One attention layer in ``period`` (at ``offset``), the rest ``other``: the deployed hybrids' ratios."""
    return [attn if i % period == offset else other for i in range(n_layers)]


def measured_state(model: nn.Module):
    """State bytes as the library's own cache holds them after a prefill of T tokens (measured
    once per (B, T): the deployed hybrids' caches mix KV, conv and recurrent states whose
    layouts change between transformers versions)."""
    from archbench.hf_paths import cache_bytes

    memo: dict = {}

    def nbytes(B, T, elem):
        if (B, T) not in memo:
            p = next(model.parameters())
            ids = torch.zeros(B, T, dtype=torch.long, device=p.device)
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True)
            memo[(B, T)] = cache_bytes(HFCausalLM._cache_of(out))
        return memo[(B, T)]

    return nbytes


def _hybrid(model: nn.Module) -> HFCausalLM:
    return HFCausalLM(model, measured_state(model))


def _qwen3_next(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    c = config
    hf = Qwen3NextConfig(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model),
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.hd,
        linear_conv_kernel_dim=max(c.conv_size, 2), linear_key_head_dim=c.hd, linear_value_head_dim=c.hd,
        linear_num_key_heads=c.n_heads, linear_num_value_heads=c.n_heads, moe_intermediate_size=c.d_model,
        shared_expert_intermediate_size=c.d_model, num_experts=4, num_experts_per_tok=2,
        layer_types=_layer_types(n_layers, 4, 3, "full_attention", "linear_attention"), tie_word_embeddings=True,
        attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    return _hybrid(Qwen3NextForCausalLM(hf))


def _falcon_h1(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import FalconH1Config, FalconH1ForCausalLM

    c = config
    inner = c.expand * c.d_model
    hf = FalconH1Config(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model),
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
        mamba_d_ssm=inner, mamba_n_heads=inner // c.hd, mamba_d_head=c.hd, mamba_d_state=c.d_state or 16,
        mamba_d_conv=max(c.conv_size, 2), mamba_expand=c.expand, mamba_chunk_size=c.chunk_size,
        tie_word_embeddings=True, attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    return _hybrid(FalconH1ForCausalLM(hf))


def _granite_hybrid(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    c = config
    inner = c.expand * c.d_model
    hf = GraniteMoeHybridConfig(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=c.d_model, shared_intermediate_size=c.d_model,
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
        num_local_experts=4, num_experts_per_tok=2, mamba_n_heads=inner // c.hd, mamba_d_head=c.hd,
        mamba_d_state=c.d_state or 16, mamba_d_conv=max(c.conv_size, 2), mamba_expand=c.expand,
        mamba_chunk_size=c.chunk_size, layer_types=_layer_types(n_layers, 4, 3, "attention", "mamba"),
        tie_word_embeddings=True, attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    return _hybrid(GraniteMoeHybridForCausalLM(hf))


def _lfm2(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import Lfm2Config, Lfm2ForCausalLM

    c = config
    hf = Lfm2Config(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model), block_multiple_of=8,
        num_hidden_layers=n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
        conv_L_cache=max(c.conv_size - 1, 1), layer_types=_layer_types(n_layers, 3, 2, "full_attention", "conv"),
        tie_word_embeddings=True, attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    return _hybrid(Lfm2ForCausalLM(hf))


def _kimi_linear(config: MixerConfig, backend: str, n_layers: int, vocab_size: int) -> HFCausalLM:
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    c = config
    hf = KimiLinearConfig(
        vocab_size=vocab_size, hidden_size=c.d_model, intermediate_size=_mlp_width(c.d_model),
        moe_intermediate_size=c.d_model, num_hidden_layers=n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_heads, kv_lora_rank=max(8, c.d_model // 4), q_lora_rank=None,
        qk_rope_head_dim=max(2, c.hd // 2), qk_nope_head_dim=c.hd, v_head_dim=c.hd, num_local_experts=4,
        num_experts_per_tok=2, linear_head_dim=c.hd, linear_num_heads=c.n_heads,
        linear_conv_kernel_dim=max(c.conv_size, 2), layer_types=_layer_types(n_layers, 4, 3, "full_attention", "linear_attention"),
        mlp_layer_types=["dense"] + ["sparse"] * (n_layers - 1), pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, attn_implementation={"sdpa": "sdpa", "eager": "eager"}[backend],
    )  # fmt: skip
    return _hybrid(KimiLinearForCausalLM(hf))


_ATTN = (
    Backend("sdpa", "transformers with attn_implementation='sdpa'", requires_transformers),
    Backend("eager", "transformers with attn_implementation='eager' (the score matrix materialised)", requires_transformers,
            reference=True),
)
_LIB = (Backend("transformers", "transformers' implementation (its fused kernels when installed)", requires_transformers,
                reference=True),)


def _checkpoint_factory(config: MixerConfig, backend: str, **kw) -> HFCausalLM:
    raise spec_Unsupported("the checkpoint entry loads a model directory: set level: checkpoint and model: DIR")

SPECS = (
    ArchSpec(
        name="hf_llama", family="full/softmax",
        description="transformers LlamaForCausalLM: RoPE, GQA softmax attention, SwiGLU MLPs (Touvron et al., 2023)",
        paper="https://arxiv.org/abs/2302.13971",
        complexity=Complexity("O(T^2 d)", "O(T d)", "O(T d) per token", "O(T d) KV cache"),
        backends=_ATTN, factory=_llama, level="model", tags=("hf",), time_exponent=2.0,
    ),
    ArchSpec(
        name="hf_mamba2", family="ssm/ssd",
        description="transformers Mamba2ForCausalLM: the SSD stack (Dao & Gu, 2024)",
        paper="https://arxiv.org/abs/2405.21060",
        complexity=Complexity("O(T d N)", "O(T d)", "O(d N) per token", "O(d N) fixed"),
        backends=_LIB, factory=lambda cfg, backend, **kw: _mamba2(cfg, backend, **kw), level="model", tags=("hf",),
    ),
    ArchSpec(
        name="hf_jamba", family="hybrid/inter-layer",
        description="transformers JambaForCausalLM: Mamba layers, one attention layer in four, MoE MLPs (Lieber et al., 2024)",
        paper="https://arxiv.org/abs/2403.19887",
        complexity=Complexity("O(T^2 d / 4 + T d N)", "O(T d)", "O(T d / 4) per token", "O(T d / 4) KV + fixed SSM"),
        backends=_ATTN, factory=_jamba, level="model", tags=("hf",),
    ),
    ArchSpec(
        name="hf_qwen3_next", family="hybrid/inter-layer",
        description="transformers Qwen3NextForCausalLM: gated DeltaNet layers, one gated softmax attention layer in four, MoE MLPs (Qwen3-Next, 2025)",
        paper="https://qwenlm.github.io/blog/qwen3_next/",
        complexity=Complexity("O(T^2 d / 4 + T d^2)", "O(T d)", "O(T d / 4) per token", "O(T d / 4) KV + fixed delta state"),
        backends=_ATTN, factory=_qwen3_next, level="model", tags=("hf",),
    ),
    ArchSpec(
        name="hf_falcon_h1", family="hybrid/intra-layer",
        description="transformers FalconH1ForCausalLM: attention and Mamba2 heads side by side in every layer (Falcon-H1, 2025)",
        paper="https://arxiv.org/abs/2507.22448",
        complexity=Complexity("O(T^2 d + T d N)", "O(T d)", "O(T d) per token", "O(T d) KV + fixed SSM"),
        backends=_ATTN, factory=_falcon_h1, level="model", tags=("hf",), time_exponent=2.0,
    ),
    ArchSpec(
        name="hf_granite_hybrid", family="hybrid/inter-layer",
        description="transformers GraniteMoeHybridForCausalLM: Mamba2 layers, one attention layer in four, MoE MLPs (Granite-4.0-H, 2025)",
        paper="https://www.ibm.com/granite/docs/models/granite",
        complexity=Complexity("O(T^2 d / 4 + T d N)", "O(T d)", "O(T d / 4) per token", "O(T d / 4) KV + fixed SSM"),
        backends=_ATTN, factory=_granite_hybrid, level="model", tags=("hf",),
    ),
    ArchSpec(
        name="hf_lfm2", family="hybrid/inter-layer",
        description="transformers Lfm2ForCausalLM: gated short-convolution layers, one GQA attention layer in three (LFM2, Liquid AI, 2025)",
        paper="https://arxiv.org/abs/2511.23404",
        complexity=Complexity("O(T^2 d / 3 + T d k)", "O(T d)", "O(T d / 3) per token", "O(T d / 3) KV + fixed conv window"),
        backends=_ATTN, factory=_lfm2, level="model", tags=("hf",),
    ),
    ArchSpec(
        name="hf_kimi_linear", family="hybrid/inter-layer",
        description="transformers KimiLinearForCausalLM: Kimi Delta Attention layers, one MLA layer in four, MoE MLPs (Kimi Linear, 2025)",
        paper="https://arxiv.org/abs/2510.26692",
        complexity=Complexity("O(T^2 d / 4 + T d^2)", "O(T d)", "O(T d / 4) per token", "O(T r / 4) latent KV + fixed KDA state"),
        backends=_ATTN, factory=_kimi_linear, level="model", tags=("hf",),
    ),
    ArchSpec(
        name="checkpoint", family="checkpoint",
        description="a pretrained transformers checkpoint (level: checkpoint, model: DIR or ORG/NAME), loaded with AutoModelForCausalLM",
        paper="https://huggingface.co/docs/transformers",
        complexity=Complexity("the model's", "the model's", "the model's", "the model's cache"),
        backends=(Backend("transformers", "the attention implementation transformers picks for the checkpoint", requires_transformers),
                  *_ATTN),
        factory=_checkpoint_factory, level="checkpoint", tags=("hf", "checkpoint"),
    ),
)  # fmt: skip
