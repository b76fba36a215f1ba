"""What a registry entry is: ArchSpec, its backends and their availability detectors.

This module sits at the bottom of the package (it imports nothing from archbench but the row
contract, ``archbench.schema``), so every mixer file can declare its own ``SPECS`` next to the
code they describe, and ``archbench.registry`` collects them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from archbench.schema import DTYPES  # noqa: F401 - re-exported: the registry and plugins read it here


class RegistryError(ValueError):
    """An unknown architecture or backend; the message lists what is available."""


class Unsupported(Exception):
    """This configuration cannot run on this backend / device (a result, not an error: the
    row's status is ``unsupported``). Mixers raise it for shapes a fused kernel does not take."""


# A detector returns None when the backend can run on (device, dtype), else the reason it cannot.
Detector = Callable[[str, "str | None"], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    detect: Detector
    detect_backward: Detector | None = None  # extra limits when gradients are needed (fwd_bwd, training)
    # shapes the kernel takes: None when it can run this mixer config, else why not (e.g. fla's
    # delta-rule kernels stop at head dimension 256); auto passes over a backend that refuses
    limits: Callable[[Any], str | None] | None = None
    # the pure-PyTorch reference: exactly one per ArchSpec, what a suite's ``reference`` names and what
    # ``auto`` falls back to
    reference: bool = False
    op: str | None = None  # the op-level backend this mixer backend calls (None: the op backend of its own name)

    @property
    def op_backend(self) -> str:
        return self.name if self.op is None else self.op

    def config_reason(self, config: Any) -> str | None:
        return self.limits(config) if self.limits is not None and config is not None else None

    def unavailable_reason(self, device: str, dtype: str | None = None, backward: bool = False) -> str | None:
        reason = self.detect(device, dtype)
        if reason is None and backward and self.detect_backward is not None:
            reason = self.detect_backward(device, dtype)
        return reason

    def interpreted_only(self, device: str) -> bool:
        """Whether this backend can run on ``device`` only through Triton's CPU interpreter
        (``triton_interpreted``), which is for checking kernels without a GPU, never for timing them."""
        return getattr(self.detect, "interpretable", False) and not device.startswith("cuda")

    def auto_choice(self, device: str, dtype: str | None = None, backward: bool = False, config: Any = None) -> bool:
        """Whether ``auto`` (and a hybrid's ``fused``) may pick this backend: it can run here,
        on this config's shapes (when given), and not only through the interpreter."""
        if self.interpreted_only(device):
            return False
        return self.unavailable_reason(device, dtype, backward) is None and self.config_reason(config) is None


@dataclass(frozen=True)
class Complexity:
    train_time: str
    train_memory: str
    decode_time: str
    decode_memory: str


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # taxonomy path, e.g. "full/softmax", "linear/linear-attention", "ssm/selective"
    description: str  # one line, with the paper
    paper: str
    complexity: Complexity
    backends: tuple[Backend, ...]  # in order of preference for backend "auto"
    factory: Callable[..., nn.Module]  # factory(config: MixerConfig, backend: str) -> Mixer
    flops: Callable[..., float] | None = None  # forward FLOPs: flops(config, batch, seq_len)
    # FLOPs of one decode step at a context of `context` tokens; None = flops(config, batch, 1), the
    # cost of one token in the parallel form, which for a fixed-state recurrence is its step
    decode_flops: Callable[..., float] | None = None
    has_decode: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)
    time_exponent: float = 1.0  # asymptotic exponent of training time in T (2 = quadratic), for the report
    level: str = "mixer"  # "model": the factory builds a whole LM (ids -> logits): factory(config, backend, n_layers=, vocab_size=)

    def __post_init__(self) -> None:
        flagged = sum(b.reference for b in self.backends)
        if flagged != 1:
            raise RegistryError(
                f"architecture {self.name!r} flags {flagged} backends as its reference; mark exactly one Backend(..., reference=True)"
            )

    @property
    def reference(self) -> Backend:
        """The pure-PyTorch reference backend (the one flagged ``reference``)."""
        return next(b for b in self.backends if b.reference)

    def decode_cost(self, config, batch: int, context: int) -> float | None:
        """Analytic FLOPs of one decode step after ``context`` tokens (None when unknown)."""
        if self.decode_flops is not None:
            return float(self.decode_flops(config, batch, context))
        return float(self.flops(config, batch, 1)) if self.flops is not None else None

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self.backends]

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise RegistryError(
            f"architecture {self.name!r} has no backend {name!r}; available: {', '.join(self.backend_names)}"
        )

    def resolve_backend(
        self, name: str, device: str, dtype: str | None = None, backward: bool = False, config: Any = None
    ) -> str:
        """``auto`` -> the first backend that can run on (device, dtype) (and differentiate,
        when ``backward``; and take ``config``'s shapes, when given), else the reference;
        ``reference`` -> the backend flagged ``reference``; other names pass through."""
        if name == "reference":
            return self.reference.name
        if name != "auto":
            self.backend(name)
            return name
        for b in self.backends:
            if b.auto_choice(device, dtype, backward, config):
                return b.name
        return self.reference.name

    def build(self, config, backend: str) -> nn.Module:
        reason = self.backend(backend).config_reason(config)
        if reason:
            raise Unsupported(f"{self.name} backend {backend!r} cannot take this config: {reason}")
        for hook in _BUILD_HOOKS:
            built = hook(self, config, backend)
            if built is not None:
                return built
        return self.factory(config, backend)


