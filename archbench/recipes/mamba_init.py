"""Mamba2 mixers initialised from attention, as in "The Mamba in the Llama" (Wang et al., arXiv 2408.15237).

Linear attention drops the softmax: y_t = sum_{s<=t} (q_t . k_s) v_s. Mamba2's SSD recurrence
(``archbench.ops.ssd``) computes y_t = sum_{s<=t} (C_t . B_s) exp(a_{s+1} + ... + a_t) dt_s x_s + D x_t,
i.e. linear attention with C as the query, B as the key, x as the value, a data-dependent scalar
decay per head and a step dt. A trained attention layer therefore hands Mamba2 its projections:

    x <- v_proj,   B <- k_proj,   C <- q_proj,   out <- o_proj

(biases too where the teacher has them, e.g. Qwen2), and only the parts attention lacks are new:
a gate projection z (``z_proj``, default init) applied as y * SiLU(z) before a per-head RMSNorm, a
per-head step projection (``dt_proj``, zero init, so dt starts at softplus(dt_bias)), dt_bias =
inverse-softplus of steps drawn log-uniformly in [1e-3, 0.1], A_log = log(1..H) (the S4D-real
ladder 1, 2, ... over the H heads: Mamba2's A is one scalar per head), D = 1, and a depthwise causal
convolution (kernel 4) with SiLU over the (C, B, x) channels. The convolution starts as the
identity (last tap 1, others 0) so that the converted layer begins as gated linear attention over
the teacher's exact projections; this is our choice, the paper does not pin it down.

Head mapping (GQA). The teacher has H query heads and G <= H key/value heads of size P; Mamba2 runs
H heads with head dim P and state size N = P. Head h reads C_h = q_h and, as in ``repeat_kv`` of
transformers, the key/value head g = h // (H / G): B_h = k_g, x_h = v_g. The convolution runs on
the un-repeated G-head B and x channels; the repeat happens after it, so repeated heads stay tied
exactly as in the teacher. ``ssd`` gets one group per head (B and C both [B, T, H, N]).

RoPE is not used (the SSM's decay carries position), nor is the attention mask: batches are
unpadded. The state of a converted layer for decode is H * N * P values plus the conv window,
whatever the context length; ``step`` is the recurrent form of ``forward`` (tests compare them).

``MixerAsAttention`` wraps a mixer so it slots into a transformers decoder layer in place of
``self_attn``: it takes the attention module's inputs (hidden_states plus whatever keywords the
layer passes) and returns a tuple shaped like the attention module's output.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archbench.mixers.common import HeadRMSNorm, ShortConv
from archbench.ops.ssd import ssd, ssd_step
from archbench.recipes.speculative import attention_arity, decoder_layers, pack_attention_output


def inverse_softplus_dt(
    n: int, dt_min: float = 1e-3, dt_max: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Biases b with softplus(b) = dt, dt drawn log-uniformly in [dt_min, dt_max]."""
    u = torch.rand(n, generator=generator)
    dt = torch.exp(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))
    return dt + torch.log(-torch.expm1(-dt))


