"""The bridged model of the LLM Modules recipe (arXiv 2502.08213): a frozen big LM's last hidden
states feed a small causal LM through a trainable bridge (pre-projection, a straight projection,
an MLP adapter and gated cross-attention layers; ``archbench.recipes.bridge`` states the
formulas), and the plain small LM that the distillation baseline trains.

``BridgedLM`` keeps the big model as a frozen submodule in eval mode; ``save_student`` writes
only the trainable weights (tied tensors once, the others named as aliases of it) and
``read_student`` reads them back with the aliases restored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention with queries from the small stream [B, T, d] and keys / values from the
    big states [B, T, D]; ``causal`` masks keys after the query's position."""

    def __init__(self, d_big: int, d_small: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.norm_q, self.norm_kv = nn.LayerNorm(d_small), nn.LayerNorm(d_big)
        self.q = nn.Linear(d_small, d_small)
        self.k = nn.Linear(d_big, d_small)
        self.v = nn.Linear(d_big, d_small)
        self.out = nn.Linear(d_small, d_small)

    def forward(self, h: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        B, T, d = h.shape
        heads = lambda x: x.view(B, x.shape[1], self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        kv = self.norm_kv(big)
        q, k, v = heads(self.q(self.norm_q(h))), heads(self.k(kv)), heads(self.v(kv))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class Adapter(nn.Module):
    """Bottleneck d -> r d -> d with GELU, a LayerNorm on the update, and a residual."""

    def __init__(self, d: int, ratio: float):
        super().__init__()
        inner = max(1, int(round(d * ratio)))
        self.down, self.up, self.norm = nn.Linear(d, inner), nn.Linear(inner, d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.up(F.gelu(self.down(x))))


class GatedCrossLayer(nn.Module):
    """An enhanced cross-attention layer: attention, adapter, then a sigmoid gate that mixes the
    attended value ``a`` with the incoming stream ``h``."""

    def __init__(self, d_big: int, d_small: int, n_heads: int, adapter_ratio: float, causal: bool):
        super().__init__()
        self.attn = CrossAttention(d_big, d_small, n_heads, causal)
        self.adapter = Adapter(d_small, adapter_ratio)
        self.gate = nn.Linear(2 * d_small, d_small)

    def mix(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``g * a + (1 - g) * h`` with ``g = sigmoid(W [h; a] + b)``: g = 1 keeps a, g = 0 keeps h."""
        g = torch.sigmoid(self.gate(torch.cat([h, a], dim=-1)))
        return g * a + (1 - g) * h

    def forward(self, h: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return self.mix(h, self.adapter(self.attn(h, big)))


class Bridge(nn.Module):
    """Big hidden states [B, T, D] -> input embeddings of the small model [B, T, d]."""

    def __init__(self, d_big: int, d_small: int, n_heads: int, n_layers: int, mid_ratio: float,
                 adapter_ratio: float, causal: bool):  # fmt: skip
        super().__init__()
        mid = max(1, int(round(d_big * mid_ratio)))
        self.pre = nn.Linear(d_big, d_big)
        self.direct = nn.Linear(d_big, d_small)
        self.mlp = nn.Sequential(nn.Linear(d_big, mid), nn.LayerNorm(mid), nn.GELU(), nn.Linear(mid, d_small),
                                 nn.LayerNorm(d_small))  # fmt: skip
        self.layers = nn.ModuleList(
            GatedCrossLayer(d_big, d_small, n_heads, adapter_ratio, causal) for _ in range(n_layers)
        )

    def forward(self, big: torch.Tensor) -> torch.Tensor:
        p = self.pre(big)
        h = self.mlp(p)
        for layer in self.layers:
            h = h + layer(h, p)
        return h + self.direct(p)


class BridgedLM(nn.Module):
    """Frozen big LM -> bridge -> small LM: ``forward(ids) -> logits``. The big model is a
    submodule (it moves with ``.to``) but is frozen, always in eval mode, and never saved."""

    def __init__(self, big: nn.Module, small: nn.Module, bridge: Bridge):
        super().__init__()
        self.big, self.small, self.bridge = big, small, bridge
        self.big.requires_grad_(False)
        self.big.eval()

    def train(self, mode: bool = True) -> "BridgedLM":
        super().train(mode)
        self.big.eval()
        return self

    @torch.no_grad()
    def big_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.big.base_model(input_ids=ids, use_cache=False).last_hidden_state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.bridge(self.big_hidden(ids))
        return self.small(inputs_embeds=embeds, use_cache=False).logits


class DistilledLM(nn.Module):
    """The small LM alone, reading byte ids through its own embeddings: ``forward(ids) -> logits``."""

    def __init__(self, small: nn.Module):
        super().__init__()
        self.small = small

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.small(input_ids=ids, use_cache=False).logits


def save_student(model: nn.Module, path: Path, meta: dict) -> None:
    """The trainable weights (the frozen big model is left out; tied tensors are stored once and
    named as aliases) as ``model.safetensors``, and ``meta`` as ``student.json``."""
    from safetensors.torch import save_file

    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        if name.startswith("big."):
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous().clone()
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
    (path / "student.json").write_text(json.dumps(meta, indent=2))


def read_student(path: Path) -> dict[str, torch.Tensor]:
    """The tensors ``save_student`` wrote to ``path``, aliases restored (big model's weights absent)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    return tensors