# Ways of building that a higher layer adds to every entry, so that this module imports nothing above
# it: hook(spec, config, backend) -> a module, or None where the hook does not apply (mixers/conv.py
# registers the suite-wide short convolution of ``MixerConfig.short_conv``).
_BUILD_HOOKS: list[Callable[..., nn.Module | None]] = []


def add_build_hook(hook: Callable[..., nn.Module | None]) -> None:
    """Apply ``hook`` in every ``ArchSpec.build`` (before the factory; the first hook to build wins)."""
    if hook not in _BUILD_HOOKS:
        _BUILD_HOOKS.append(hook)


def marginal_flops(flops: Callable[..., float]) -> Callable[..., float]:
    """Decode FLOPs of an attention-like mixer: the cost of token ``context + 1`` in the parallel
    form (its projections, and the query's scores and mix over every key it may see)."""

    def decode(config, batch: int, context: int) -> float:
        return float(flops(config, batch, context + 1) - flops(config, batch, context))

    return decode


# ---- detectors ------------------------------------------------------------------------


def always(device: str, dtype: str | None = None) -> str | None:
    return None


def _cuda_reason(device: str) -> str | None:
    if not device.startswith("cuda"):
        return f"needs a CUDA device (cell device is {device!r})"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA device, and torch sees none on this machine"
    return None


