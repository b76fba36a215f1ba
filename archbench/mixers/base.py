"""The mixer contract shared by every family.

A mixer maps x [B, T, D] -> y [B, T, D] in parallel form (``forward``: training and
prefill) and, where the family has one, token by token (``init_state`` + ``step``:
decode); ``prefill`` is the parallel form that also returns the decode state. ``state_bytes`` is the analytic size of the decode state after ``seq_len``
tokens (the KV cache for attention, the fixed recurrent state for linear families).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from archbench.spec import Backend, op_backend


@dataclass(frozen=True)
class MixerConfig:
    """Dimensions common to all mixers; families ignore what they do not use."""

    d_model: int = 256
    n_heads: int = 4
    head_dim: int | None = None  # default d_model // n_heads
    n_kv_heads: int | None = None  # attention only (GQA / MQA); default n_heads
    chunk_size: int = 64  # chunked linear-family references
    d_state: int | None = None  # SSM state size N (Mamba: 16, Mamba2: 64 when None)
    expand: int = 2  # inner width multiplier of Mamba-style blocks
    conv_size: int = 4  # short causal depthwise convolution (0 = none)
    window: int | None = None  # sliding-window length in tokens (family default when None)
    block_size: int = 64  # block-sparse attention / NSA block length
    block_count: int = 16  # NSA: number of selected blocks per query
    rope_theta: float | None = 10000.0  # attention families: rotary base (None = no positional encoding)
    # one short causal convolution of this kernel in front of every recurrent mixer, their own removed
    # (0: none anywhere; None: each family as published); applied by ArchSpec.build, see mixers/conv.py
    short_conv: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_size", "expand", "block_size", "block_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("d_state", "window"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.short_conv is not None and self.short_conv < 0:
            raise ValueError(f"short_conv must be >= 0 (got {self.short_conv})")
        if self.conv_size < 0:
            raise ValueError(f"conv_size must be >= 0 (got {self.conv_size})")
        if self.d_model < 1 or self.n_heads < 1:
            raise ValueError(f"d_model and n_heads must be >= 1 (got {self.d_model}, {self.n_heads})")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); set head_dim explicitly"
            )
        kv = self.kv_heads
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads


class Mixer(nn.Module):
    """Base class: subclasses implement ``forward`` and, if recurrent-capable, the decode API."""

    config: MixerConfig
    backend: str
    backends: tuple[Backend, ...] = ()  # the backends of its catalogue entry (ArchSpec.backends)

    def __init__(self, config: MixerConfig | None = None, backend: str | None = None):
        """A catalogue mixer keeps ``config``, its backend ``backend`` (one of ``backends``, else a
        ValueError naming them) and ``op_backend``, the op backend that backend calls; a composite
        (a stack, a hybrid) passes neither and sets its own ``config`` and ``backend``."""
        super().__init__()
        if config is not None:
            self.op_backend = op_backend(self.backends, backend, type(self).__name__)
            self.config, self.backend = config, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dtype(self) -> torch.dtype:
        """Recurrent states accumulate in fp32 (fp64 when the module is fp64)."""
        return torch.promote_types(next(self.parameters()).dtype, torch.float32)

    def _zeros(self, *shape: int) -> torch.Tensor:
        """A zero decode state of ``shape`` in the state dtype, on the mixer's device."""
        return next(self.parameters()).new_zeros(shape, dtype=self.state_dtype())

    def init_state(self, batch: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent (decode) form")

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent (decode) form")

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The parallel form over a prompt that also returns the decode state.

        This default runs ``forward`` and then builds the state token by token with ``step``
        (correct but slow); families override it with their op's final state.
        """
        y = self.forward(x)
        state = self.init_state(x.shape[0])
        for t in range(x.shape[1]):
            _, state = self.step(x[:, t], state)
        return y, state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        raise NotImplementedError


class ParallelMixer(Mixer):
    """A mixer whose ``_forward(x, want_state)`` computes the parallel form and, when asked,
    the decode state in the same pass: ``forward`` and ``prefill`` are both that one call."""

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, Any]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, False)[0]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Forward over the prompt plus the decode state, from the same parallel pass."""
        return self._forward(x, True)

    def _scan(self, op, *inputs: Any, want_state: bool, **options: Any) -> tuple[torch.Tensor, Any]:
        """The chunked ``op`` over the sequence on this mixer's op backend and chunk size:
        ``(o, its final state in the state dtype, or None)``."""
        o, final = op(
            *inputs, chunk_size=self.config.chunk_size, backend=self.op_backend, output_final_state=want_state, **options
        )
        return o, (final.to(self.state_dtype()) if want_state else None)


class MatrixStateMixer(ParallelMixer):
    """A parallel-form mixer whose decode state is one fp32 [head_dim, head_dim] matrix per head."""

    def init_state(self, batch: int) -> torch.Tensor:
        return self._zeros(batch, self.config.n_heads, self.config.hd, self.config.hd)

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return batch * self.config.n_heads * self.config.hd**2 * 4  # fp32, independent of seq_len
