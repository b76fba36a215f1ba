"""Cached prefill and decode for a transformer whose attention layers are partly replaced
(the RAD / Mamba-in-Llama hybrids of ``archbench.recipes.redundancy``).

A hybrid keeps k of its L attention layers' weights as Mamba2 mixers and the other L - k as
softmax attention. Its decode state is therefore two things per layer: a KV cache that grows by
one token per step in the attention layers, and a fixed-size (conv window, SSD state) pair in the
converted ones. transformers' own cache cannot hold the second kind (and reads the sequence
length from layer 0, which may be converted), so this driver runs the decoder itself, layer by
layer, for Llama / Qwen2-style models (``model.model.{embed_tokens, layers, norm, rotary_emb}``,
each layer ``input_layernorm -> self_attn -> post_attention_layernorm -> mlp``):

    x = embed(ids)
    for each layer:  x = x + mixer(norm1(x));  x = x + mlp(norm2(x))
    logits = lm_head(norm(x))

where an attention layer computes q, k, v with the teacher's projections, applies RoPE at the
absolute positions, appends k, v to its cache and attends with SDPA (GQA by repeating k, v),
and a converted layer runs its mixer's ``prefill`` (parallel form, returning its state) or
``step``. ``prefill(ids)`` and ``step(ids_t, state)`` follow the interface ``recipes.speed.lm_speed``
times. Checked against the model's own forward: the logits of a prefill, and of a prefill
followed by steps, equal ``model(ids).logits`` (tests/test_recipe_hybrid_decode.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.recipes.mamba_init import MixerAsAttention
from archbench.recipes.speed import CachedDecode
from archbench.recipes.students import rotate

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class HybridDecoder(CachedDecode, nn.Module):
    """``prefill(ids) -> (logits, state)`` and ``step(ids_t, state) -> (logits_t, state)`` for a
    Llama/Qwen2-style causal LM whose ``self_attn`` modules are attention or ``MixerAsAttention``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        base = getattr(model, "model", None)
        ok = base is not None and all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
        ok = ok and hasattr(model, "lm_head") and all(all(hasattr(lay, p) for p in _LAYER_PARTS) for lay in base.layers)
        if not ok:
            raise ValueError(f"HybridDecoder needs a Llama/Qwen2-style causal LM (model.model.layers with "
                             f"{', '.join(_LAYER_PARTS)}); got {type(model).__name__}")  # fmt: skip
        self.model = model
        c = model.config
        self.n_heads = int(c.num_attention_heads)
        self.n_kv_heads = int(getattr(c, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // self.n_heads)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def converted(self) -> list[int]:
        return [i for i, lay in enumerate(self.layers) if isinstance(lay.self_attn, MixerAsAttention)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.prefill(ids)[0]

    # ---- one attention layer with a KV cache -------------------------------------------------

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos, sin, cache, past: int):
        B, T, _ = x.shape
        D = self.head_dim
        q = attn.q_proj(x).view(B, T, -1, D)
        k = attn.k_proj(x).view(B, T, -1, D)
        v = attn.v_proj(x).view(B, T, -1, D)
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2)  # [B, heads, T, D]
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        rep = self.n_heads // self.n_kv_heads
        kr, vr = (k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)) if rep > 1 else (k, v)
        S = k.shape[2]
        if T == 1:
            mask = None  # one query sees every cached key
        else:  # query i (absolute past + i) sees keys 0 .. past + i
            mask = torch.arange(S, device=x.device)[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
        scale = getattr(attn, "scaling", D**-0.5)
        o = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=scale)
        return attn.o_proj(o.transpose(1, 2).reshape(B, T, -1)), (k, v)

    # ---- the decoder ------------------------------------------------------------------------

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        base = self.model.model
        past = 0 if state is None else int(state["pos"])
        T = ids.shape[1]
        x = base.embed_tokens(ids)
        positions = torch.arange(past, past + T, device=ids.device)[None].expand(ids.shape[0], -1)
        cos, sin = base.rotary_emb(x, positions)
        new_layers = []
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            prev = None if state is None else state["layers"][i]
            if isinstance(layer.self_attn, MixerAsAttention):
                mixer = layer.self_attn.mixer
                if prev is None:
                    y, s = mixer.prefill(h)
                else:  # continue a state token by token
                    ys = []
                    for t in range(T):
                        y_t, prev = mixer.step(h[:, t], prev)
                        ys.append(y_t)
                    y, s = torch.stack(ys, dim=1), prev
            else:
                y, s = self._attention(layer.self_attn, h, cos, sin, prev, past)
            x = x + y
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new_layers.append(s)
        logits = self.model.lm_head(base.norm(x))
        return logits, {"layers": new_layers, "pos": past + T}

    @staticmethod
    def state_nbytes(state: dict) -> dict[str, int]:
        """Bytes of a decode state: ``kv`` (the attention layers' caches), ``ssm`` (the converted layers'
        conv windows and SSD states) and ``total``."""
        kv = ssm = 0
        for s in state["layers"]:
            if isinstance(s, dict):
                ssm += sum(t.numel() * t.element_size() for t in s.values())
            else:
                kv += sum(t.numel() * t.element_size() for t in s)
        return {"kv": kv, "ssm": ssm, "total": kv + ssm}
