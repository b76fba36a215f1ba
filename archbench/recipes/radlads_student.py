"""The RADLADS student (Goldstein et al., 2025, arXiv 2505.03005): a copy of a Llama/Qwen2-style
teacher with every self-attention module replaced by a recurrent mixer initialised from it
(``archbench.recipes.students``), its recurrent decode, and its checkpoint.

``convert`` deep-copies the teacher (embeddings, MLPs, norms and head stay the teacher's, as
copies) and swaps each ``self_attn`` for a ``StudentAttention``, drawing the mixers' new
parameters from ``seed``. ``RadladsStudent`` maps ids to logits; for the recurrent kinds it also
decodes: ``prefill(ids) -> (logits, state)`` runs the chunked form and keeps each layer's final
state, ``step(ids_t, state)`` runs one token, and the state (one fp32 [B, H, D, D] matrix per
layer) does not grow with the context. ``save_student`` writes ``student.safetensors`` and
``student.json``; ``load_student`` rebuilds the student from them to identical outputs.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from archbench.recipes.speed import CachedDecode
from archbench.recipes.students import KINDS, StudentAttention, make_student_attention


class RadladsError(ValueError):
    """A bad RADLADS configuration or teacher."""


def _layers(model: nn.Module) -> nn.ModuleList | None:
    return getattr(getattr(model, "base_model", model), "layers", None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama/Qwen2-style causal LM, each with ``self_attn.{q,k,v,o}_proj``."""
    layers = _layers(model)
    ok = layers is not None and all(
        all(hasattr(getattr(layer, "self_attn", None), p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        for layer in layers
    )
    if not ok:
        raise RadladsError(f"radlads: {type(model).__name__} is not a Llama/Qwen2-style causal LM "
                           "(needs model.layers[i].self_attn with q_proj, k_proj, v_proj, o_proj)")  # fmt: skip
    return layers


class RadladsStudent(CachedDecode, nn.Module):
    """The converted model: ``forward(ids) -> logits``, and for the recurrent kinds
    ``prefill(ids) -> (logits, state)`` and ``step(ids_t, state) -> (logits_t, state)``."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    @property
    def attentions(self) -> list[StudentAttention]:
        return [layer.self_attn for layer in _layers(self.model)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    # -- recurrent decode -------------------------------------------------------------------

    def _run(self, ids: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        attns = self.attentions
        if not attns[0].recurrent:
            raise RadladsError(f"radlads: student kind {self.kind!r} has no recurrent decode")
        pos = 0 if state is None else int(state["pos"])
        position_ids = torch.arange(pos, pos + ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        try:
            for i, a in enumerate(attns):
                a.carry, a.state = True, None if state is None else state["layers"][i]
            logits = self.model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
            layers = [a.state for a in attns]
        finally:
            for a in attns:
                a.carry, a.state = False, None
        return logits, {"layers": layers, "pos": pos + ids.shape[1]}

    @staticmethod
    def state_nbytes(state: dict) -> int:
        """Bytes held by a decode state (what ``prefill``/``step`` return)."""
        return sum(s.numel() * s.element_size() for s in state["layers"])

    def state_bytes(self, batch: int, seq_len: int) -> int:
        """Analytic decode-state bytes: per layer an fp32 [B, H, D, D] matrix, whatever ``seq_len``."""
        return sum(math.prod(a.mixer.state_shape(batch)) * 4 for a in self.attentions if a.recurrent)


def convert(teacher: nn.Module, kind: str, seed: int = 0) -> RadladsStudent:
    """The student: a copy of ``teacher`` with every self-attention replaced by a ``kind`` mixer
    initialised from it (new parameters drawn from ``seed``)."""
    if kind not in KINDS:
        raise RadladsError(f"radlads: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    model = copy.deepcopy(teacher)
    torch.manual_seed(seed)
    for layer in decoder_layers(model):
        layer.self_attn = make_student_attention(kind, layer.self_attn, model.config)
    model.train(teacher.training)
    return RadladsStudent(model, kind)


def save_student(student: RadladsStudent, out_dir: Path, config) -> None:
    """``student.safetensors`` (the converted model's weights) and ``student.json`` (its kind, the
    transformers config and ``config.to_dict()``, the recipe's settings) in ``out_dir``."""
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(student.model, str(out_dir / "student.safetensors"))
    meta = {"kind": student.kind, "hf_config": student.model.config.to_dict(), "config": config.to_dict()}
    (out_dir / "student.json").write_text(json.dumps(meta, indent=2, default=str))


def load_student(out_dir: str | Path) -> RadladsStudent:
    """Rebuild the student saved by ``run`` (or ``save_student``) in ``out_dir``."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    meta_path = out_dir / "student.json"
    if not meta_path.is_file():
        raise RadladsError(f"radlads: no student.json in {out_dir}; pass the out_dir of a finished radlads run")
    meta = json.loads(meta_path.read_text())
    hf = dict(meta["hf_config"])
    cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    shell = AutoModelForCausalLM.from_config(cfg)
    student = convert(shell, meta["kind"])
    load_model(student.model, str(out_dir / "student.safetensors"))
    return student.eval()
