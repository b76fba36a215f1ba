"""The student mixers of the RADLADS conversion (Goldstein et al., 2025, arXiv 2505.03005).

Each replaces one softmax self-attention module of a transformers Llama/Qwen2-style model and
starts from its weights: the query projection becomes the receptance r (r = q), the key and value
projections stay, and grouped-query sharing is kept by repeating every key/value head for the
query heads that read it (head h uses kv head h // (H / H_kv), as the teacher does), so the
student has H heads of head size D and a per-layer state of H * D * D numbers whatever the
context length. Biases come along (Qwen2 has them on q, k, v). Only small new parameters are added,
initialised so that the memory starts close to "remember everything" (decays near 1) and the new
gates start neutral (zero down projections, small orthogonal up projections):

``rad_rwkv7``   RWKV-7's generalised delta rule (``archbench.ops.dplr``) with RoPE on r and k
                (the teacher's rotary cos/sin), no token shift and no bonus term:
                S_t = (diag(w_t) - kappa_t^T (kappa_t * a_t)) S_{t-1} + k_t^T v_t, o_t = r_t S_t,
                with log w = -e^{-0.5} sigmoid(w0 + tanh(x W1) W2), kappa = normalise(k * k_k) per
                head, an in-context learning rate a = sigmoid(a0 + x A1 A2), a per-head group norm
                and a LoRA output gate g = sigmoid(x G1) G2 (starting at 1):   y = W_o (GroupNorm(o) * g).
``rad_rwkv6``   GLA-style per-channel data-dependent decay (``archbench.ops.gla``), no RoPE:
                S_t = diag(w_t) S_{t-1} + k_t^T v_t, o_t = r_t S_t / sqrt(D), log w = -exp(w0 +
                tanh(x W1) W2), per-head group norm and a sigmoid output gate:
                y = W_o (GroupNorm(o) * sigmoid(W_g x)).
``rad_gdn``     the gated delta rule (``archbench.ops.delta_rule``) with RoPE on q and k, then
                L2-normalised q and k, a scalar decay g = -exp(A_log) softplus(x W_a + dt_bias) and a
                writing strength beta = sigmoid(x W_b + b_b) per head; o_t = q_t S_t (scale 1: a
                unit query reading a unit key returns the stored value, on the scale of the
                teacher's attention output, which averages values), a per-head RMS norm, y = W_o o.
``attention``   the teacher's own attention module, unchanged (no new parameters): the exactness
                check of the weight transfer.

Every mixer is wrapped by ``StudentAttention``, a drop-in for the transformers attention module:
``forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs) -> (out, None)``
(the return shape of ``LlamaAttention.forward`` in transformers >= 4.48; a third ``None`` where the
teacher's attention returns three values, as in 4.45-4.47; extra keyword arguments ignored). The recurrent decode does not go through transformers' cache classes: the wrapper holds
its layer's state in ``state`` while ``carry`` is on (set by ``RadladsStudent``), reads it as the
op's initial state and writes back the final one. Prefill runs the chunked op with
``initial_state``/``output_final_state``; a single token runs the op's ``*_step``, so token-by-token
generation reproduces the parallel forward. Padding masks are not supported by the recurrent
kinds (the attention mask is ignored: every sequence is read left to right from its first token).
The parallel forms call the ops with ``backend="auto"``: flash-linear-attention's kernels for CUDA
tensors when installed, the pure-PyTorch chunked references otherwise.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from archbench.ops.delta_rule import gated_delta_rule, gated_delta_rule_step, l2norm
from archbench.ops.dplr import dplr, dplr_step
from archbench.ops.gla import gla, gla_step

KINDS = ("rad_rwkv7", "rad_rwkv6", "rad_gdn", "attention")
LOG_DECAY_BOUND = math.exp(-0.5)  # RWKV-7: log w in (-e^{-0.5}, 0)
GROUPNORM_EPS = 64e-5


def lora_rank(d_model: int, factor: float = 1.8, power: float = 0.5, multiple: int = 8) -> int:
    """RWKV's low-rank heuristic factor * d**power, rounded to a multiple of ``multiple`` (at least that)."""
    return max(multiple, int(round(factor * d_model**power / multiple)) * multiple)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the transformers (rotate-half) convention: x [B, T, H, D], cos/sin [B or 1, T, D]."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _copy_linear(src: nn.Linear) -> nn.Linear:
    dst = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
    dst = dst.to(device=src.weight.device, dtype=src.weight.dtype)
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
    return dst


