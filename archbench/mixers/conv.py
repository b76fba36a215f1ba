"""Gated convolutions (the architectures of Zoology's Figure 2) and the short-convolution switch.

All three multiply a convolution of the sequence with a data-dependent gate; the convolution
is as long as the sequence (``archbench.ops.long_conv``), so the gate is the only
input-dependent part, which is why Zoology finds them weak at associative recall.

**BaseConv** (Arora et al., 2023, Zoology, section 4): one gate, one long filter,

    y = (x W + b_1) * (h * x + D x)

with h an implicit filter (below). Zoology's Figure 2 alternates a kernel-3 short filter and an
implicit long filter between its two layers; here every layer has the long one (the short-conv
switch below adds a shared short convolution in front of the recurrent families only).

**Hyena** (Poli et al., 2023, order 2): [x_1, x_2, v] = ShortConv_3(x W_in) (depthwise, kernel 3,
no activation), then

    y = W_out ( x_2 * (h * (x_1 * v) + D (x_1 * v)) )

**H3** (Fu et al., 2023, "Hungry Hungry Hippos", head dimension 1): q, k, v = x W_{q,k,v},

    k~ = shift-SSM(k),  s = diag-SSM(k~ * v) + D (k~ * v),  y = W_out (q * s)

The shift SSM is a state-space model whose A is a shift matrix: its kernel is a learned FIR filter
as long as its state, so it is a depthwise causal convolution of ``conv_size`` taps. The diagonal
SSM is S4D-Real (a_n = exp(-dt exp(A_n)), zero-order hold, ``d_state`` states per channel); its
recurrence gives H3 a decode state of fixed size, d_model * (d_state + conv_size - 1) values.

**Implicit filter** (Hyena's): h_l = MLP(z_l) * exp(-|delta_c| t_l) per channel c, z_l the
positional features [t_l, cos(2 pi f l / L), sin(2 pi f l / L)] with t_l = l / L, sine
activations in the MLP and fixed decay rates delta spread between reaching 1e-2 at 0.3 L and at
1.5 L. Zoology sets L to the training length; here L = ``FILTER_LENGTH`` for every length, so a
filter tap never depends on how long the sequence is (the forward and decode forms agree).
BaseConv and Hyena decode by keeping every input of the long convolution (the state grows by
d_model values per token, like a KV cache).

**The short-conv switch.** ``MixerConfig.short_conv`` = k gives every recurrent mixer (the
``linear/``, ``rnn/`` and ``ssm/`` families) the same depthwise causal convolution of kernel k in
front of its input, and removes the convolutions those families have of their own (DeltaNet's,
Mamba's: ``conv_size`` 0); 0 removes them all and adds none. It is Zoology's "BASED recipe" for
comparing sequence mixers like with like (its README: linear attention and GLA as published have
no short convolution, two-layer recall needs a token shift, so without the switch a ranking mixes
architecture and convolution). ``short_conv`` unset builds each family as published.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
from torch import nn

from archbench.mixers.base import Mixer, MixerConfig, ParallelMixer
from archbench.mixers.common import ShortConv
from archbench.ops.long_conv import (
    causal_long_conv,
    diag_ssm_kernel,
    diag_ssm_state,
    diag_ssm_step,
    long_conv_step,
)
from archbench.spec import ArchSpec, Complexity, add_build_hook, reference_backend

FILTER_LENGTH = 1024  # the implicit filter's length scale (positions, not a limit on T)
SHORT_CONV_FAMILIES = ("linear", "rnn", "ssm")  # family roots the short-conv switch applies to


# ---- the short-convolution switch ----------------------------------------------------------


def short_conv_applies(family: str, config: Any) -> bool:
    """Whether ``config.short_conv`` changes how an architecture of ``family`` is built."""
    return getattr(config, "short_conv", None) is not None and family.split("/")[0] in SHORT_CONV_FAMILIES


def with_short_conv(factory: Callable[[MixerConfig, str], nn.Module], config: MixerConfig, backend: str) -> nn.Module:
    """The mixer built without its own convolutions, behind the shared one (none when k = 0)."""
    inner = factory(dataclasses.replace(config, conv_size=0, short_conv=None), backend)
    if not config.short_conv:
        return inner
    return ShortConvFront(inner, config.d_model, config.short_conv)


def _short_conv_hook(spec: ArchSpec, config: MixerConfig, backend: str) -> nn.Module | None:
    return with_short_conv(spec.factory, config, backend) if short_conv_applies(spec.family, config) else None


add_build_hook(_short_conv_hook)  # ArchSpec.build applies the switch to every entry it concerns


class ShortConvFront(Mixer):
    """y = mixer(ShortConv_k(x)): a depthwise causal convolution (no activation) in front of a mixer.

    Decode state: ``(conv window [B, D, k-1], the mixer's state)``."""

    def __init__(self, inner: nn.Module, channels: int, kernel: int):
        super().__init__()
        self.inner, self.conv = inner, ShortConv(channels, kernel, activation=False)
        self.config, self.backend = inner.config, inner.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(x))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, state = self.inner.prefill(self.conv(x))
        return y, (self.conv.window(x), state)

    def init_state(self, batch: int) -> Any:
        return self.conv.init_state(batch).to(self.inner.state_dtype()), self.inner.init_state(batch)

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        window, inner = state
        c_t, window = self.conv.step(x_t, window.to(x_t.dtype))
        y_t, inner = self.inner.step(c_t, inner)
        return y_t, (window, inner)

    def state_dtype(self) -> torch.dtype:
        return self.inner.state_dtype()

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return int(self.inner.state_bytes(batch, seq_len)) + self.conv.state_bytes(batch)


