"""Self-speculative decoding with attention-layer skipping: the signal RAD uses to find redundant layers.

Self-speculative decoding (Zhang et al., 2023, "Draft & Verify") drafts with a cheaper copy of
the model itself and verifies with the full model. Here the draft is the teacher with the
attention sublayers of a skip mask x in {0, 1}^L removed: in a pre-norm block
``h <- h + Attn(norm(h)); h <- h + MLP(norm(h))`` a skipped layer contributes zero to the
residual stream, while its MLP still runs. The greedy draft-then-verify loop is

1. draft: starting from the accepted sequence s, the skipped model proposes d_1..d_k greedily;
2. verify: one parallel pass of the full model over s + d_1..d_k gives its own greedy choice
   t_1..t_{k+1} at every drafted position (and one past the last);
3. accept the longest prefix with d_i = t_i (a tokens), then append t_{a+1}: the full model's
   correction at the first disagreement, or a free bonus token when all k agreed.

Every round emits a + 1 >= 1 tokens, all of them the full model's greedy choices, so the output
is exactly plain greedy decoding of the full model (the test checks it) and only the speed
depends on the mask. The acceptance rate a / k measures how well the skipped model imitates the
full one; RAD (arXiv 2505.22135) uses the resulting throughput to rank attention layers by
redundancy: a layer whose removal barely moves the greedy choices is one a cheap mixer can
replace.

Caching. Neither pass keeps a KV cache: the draft recomputes its prefix at every step and the
verify pass recomputes the whole sequence. Teachers here are tiny and a cache for a model whose
layers come and go is version-fragile in transformers (skipped layers would leave holes in it);
plain greedy decoding (``greedy_generate``) recomputes too, so measured tokens/s compare like
with like. Acceptance rate does not depend on this choice and is the primary, noise-free score.

Skipping swaps the chosen ``self_attn`` modules for ``ZeroAttention`` inside a context manager.
Attention modules return a tuple whose length changed across transformers releases ((out,
weights) in 4.48+ and 5.x, (out, weights, cache) before), so the length is probed once per model
with a forward hook and the stand-in returns zeros plus ``None`` for the rest.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

_ARITY: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (Llama, Qwen2, Mistral ... all keep them at
    ``model.base_model.layers``), each with a ``self_attn`` submodule."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise ValueError(
            f"{type(model).__name__} has no decoder layers with self_attn; use a Llama/Qwen2-style causal LM"
        )
    return layers


def attention_arity(model: nn.Module) -> int:
    """How many values this model's attention modules return (probed once with a tiny forward)."""
    if model in _ARITY:
        return _ARITY[model]
    seen: list[int] = []
    attn = decoder_layers(model)[0].self_attn
    handle = attn.register_forward_hook(lambda mod, args, out: seen.append(len(out) if isinstance(out, tuple) else 1))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False)
    finally:
        handle.remove()
    _ARITY[model] = seen[0]
    return seen[0]


def pack_attention_output(out: torch.Tensor, arity: int):
    """``out`` shaped like what the model's attention modules return."""
    return out if arity == 1 else (out,) + (None,) * (arity - 1)


class ZeroAttention(nn.Module):
    """Stands in for a skipped attention sublayer: contributes nothing to the residual stream."""

    def __init__(self, arity: int):
        super().__init__()
        self.arity = arity

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return pack_attention_output(torch.zeros_like(hidden_states), self.arity)


@contextmanager
def skip_attention(model: nn.Module, skip: Iterable[int]) -> Iterator[nn.Module]:
    """Within the block, the attention sublayers of the layers in ``skip`` are skipped."""
    layers = decoder_layers(model)
    skip = sorted(set(int(i) for i in skip))
    bad = [i for i in skip if not 0 <= i < len(layers)]
    if bad:
        raise ValueError(f"skip layers {bad} out of range; the model has layers 0..{len(layers) - 1}")
    if not skip:
        yield model
        return
    arity = attention_arity(model)
    saved = {i: layers[i].self_attn for i in skip}
    try:
        for i in skip:
            layers[i].self_attn = ZeroAttention(arity)
        yield model
    finally:
        for i, attn in saved.items():
            layers[i].self_attn = attn


def _logits(model: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    return model(input_ids=seq[None], use_cache=False).logits[0]


@torch.no_grad()
def greedy_generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Plain greedy decoding of the full model (cache-free, as the speculative loop): prompt [T] -> [T + new]."""
    seq = prompt.clone()
    for _ in range(new_tokens):
        seq = torch.cat([seq, _logits(model, seq)[-1].argmax()[None]])
    return seq


@dataclass
class SpecStats:
    """What one or more speculative generations cost and achieved."""

    generated: int = 0  # tokens emitted
    drafted: int = 0  # tokens proposed by the draft
    accepted: int = 0  # of those, kept
    rounds: int = 0  # verify passes
    wall_s: float = 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 1.0

    @property
    def tokens_per_round(self) -> float:
        return self.generated / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    def add(self, other: "SpecStats") -> "SpecStats":
        return SpecStats(self.generated + other.generated, self.drafted + other.drafted,
                         self.accepted + other.accepted, self.rounds + other.rounds, self.wall_s + other.wall_s)  # fmt: skip


def _sync(t: torch.Tensor) -> None:
    """Wait for a GPU's queued work before reading the clock (a no-op on CPU)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


@torch.no_grad()
def speculative_generate(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, skip: Sequence[int], draft_len: int = 4
) -> tuple[torch.Tensor, SpecStats]:
    """Greedy self-speculative decoding: prompt [T] -> ([T + new_tokens], stats)."""
    if draft_len < 1:
        raise ValueError(f"draft_len must be >= 1, got {draft_len}")
    start = time.perf_counter()
    stats = SpecStats()
    seq = prompt.clone()
    end = len(prompt) + new_tokens
    while len(seq) < end:
        n = min(draft_len, end - len(seq))
        draft = seq
        with skip_attention(model, skip):
            for _ in range(n):
                draft = torch.cat([draft, _logits(model, draft)[-1].argmax()[None]])
        target = _logits(model, draft)[len(seq) - 1 :].argmax(-1)  # the full model's choice at each drafted slot (+1)
        proposed = draft[len(seq) :]
        agree = (proposed == target[:n]).long().cumprod(0)
        a = int(agree.sum())
        seq = torch.cat([seq, proposed[:a], target[a : a + 1]])[:end]
        stats.drafted += n
        stats.accepted += a
        stats.rounds += 1
    stats.generated = new_tokens
    _sync(seq)
    stats.wall_s = time.perf_counter() - start
    return seq, stats


def score_mask(
    model: nn.Module, prompts: Sequence[torch.Tensor], skip: Sequence[int], new_tokens: int, draft_len: int
) -> SpecStats:
    """Self-speculative decoding with ``skip`` over all ``prompts``, summed."""
    total = SpecStats()
    for p in prompts:
        total = total.add(speculative_generate(model, p, new_tokens, skip, draft_len)[1])
    return total


def greedy_tokens_per_s(model: nn.Module, prompts: Sequence[torch.Tensor], new_tokens: int) -> float:
    """Measured tokens/s of plain greedy decoding over ``prompts`` (the speedup's denominator)."""
    start = time.perf_counter()
    for p in prompts:
        _sync(greedy_generate(model, p, new_tokens))
    wall = time.perf_counter() - start
    return len(prompts) * new_tokens / wall if wall > 0 else 0.0