def _head_group_norm(o: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """Per-head group norm of o [B, T, H, D] -> [B, T, H * D]."""
    B, T, H, D = o.shape
    return norm(o.reshape(B * T, H * D)).view(B, T, H * D)


class LinearStudent(nn.Module):
    """Shared parts of the recurrent students: the teacher's projections, GQA repetition, RoPE, decode dispatch."""

    rope: bool = True
    backend: str = "auto"  # the ops' backend: fla's Triton kernels on CUDA when installed, else the torch reference

    def __init__(self, attn: nn.Module, config):
        super().__init__()
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(attn, "head_dim", 0) or config.hidden_size // self.n_heads)
        self.d_model = int(config.hidden_size)
        self.q_proj, self.k_proj = _copy_linear(attn.q_proj), _copy_linear(attn.k_proj)
        self.v_proj, self.o_proj = _copy_linear(attn.v_proj), _copy_linear(attn.o_proj)

    def _new(self, *shape: int) -> torch.Tensor:
        w = self.q_proj.weight
        return torch.zeros(*shape, device=w.device, dtype=w.dtype)

    def qkv(self, x: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """r/q, k, v [B, T, H, D] (k and v repeated to the query heads), RoPE applied when ``rope``."""
        B, T, _ = x.shape
        D, rep = self.head_dim, self.n_heads // self.n_kv
        q = self.q_proj(x).view(B, T, self.n_heads, D)
        k = self.k_proj(x).view(B, T, self.n_kv, D).repeat_interleave(rep, dim=2)
        v = self.v_proj(x).view(B, T, self.n_kv, D).repeat_interleave(rep, dim=2)
        if self.rope:
            if position_embeddings is None:
                raise ValueError(f"{type(self).__name__} needs the teacher's rotary position_embeddings (cos, sin)")
            cos, sin = position_embeddings
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return q, k, v

    def state_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.n_heads, self.head_dim, self.head_dim)

    def init_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(self.state_shape(batch), device=self.q_proj.weight.device, dtype=torch.float32)

    def forward(self, x: torch.Tensor, position_embeddings=None, state: torch.Tensor | None = None,
                want_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """x [B, T, d] -> (y [B, T, d], final state [B, H, D, D] fp32 or None); ``state`` continues a sequence."""
        raise NotImplementedError


class RadRWKV7(LinearStudent):
    """RWKV-7 generalised delta rule with RoPE, no token shift, no bonus, group norm, LoRA output gate."""

    def __init__(self, attn: nn.Module, config):
        super().__init__(attn, config)
        d, H, D = self.d_model, self.n_heads, self.head_dim
        A = H * D
        rw, ra, rg = lora_rank(d, 1.8, 0.5), lora_rank(d, 1.8, 0.5), lora_rank(d, 0.6, 0.8)
        ch = torch.linspace(0.0, 1.0, D).repeat(H)
        # decay: sigmoid(w0) in (0.0003, 0.018) -> log w in (-0.011, -0.0002): the memory starts nearly lossless
        self.w0 = nn.Parameter(self._new(A) + (-8.0 + 4.0 * ch).to(self.q_proj.weight))  # its device and dtype
        self.w1 = nn.Parameter(self._new(d, rw))
        self.w2 = nn.Parameter(nn.init.orthogonal_(self._new(rw, A), gain=0.1))
        # in-context learning rate: starts small (a ~ 0.05), so the student starts as decayed linear attention
        self.a0 = nn.Parameter(self._new(A) - 3.0)
        self.a1 = nn.Parameter(self._new(d, ra))
        self.a2 = nn.Parameter(nn.init.orthogonal_(self._new(ra, A), gain=0.1))
        self.k_k = nn.Parameter(self._new(A) + 1.0)
        # output gate g = sigmoid(x g1) g2 with g1 = 0 (sigmoid = 1/2 everywhere) and g2 = 2 / rank plus a small
        # orthogonal part: the gate starts at ~1 on every channel (a random-sign start would scramble o_proj's input)
        self.g1 = nn.Parameter(self._new(d, rg))
        self.g2 = nn.Parameter(nn.init.orthogonal_(self._new(rg, A), gain=0.1) + 2.0 / rg)
        self.norm = nn.GroupNorm(H, A, eps=GROUPNORM_EPS).to(device=self.q_proj.weight.device,
                                                            dtype=self.q_proj.weight.dtype)  # fmt: skip

    def _inputs(self, x, position_embeddings):
        H, D = self.n_heads, self.head_dim
        r, k, v = self.qkv(x, position_embeddings)
        heads = lambda t: t.unflatten(-1, (H, D))  # noqa: E731
        log_w = -LOG_DECAY_BOUND * torch.sigmoid(self.w0 + torch.tanh(x @ self.w1) @ self.w2)
        a = torch.sigmoid(self.a0 + (x @ self.a1) @ self.a2)
        kappa = F.normalize(k * heads(self.k_k), dim=-1)
        g = torch.sigmoid(x @ self.g1) @ self.g2
        # transition diag(w) - kappa^T (kappa * a)  ==  diag(e^{log w}) + a_op^T b_op with a_op = kappa * a, b_op = -kappa
        return r, k, v, heads(log_w), kappa * heads(a), -kappa, g

    def forward(self, x, position_embeddings=None, state=None, want_state=False):
        r, k, v, log_w, a, b, g = self._inputs(x, position_embeddings)
        if state is not None and x.shape[1] == 1:
            o, S = dplr_step(r[:, 0], k[:, 0], v[:, 0], log_w[:, 0], a[:, 0], b[:, 0], state, scale=1.0)
            o = o[:, None]
        else:
            o, S = dplr(
                r,
                k,
                v,
                log_w,
                a,
                b,
                scale=1.0,
                initial_state=state,
                output_final_state=want_state,
                backend=self.backend,
            )
        return self.o_proj(_head_group_norm(o, self.norm) * g), S


class RadRWKV6(LinearStudent):
    """GLA-style per-channel data-dependent decay, no RoPE, group norm, sigmoid output gate."""

    rope = False

    def __init__(self, attn: nn.Module, config):
        super().__init__(attn, config)
        d, H, D = self.d_model, self.n_heads, self.head_dim
        A = H * D
        rw = lora_rank(d, 1.8, 0.5)
        ch = torch.linspace(0.0, 1.0, D).repeat(H)
        # log w = -exp(w0 + ...): exp(w0) in (0.0003, 0.018), a memory that starts nearly lossless
        self.w0 = nn.Parameter(self._new(A) + (-8.0 + 4.0 * ch).to(self.q_proj.weight))  # its device and dtype
        self.w1 = nn.Parameter(self._new(d, rw))
        self.w2 = nn.Parameter(nn.init.orthogonal_(self._new(rw, A), gain=0.1))
        self.gate = nn.Linear(d, A, bias=True).to(device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():  # sigmoid(0) = 1/2 everywhere to start
            self.gate.weight.zero_()
            self.gate.bias.zero_()
        self.norm = nn.GroupNorm(H, A, eps=GROUPNORM_EPS).to(device=self.q_proj.weight.device,
                                                            dtype=self.q_proj.weight.dtype)  # fmt: skip

    def forward(self, x, position_embeddings=None, state=None, want_state=False):
        r, k, v = self.qkv(x, position_embeddings)
        log_w = -torch.exp(self.w0 + torch.tanh(x @ self.w1) @ self.w2).unflatten(-1, (self.n_heads, self.head_dim))
        if state is not None and x.shape[1] == 1:
            o, S = gla_step(r[:, 0], k[:, 0], v[:, 0], log_w[:, 0], state)
            o = o[:, None]
        else:
            o, S = gla(r, k, v, log_w, initial_state=state, output_final_state=want_state, backend=self.backend)
        return self.o_proj(_head_group_norm(o, self.norm) * torch.sigmoid(self.gate(x))), S


class RadGDN(LinearStudent):
    """Gated delta rule with RoPE, L2-normalised q/k, scalar decay and beta per head, per-head RMS norm."""

    def __init__(self, attn: nn.Module, config):
        super().__init__(attn, config)
        d, H, D = self.d_model, self.n_heads, self.head_dim
        dev, dt = self.q_proj.weight.device, self.q_proj.weight.dtype
        self.a_proj = nn.Linear(d, H, bias=False).to(device=dev, dtype=dt)
        self.b_proj = nn.Linear(d, H, bias=True).to(device=dev, dtype=dt)
        with torch.no_grad():
            nn.init.normal_(self.a_proj.weight, std=0.02 / math.sqrt(d))
            nn.init.normal_(self.b_proj.weight, std=0.02 / math.sqrt(d))
            self.b_proj.bias.zero_()  # beta = 1/2
        # decay per step softplus(dt_bias) in [1e-3, 1e-1] (log-uniform over heads), A = 1: decays near 1
        dt0 = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H))
        self.dt_bias = nn.Parameter((dt0 + torch.log(-torch.expm1(-dt0))).to(device=dev, dtype=dt))
        self.a_log = nn.Parameter(self._new(H))
        self.norm_weight = nn.Parameter(self._new(H, D) + 1.0)

    def forward(self, x, position_embeddings=None, state=None, want_state=False):
        q, k, v = self.qkv(x, position_embeddings)
        q, k = l2norm(q), l2norm(k)
        g = -torch.exp(self.a_log) * F.softplus(self.a_proj(x) + self.dt_bias)  # [B, T, H]
        beta = torch.sigmoid(self.b_proj(x))
        if state is not None and x.shape[1] == 1:
            o, S = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state, scale=1.0)
            o = o[:, None]
        else:
            o, S = gated_delta_rule(
                q, k, v, g, beta, scale=1.0, initial_state=state, output_final_state=want_state, backend=self.backend
            )
        o = o * torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(o.dtype) * self.norm_weight
        return self.o_proj(o.flatten(-2)), S