class MambaInLlamaMixer(nn.Module):
    """A Mamba2 (SSD) token mixer whose x, B, C and output maps come from an attention layer."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, conv_kernel: int = 4,
                 chunk_size: int = 64, qkv_bias: bool = False, o_bias: bool = False, backend: str = "torch"):  # fmt: skip
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.chunk_size, self.backend = chunk_size, backend
        H, G, P = n_heads, n_kv_heads, head_dim
        self.C_proj = nn.Linear(d_model, H * P, bias=qkv_bias)  # <- q_proj
        self.B_proj = nn.Linear(d_model, G * P, bias=qkv_bias)  # <- k_proj
        self.x_proj = nn.Linear(d_model, G * P, bias=qkv_bias)  # <- v_proj
        self.z_proj = nn.Linear(d_model, H * P, bias=False)  # new gate
        self.dt_proj = nn.Linear(d_model, H, bias=False)  # new per-head step, zero init
        self.conv = ShortConv(H * P + 2 * G * P, conv_kernel, activation=True, bias=True)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(H))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = HeadRMSNorm(P)
        self.out_proj = nn.Linear(H * P, d_model, bias=o_bias)  # <- o_proj
        with torch.no_grad():
            self.dt_proj.weight.zero_()
            self.conv.conv.weight.zero_()
            self.conv.conv.weight[:, 0, -1] = 1.0
            self.conv.conv.bias.zero_()

    def settings(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim, "conv_kernel": self.conv.kernel, "chunk_size": self.chunk_size,
                "qkv_bias": self.C_proj.bias is not None, "o_bias": self.out_proj.bias is not None}  # fmt: skip

    @classmethod
    def from_attention(cls, attn: nn.Module, n_heads: int, n_kv_heads: int, head_dim: int, conv_kernel: int = 4,
                       chunk_size: int = 64) -> "MambaInLlamaMixer":  # fmt: skip
        """A mixer with x <- v_proj, B <- k_proj, C <- q_proj, out <- o_proj copied from ``attn``."""
        d_model = attn.q_proj.in_features
        mixer = cls(d_model, n_heads, n_kv_heads, head_dim, conv_kernel, chunk_size,
                    qkv_bias=attn.q_proj.bias is not None, o_bias=attn.o_proj.bias is not None)  # fmt: skip
        pairs = ((mixer.C_proj, attn.q_proj), (mixer.B_proj, attn.k_proj), (mixer.x_proj, attn.v_proj),
                 (mixer.out_proj, attn.o_proj))  # fmt: skip
        w = attn.q_proj.weight
        mixer.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for new, old in pairs:
                if new.weight.shape != old.weight.shape:
                    raise ValueError(f"attention projection shape {tuple(old.weight.shape)} does not match the mixer's "
                                     f"{tuple(new.weight.shape)}; check n_heads / n_kv_heads / head_dim")  # fmt: skip
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
        return mixer

    # ---- shared pieces of the parallel and recurrent forms ------------------------------------

    def _xbc(self, u: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.C_proj(u), self.B_proj(u), self.x_proj(u)], dim=-1)

    def _ssm_inputs(self, xbc: torch.Tensor, u: torch.Tensor):
        """Conv'd channels [..., H P + 2 G P] -> x [..., H, P], dt [..., H], B, C [..., H, N] (heads repeated)."""
        H, G, P = self.n_heads, self.n_kv_heads, self.head_dim
        Cm, Bm, x = xbc.split([H * P, G * P, G * P], dim=-1)
        rep = H // G
        Cm = Cm.unflatten(-1, (H, P))
        Bm = Bm.unflatten(-1, (G, P)).repeat_interleave(rep, dim=-2)
        x = x.unflatten(-1, (G, P)).repeat_interleave(rep, dim=-2)
        dt = F.softplus((self.dt_proj(u) + self.dt_bias).float())
        return x, dt, Bm, Cm

    def _out(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        z = self.z_proj(u).unflatten(-1, (self.n_heads, self.head_dim))
        return self.out_proj(self.norm(y * F.silu(z)).flatten(-2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Parallel (chunked SSD) form: u [B, T, d_model] -> [B, T, d_model]."""
        x, dt, Bm, Cm = self._ssm_inputs(self.conv(self._xbc(u)), u)
        A = -torch.exp(self.A_log.float())
        y, _ = ssd(x, dt, A, Bm, Cm, D=self.D.float(), chunk_size=self.chunk_size, backend=self.backend)
        return self._out(y, u)

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The parallel form from an empty state, and the decode state it leaves: u [B, T, d_model] ->
        (y, {"conv": the last kernel-1 conv inputs, "ssm": the final SSD state})."""
        xbc = self._xbc(u)
        x, dt, Bm, Cm = self._ssm_inputs(self.conv(xbc), u)
        A = -torch.exp(self.A_log.float())
        y, ssm = ssd(x, dt, A, Bm, Cm, D=self.D.float(), output_final_state=True, chunk_size=self.chunk_size,
                     backend=self.backend)  # fmt: skip
        K = self.conv.kernel - 1
        tail = xbc[:, -K:].transpose(1, 2) if K else xbc[:, :0].transpose(1, 2)
        conv = F.pad(tail, (K - tail.shape[-1], 0))  # oldest first, zeros before the sequence start
        return self._out(y, u), {"conv": conv.contiguous(), "ssm": ssm.float()}

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        w = self.C_proj.weight
        N = P = self.head_dim
        return {"conv": self.conv.init_state(batch), "ssm": w.new_zeros(batch, self.n_heads, N, P, dtype=torch.float32)}

    def step(self, u_t: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Recurrent form for decode: u_t [B, d_model] -> ([B, d_model], new state)."""
        xbc, conv = self.conv.step(self._xbc(u_t), state["conv"])
        x, dt, Bm, Cm = self._ssm_inputs(xbc, u_t)
        A = -torch.exp(self.A_log.float())
        y, ssm = ssd_step(x, dt, A, Bm, Cm, state["ssm"], D=self.D.float())
        return self._out(y, u_t), {"conv": conv, "ssm": ssm}


class MixerAsAttention(nn.Module):
    """A token mixer in an attention module's place: HF attention inputs in, its output tuple out."""

    def __init__(self, mixer: nn.Module, arity: int):
        super().__init__()
        self.mixer = mixer
        self.arity = arity

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return pack_attention_output(self.mixer(hidden_states), self.arity)


def attention_shape(config) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) of a transformers Llama/Qwen2-style config."""
    H = config.num_attention_heads
    G = getattr(config, "num_key_value_heads", None) or H
    P = getattr(config, "head_dim", None) or config.hidden_size // H
    return H, G, P


def convert(
    teacher: nn.Module, layers: Sequence[int], conv_kernel: int = 4, chunk_size: int = 64, seed: int = 0
) -> nn.Module:
    """A copy of ``teacher`` whose attention in ``layers`` is replaced by Mamba-in-Llama mixers."""
    n = len(decoder_layers(teacher))
    layers = sorted(set(int(i) for i in layers))
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers {bad} out of range; the teacher has layers 0..{n - 1}")
    arity = attention_arity(teacher)
    student = copy.deepcopy(teacher)
    H, G, P = attention_shape(teacher.config)
    blocks = decoder_layers(student)
    with torch.random.fork_rng(devices=[]):  # new parameters from ``seed``; the caller RNG is untouched
        torch.manual_seed(seed)
        for i in layers:
            mixer = MambaInLlamaMixer.from_attention(blocks[i].self_attn, H, G, P, conv_kernel, chunk_size)
            blocks[i].self_attn = MixerAsAttention(mixer, arity)
    return student


def replaced_mixers(student: nn.Module) -> dict[int, MambaInLlamaMixer]:
    """The converted layers of a student, by layer index."""
    return {i: layer.self_attn.mixer for i, layer in enumerate(decoder_layers(student))
            if isinstance(layer.self_attn, MixerAsAttention)}  # fmt: skip


def save_student(student: nn.Module, out_dir: Path, name: str, extra: dict | None = None) -> Path:
    """Writes ``name.safetensors`` (the state dict) and ``name.json`` (how to rebuild it)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mixers = replaced_mixers(student)
    settings = next(iter(mixers.values())).settings() if mixers else {}
    meta = {"model_type": student.config.model_type, "config": student.config.to_dict(), "layers": sorted(mixers),
            "mixer": {"conv_kernel": settings.get("conv_kernel", 4), "chunk_size": settings.get("chunk_size", 64)},
            **(extra or {})}  # fmt: skip
    state = {k: v.detach().cpu().clone().contiguous() for k, v in student.state_dict().items()}  # tied weights: cloned
    path = out_dir / f"{name}.safetensors"
    save_file(state, str(path))
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_saved_student(out_dir: Path, name: str) -> nn.Module:
    """Rebuilds a student written by ``save_student`` (weights loaded strictly, eval mode)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    meta_path = out_dir / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no student {name!r} in {out_dir} (missing {meta_path.name}); run the recipe first")
    meta = json.loads(meta_path.read_text())
    cfg = {k: v for k, v in meta["config"].items() if k != "model_type"}
    config = AutoConfig.for_model(meta["model_type"], **cfg)
    model = AutoModelForCausalLM.from_config(config)
    H, G, P = attention_shape(config)
    arity = attention_arity(model)
    blocks = decoder_layers(model)
    for i in meta["layers"]:
        old = blocks[i].self_attn
        mixer = MambaInLlamaMixer(config.hidden_size, H, G, P, meta["mixer"]["conv_kernel"], meta["mixer"]["chunk_size"],
                                  qkv_bias=old.q_proj.bias is not None, o_bias=old.o_proj.bias is not None)  # fmt: skip
        blocks[i].self_attn = MixerAsAttention(mixer, arity)
    state = load_file(str(out_dir / f"{name}.safetensors"))
    model.load_state_dict(state, strict=True)
    w = next(iter(state.values()))
    return model.to(w.dtype).eval()
