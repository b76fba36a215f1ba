"""Small language models and layer stacks assembled from mixers.

A *block* is the pre-norm residual unit of modern LMs::

    h = h + mixer(norm(h));   h = h + ffn(norm(h))        (ffn: SwiGLU MLP, top-k MoE, or none)

A *stack* is a list of blocks whose mixers follow a layer pattern, e.g. ``"AMMM"`` =
one attention layer then three Mamba2 layers: this is how inter-layer hybrids (Jamba,
Samba, Zamba-like) are built, and it is itself a mixer ([B, T, D] -> [B, T, D], with a
decode ``step`` that carries one state per layer), so the bench measures it like any
other architecture. ``LM`` wraps a stack with a token embedding and a tied output head
for the accuracy tasks.

``models`` knows nothing of the registry: a stack is built from a list of mixer
factories, and the registry decides which mixer each pattern letter means.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.base import Mixer, MixerConfig


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer, 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """Top-k mixture of SwiGLU experts (Shazeer et al., 2017; Fedus et al., 2021).

    Each token is routed to its ``top_k`` experts by a softmax router; expert outputs are
    summed with the (renormalised) router weights. Tokens are grouped per expert with one
    sort, so the cost is that of the routed tokens, not of every expert on every token.
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int = 8, top_k: int = 2):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"need 1 <= top_k <= n_experts (got top_k={top_k}, n_experts={n_experts})")
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, hidden) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts = self.router(flat).softmax(-1).topk(self.top_k, dim=-1)  # [N, k]
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        token_idx = torch.arange(flat.shape[0], device=x.device).repeat_interleave(self.top_k)
        expert_idx, w = experts.reshape(-1), weights.reshape(-1)
        order = expert_idx.argsort()
        counts = torch.bincount(expert_idx, minlength=len(self.experts)).tolist()
        out = torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts):
            if n:
                sel = order[start : start + n]
                tok = token_idx[sel]
                out.index_add_(0, tok, self.experts[e](flat[tok]) * w[sel, None])
            start += n
        return out.reshape(shape)


def make_ffn(kind: str | None, d_model: int, ratio: float = 4.0, n_experts: int = 8, top_k: int = 2) -> nn.Module | None:
    """``"swiglu"``, ``"moe"`` or ``None`` (no FFN, as in Zoology's MQAR models)."""
    if kind in (None, "none"):
        return None
    hidden = max(8, int(round(d_model * ratio * 2 / 3 / 8)) * 8)  # SwiGLU's 2/3 keeps params ~ a ratio-x MLP
    if kind == "swiglu":
        return SwiGLU(d_model, hidden)
    if kind == "moe":
        return MoE(d_model, hidden, n_experts=n_experts, top_k=top_k)
    raise ValueError(f"unknown ffn {kind!r}; choose swiglu, moe or none")


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, ffn: nn.Module | None):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-6)
        self.mixer = mixer
        self.norm2 = nn.RMSNorm(d_model, eps=1e-6) if ffn is not None else None
        self.ffn = ffn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.mixer(self.norm1(h))
        if self.ffn is not None:
            h = h + self.ffn(self.norm2(h))
        return h

    def prefill(self, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.prefill(self.norm1(h))
        h = h + y
        if self.ffn is not None:
            h = h + self.ffn(self.norm2(h))
        return h, state

    def step(self, h_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.norm1(h_t), state)
        h_t = h_t + y
        if self.ffn is not None:
            h_t = h_t + self.ffn(self.norm2(h_t))
        return h_t, state


class Stack(Mixer):
    """Residual blocks over a layer pattern; a Mixer itself ([B, T, D] -> [B, T, D])."""

    def __init__(
        self,
        config: MixerConfig,
        mixers: Sequence[Mixer],
        ffn: str | None = "swiglu",
        backend: str = "reference",
        pattern: str = "",
        **ffn_kwargs,
    ):
        super().__init__()
        self.config, self.backend, self.pattern = config, backend, pattern
        self.blocks = nn.ModuleList(Block(m, config.d_model, make_ffn(ffn, config.d_model, **ffn_kwargs)) for m in mixers)
        self.norm = nn.RMSNorm(config.d_model, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def init_state(self, batch: int) -> list:
        return [b.mixer.init_state(batch) for b in self.blocks]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        states = []
        for block in self.blocks:
            x, s = block.prefill(x)
            states.append(s)
        return self.norm(x), states

    def step(self, x_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        new = []
        for block, s in zip(self.blocks, state):
            x_t, s = block.step(x_t, s)
            new.append(s)
        return self.norm(x_t), new

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return sum(int(b.mixer.state_bytes(batch, seq_len)) for b in self.blocks)


def build_stack(
    config: MixerConfig,
    pattern: str,
    factories: dict[str, Callable[[MixerConfig], Mixer]],
    ffn: str | None = "swiglu",
    backend: str = "reference",
    **ffn_kwargs,
) -> Stack:
    """A Stack whose i-th mixer is ``factories[pattern[i]](config)``."""
    unknown = sorted(set(pattern) - set(factories))
    if not pattern or unknown:
        raise ValueError(f"bad layer pattern {pattern!r}: letters must be from {''.join(sorted(factories))}")
    return Stack(config, [factories[c](config) for c in pattern], ffn=ffn, backend=backend, pattern=pattern, **ffn_kwargs)


class LM(nn.Module):
    """Token embedding -> stack -> tied output head. ``forward(ids[B, T]) -> logits[B, T, V]``."""

    def __init__(self, stack: Stack, vocab_size: int):
        super().__init__()
        self.stack = stack
        self.embed = nn.Embedding(vocab_size, stack.config.d_model)
        nn.init.normal_(self.embed.weight, std=stack.config.d_model**-0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The final normed hidden states [B, T, D] (training scores only the positions it needs)."""
        return self.stack(self.embed(ids))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., D] -> logits [..., V] through the tied embedding."""
        return h @ self.embed.weight.t()

    def init_state(self, batch: int) -> list:
        return self.stack.init_state(batch)

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, list]:
        h, state = self.stack.prefill(self.embed(ids))
        return self.head(h), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self.stack.state_bytes(batch, seq_len)

    def step(self, ids_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        h, state = self.stack.step(self.embed(ids_t), state)
        return self.head(h), state