MIXERS = {"rad_rwkv7": RadRWKV7, "rad_rwkv6": RadRWKV6, "rad_gdn": RadGDN}


class StudentAttention(nn.Module):
    """A drop-in for a transformers attention module around a student mixer (or the teacher's own attention).

    ``forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs) -> (out, None)``.
    While ``carry`` is True the layer's recurrent state is kept in ``state``: read as the initial
    state, replaced by the final one (``None`` starts a sequence).
    """

    def __init__(self, mixer: nn.Module, kind: str, returns: int = 2):
        super().__init__()
        self.mixer, self.kind = mixer, kind
        self.returns = returns  # what the decoder layer unpacks: (out, weights), or (out, weights, cache) before 4.48
        self.carry = False
        self.state: torch.Tensor | None = None

    @property
    def recurrent(self) -> bool:
        return isinstance(self.mixer, LinearStudent)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, **kwargs):
        if not self.recurrent:  # the teacher's attention, exactly as the decoder layer would call it
            return self.mixer(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                              **kwargs)  # fmt: skip
        if not self.carry:
            y, _ = self.mixer(hidden_states, position_embeddings)
        else:
            y, self.state = self.mixer(hidden_states, position_embeddings, state=self.state, want_state=True)
        return (y,) + (None,) * (self.returns - 1)


def return_arity(attn: nn.Module) -> int:
    """How many values a transformers attention module returns, from its forward's return annotation
    (2 in transformers >= 4.48 and 5.x, 3 in 4.45-4.47); 2 when the annotation says nothing usable."""
    try:
        hint = typing.get_type_hints(type(attn).forward).get("return")
    except Exception:  # unresolvable annotations: assume the current convention
        return 2
    n = len(typing.get_args(hint))
    return n if n in (2, 3) else 2


def make_student_attention(kind: str, attn: nn.Module, config) -> StudentAttention:
    """Wrap (``attention``) or convert (the recurrent kinds) one teacher attention module."""
    if kind == "attention":
        return StudentAttention(attn, kind)
    if kind not in MIXERS:
        raise ValueError(f"unknown RADLADS student kind {kind!r}; choose one of {', '.join(KINDS)}")
    return StudentAttention(MIXERS[kind](attn, config), kind, return_arity(attn))