# ---- the implicit long filter ----------------------------------------------------------------


class _Sin(nn.Module):
    def __init__(self, dim: int, w: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """h [T, C] from positions 0..T-1 (module docstring): a small sine MLP over positional
    features, times a per-channel exponential decay, plus a per-channel skip weight D."""

    def __init__(self, channels: int, order: int = 16, emb_dim: int = 3, length: int = FILTER_LENGTH):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be odd and >= 3 (time, cosine and sine), got {emb_dim}")
        self.length, self.bands = length, (emb_dim - 1) // 2
        act = _Sin(order)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, order), act, nn.Linear(order, order), act, nn.Linear(order, order), act,
            nn.Linear(order, channels, bias=False),
        )  # fmt: skip
        target = math.log(1e-2)
        self.register_buffer("deltas", torch.linspace(target / 1.5, target / 0.3, channels), persistent=False)
        self.D = nn.Parameter(torch.randn(channels))

    def forward(self, T: int) -> torch.Tensor:
        w = self.mlp[0].weight
        pos = torch.arange(T, device=w.device, dtype=w.dtype)
        t = pos / self.length
        f = torch.linspace(1e-4, max(self.bands - 1, 1e-4), self.bands, device=w.device, dtype=w.dtype)
        angle = 2 * math.pi * pos[:, None] * f[None] / self.length
        z = torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1)
        return self.mlp(z) * torch.exp(-t[:, None] * self.deltas.abs().to(w.dtype))


class _LongConvMixer(ParallelMixer):
    """Shared decode plumbing: the inputs of the long convolution are the state."""

    filter: ImplicitFilter
    backends = (reference_backend("pure-PyTorch FFT long convolution (torch.fft), recurrent decode", "fft", op=None),)

    def _filter_taps(self, T: int) -> torch.Tensor:
        return self.filter(T)

    def _history_state(self, v: torch.Tensor, extra: dict) -> dict:
        return {"hist": v.to(self.state_dtype()), **extra}

    def _step_conv(self, v_t: torch.Tensor, state: dict) -> torch.Tensor:
        hist = state["hist"]
        t = 0 if hist is None else hist.shape[1]
        y, state["hist"] = long_conv_step(v_t.to(self.state_dtype()), hist, self._filter_taps(t + 1), self.filter.D)
        return y.to(v_t.dtype)

    def _history_bytes(self, batch: int, seq_len: int) -> int:
        return batch * seq_len * self.config.d_model * 4


# ---- BaseConv ------------------------------------------------------------------------------