def triton_interpreted() -> bool:
    """Whether Triton kernels run under Triton's CPU interpreter in this process
    (``TRITON_INTERPRET=1`` and triton installed): slow, exact enough to check adapters on a
    machine without a GPU (``tests/triton_interpreter.py``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and importlib.util.find_spec("triton") is not None


def requires_cuda_module(
    module: str, install_hint: str, dtypes: tuple[str, ...] | None = None, interpretable: bool = False
) -> Detector:
    """Available when ``module`` imports, the device is CUDA, and (optionally) the dtype is one of
    ``dtypes``. ``interpretable``: every kernel of ``module`` is a Triton kernel, so under Triton's
    CPU interpreter it can also run on a CPU when chosen by name (``auto`` never picks it there)."""

    def detect(device: str, dtype: str | None = None) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install_hint})"
        reason = None if interpretable and triton_interpreted() else _cuda_reason(device)
        if reason:
            return reason
        if dtype is not None and dtypes is not None and dtype not in dtypes:
            return f"{module} supports only {'/'.join(dtypes)}, not {dtype}"
        return None

    detect.interpretable = interpretable  # type: ignore[attr-defined]
    return detect


requires_fla = requires_cuda_module("fla", "pip install 'archbench[gpu]' on a CUDA machine", interpretable=True)
requires_mamba_ssm = requires_cuda_module(
    "mamba_ssm", "a separate CUDA build: pip install --no-build-isolation causal-conv1d mamba-ssm"
)
requires_flash_attn = requires_cuda_module(
    "flash_attn", "a separate CUDA build: pip install flash-attn --no-build-isolation", dtypes=("float16", "bfloat16")
)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def gated_backward_reason(capability: tuple[int, int], triton_version: str | None, has_tilelang: bool) -> str | None:
    """fla's gated chunk backward (``chunk_bwd_dqkwg`` with a gate: simple GLA / SSD and the gated
    delta rule) gives wrong gradients on Hopper under Triton 3.4.0 to 3.7.0 (fla issue #640; fla
    0.6 refuses to run it, older fla silently miscomputes) unless fla can use tilelang instead.
    Seen on an H200 with torch 2.11 / triton 3.6 / fla 0.6."""
    if capability[0] != 9 or triton_version is None or has_tilelang:
        return None
    if (3, 4, 0) <= _version_tuple(triton_version) < (3, 7, 1):
        return (
            f"fla's gated chunk backward is wrong on Hopper with triton {triton_version} (fla issue #640): "
            "upgrade triton to >= 3.7.1 or pip install tilelang; forward-only modes still use fla"
        )
    return None


def fla_gated_backward(device: str, dtype: str | None = None) -> str | None:
    """``detect_backward`` for fla backends built on the gated chunk kernels (see gated_backward_reason)."""
    if not device.startswith("cuda"):
        return None  # the forward detector already refuses
    import importlib.metadata

    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    has_tilelang = importlib.util.find_spec("tilelang") is not None
    return gated_backward_reason(torch.cuda.get_device_capability(index), triton_version, has_tilelang)


def fla_gated_grad_refused(*tensors) -> bool:
    """For ops resolving ``backend="auto"``: True when autograd will need the backward of fla's
    gated chunk kernels through these inputs and this machine cannot give it correctly
    (``fla_gated_backward``); the op then takes its reference instead."""
    import torch

    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
        return False
    return fla_gated_backward(str(tensors[0].device)) is not None


def head_dim_at_most(limit: int, kernel: str) -> Callable[[Any], str | None]:
    """``Backend.limits`` for kernels that stop at a head dimension (fla's delta-rule and DPLR
    chunk kernels: 256)."""

    def limits(config) -> str | None:
        if config.hd > limit:
            return f"{kernel} takes head dimensions up to {limit} (this config: {config.hd}); raise n_heads or use the reference"
        return None

    return limits


def cuda_only(device: str, dtype: str | None = None) -> str | None:
    """For torch-native fused paths that only make sense on a GPU."""
    return _cuda_reason(device)


# ---- the backends most entries share ----------------------------------------------------


def reference_backend(description: str, name: str = "chunked", op: str | None = "torch") -> Backend:
    """The pure-PyTorch reference: runs everywhere, on the ops' ``torch`` backend unless ``op`` says otherwise."""
    return Backend(name, description, always, reference=True, op=op)


def fla_and_reference(
    kernel: str,
    reference: str = "pure-PyTorch chunked reference",
    *,
    detect: Detector = requires_fla,
    gated: bool = False,
    limits: Callable[[Any], str | None] | None = None,
    reference_name: str = "chunked",
) -> tuple[Backend, Backend]:
    """``fla`` (flash-linear-attention's ``kernel``; ``gated``: built on fla's gated chunk kernels, so no
    backward where those are wrong, ``fla_gated_backward``), then the pure-PyTorch reference: the
    backends of most linear-recurrent entries."""
    fla = Backend("fla", kernel, detect, fla_gated_backward if gated else None, limits)
    return fla, reference_backend(reference, reference_name)


def op_backend(backends: tuple[Backend, ...], name: str, mixer: str) -> str:
    """The op backend that ``mixer``'s backend ``name`` calls (``Backend.op_backend``); a ValueError
    naming the choices when ``name`` is not one of ``backends``."""
    for b in backends:
        if b.name == name:
            return b.op_backend
    raise ValueError(f"unknown {mixer} backend {name!r}; choose one of {', '.join(b.name for b in backends)}")