class BaseConv(_LongConvMixer):
    def __init__(self, config: MixerConfig, backend: str = "fft"):
        super().__init__(config, backend)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.filter = ImplicitFilter(config.d_model)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, Any]:
        conv = causal_long_conv(x, self.filter(x.shape[1]), self.filter.D)
        y = self.proj(x) * conv
        return y, (self._history_state(x, {}) if want_state else None)

    def init_state(self, batch: int) -> dict:
        return {"hist": None}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self.proj(x_t) * self._step_conv(x_t, state), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._history_bytes(batch, seq_len)


# ---- Hyena ---------------------------------------------------------------------------------

HYENA_SHORT = 3  # Hyena's explicit short filter on the projections


class Hyena(_LongConvMixer):
    def __init__(self, config: MixerConfig, backend: str = "fft"):
        super().__init__(config, backend)
        d = config.d_model
        self.in_proj = nn.Linear(d, 3 * d)
        self.short = ShortConv(3 * d, HYENA_SHORT, activation=False, bias=True)
        self.filter = ImplicitFilter(d, order=64)
        self.out_proj = nn.Linear(d, d)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, Any]:
        u = self.in_proj(x)
        x1, x2, v = self.short(u).chunk(3, dim=-1)
        gated = x1 * v
        y = self.out_proj(x2 * causal_long_conv(gated, self.filter(x.shape[1]), self.filter.D))
        if not want_state:
            return y, None
        return y, self._history_state(gated, {"short": self.short.window(u).to(self.state_dtype())})

    def init_state(self, batch: int) -> dict:
        return {"hist": None, "short": self.short.init_state(batch).to(self.state_dtype())}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        c, state["short"] = self.short.step(self.in_proj(x_t), state["short"].to(x_t.dtype))
        x1, x2, v = c.chunk(3, dim=-1)
        return self.out_proj(x2 * self._step_conv(x1 * v, state)), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._history_bytes(batch, seq_len) + self.short.state_bytes(batch)


# ---- H3 ------------------------------------------------------------------------------------


class H3(ParallelMixer):
    backends = _LongConvMixer.backends

    def __init__(self, config: MixerConfig, backend: str = "fft"):
        super().__init__(config, backend)
        d, N = config.d_model, config.d_state or 64
        self.N, self.shift_len = N, max(config.conv_size, 2)
        self.qkv = nn.Linear(d, 3 * d)
        self.shift = ShortConv(d, self.shift_len, activation=False)  # the shift SSM: a learned FIR filter
        self.shift_D = nn.Parameter(torch.randn(d))
        # S4D-Real: A_n = -(n + 1) (as S4D-Real initialises), dt log-uniform in [1e-3, 1e-1] per channel
        self.log_A = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d, 1))
        self.log_dt = nn.Parameter(torch.empty(d, 1).uniform_(math.log(1e-3), math.log(1e-1)))
        self.C = nn.Parameter(torch.randn(d, N) * (1.0 / math.sqrt(N)))
        self.D = nn.Parameter(torch.randn(d))
        self.out = nn.Linear(d, d)

    def _ssm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a, b) of the discretised diagonal SSM (zero-order hold, B = 1): [d, N] each."""
        A = -torch.exp(self.log_A)
        dtA = torch.exp(self.log_dt) * A
        return dtA, torch.expm1(dtA) / A

    def _kv(self, q_k_v: torch.Tensor, shifted: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (shifted + self.shift_D * k) * q_k_v

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, Any]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        kv = self._kv(v, self.shift(k), k)
        log_a, b = self._ssm()
        s = causal_long_conv(kv, diag_ssm_kernel(log_a, b, self.C, x.shape[1]), self.D)
        y = self.out(q * s)
        if not want_state:
            return y, None
        return y, {"shift": self.shift.window(k).to(self.state_dtype()), "ssm": diag_ssm_state(kv, log_a, b)}

    def init_state(self, batch: int) -> dict:
        d, dt = self.config.d_model, self.state_dtype()
        return {"shift": self.shift.init_state(batch).to(dt), "ssm": self.C.new_zeros(batch, d, self.N, dtype=dt)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self.qkv(x_t).chunk(3, dim=-1)
        shifted, state["shift"] = self.shift.step(k, state["shift"].to(x_t.dtype))
        kv = self._kv(v, shifted, k)
        log_a, b = self._ssm()
        s, state["ssm"] = diag_ssm_step(kv, state["ssm"], log_a, b, self.C)
        return self.out(q * (s + self.D * kv)), state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return batch * self.config.d_model * (self.N + self.shift_len - 1) * 4


# ---- analytic FLOPs ------------------------------------------------------------------------


def _fft_flops(batch: int, seq_len: int, channels: int) -> float:
    """Three real FFTs of size n >= 2T (input, filter, inverse), ~2.5 n log2 n each, per channel."""
    n = 1 << max(1, (2 * seq_len - 1).bit_length())
    return 3 * 2.5 * n * math.log2(n) * channels * batch


def base_conv_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    d = config.d_model
    return 2.0 * batch * seq_len * d * d + _fft_flops(batch, seq_len, d) + 3.0 * batch * seq_len * d


def hyena_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    d = config.d_model
    proj = 2.0 * batch * seq_len * d * 4 * d
    return proj + 2.0 * batch * seq_len * 3 * d * HYENA_SHORT + _fft_flops(batch, seq_len, d) + 4.0 * batch * seq_len * d


def h3_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    d, N = config.d_model, config.d_state or 64
    proj = 2.0 * batch * seq_len * d * 4 * d
    kernel = 3.0 * seq_len * d * N  # building the SSM kernel
    return proj + 2.0 * batch * seq_len * d * max(config.conv_size, 2) + kernel + _fft_flops(batch, seq_len, d)


def long_conv_decode_flops(proj_matrices: int) -> Callable[..., float]:
    """Decode FLOPs of a mixer that convolves its whole history: projections + one dot product per channel."""

    def decode(config: MixerConfig, batch: int, context: int) -> float:
        d = config.d_model
        return 2.0 * batch * d * d * proj_matrices + 2.0 * batch * (context + 1) * d

    return decode


def h3_decode_flops(config: MixerConfig, batch: int, context: int) -> float:
    d, N = config.d_model, config.d_state or 64
    return 2.0 * batch * d * d * 4 + 4.0 * batch * d * N + 2.0 * batch * d * max(config.conv_size, 2)


# BaseConv and Hyena: an FFT convolution over the whole input, whose decode keeps the input history
LONG_CONV = Complexity(
    train_time="O(T log T d + T d^2)", train_memory="O(T d)",
    decode_time="O(T d) per token", decode_memory="O(T d) input history",
)

SPECS = (
    ArchSpec(
        name="base_conv",
        family="conv/gated",
        description="BaseConv: a linear gate times an implicit long convolution (Arora et al., 2023, Zoology)",
        paper="Zoology: Measuring and Improving Recall in Efficient Language Models (arXiv 2312.04927)",
        complexity=LONG_CONV,
        backends=BaseConv.backends,
        factory=BaseConv,
        flops=base_conv_flops,
        decode_flops=long_conv_decode_flops(1),
    ),
    ArchSpec(
        name="hyena",
        family="conv/gated",
        description="Hyena (order 2): short conv, two gates around an implicit long convolution (Poli et al., 2023)",
        paper="Hyena Hierarchy: Towards Larger Convolutional Language Models (arXiv 2302.10866)",
        complexity=LONG_CONV,
        backends=Hyena.backends,
        factory=Hyena,
        flops=hyena_flops,
        decode_flops=long_conv_decode_flops(4),
    ),
    ArchSpec(
        name="h3",
        family="conv/gated",
        description="H3: shift SSM on keys, diagonal SSM on key*value, query gate (Fu et al., 2023)",
        paper="Hungry Hungry Hippos: Towards Language Modeling with State Space Models (arXiv 2212.14052)",
        complexity=Complexity("O(T log T d + T d^2)", "O(T d)", "O(d N + d^2) per token", "O(d N) state"),
        backends=H3.backends,
        factory=H3,
        flops=h3_flops,
        decode_flops=h3_decode_flops,
    ),
)
