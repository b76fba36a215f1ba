"""The catalogue: architecture name -> ArchSpec.

An ArchSpec says what an architecture is (taxonomy family, one line with its paper),
what it costs in theory (complexity, analytic FLOPs), which implementations
(backends) exist and whether each can run here, and how to build it from the common
``MixerConfig``. Add a new architecture by writing its mixer in ``archbench/mixers/``
and one ``register(ArchSpec(...))`` call at the bottom of this file (or in your own
module, named under ``plugins:`` in a suite).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from archbench.mixers.attention import SoftmaxAttention, softmax_attention_flops
from archbench.mixers.base import MixerConfig
from archbench.mixers.linear import LinearAttention, linear_attention_flops

DTYPES = ("float32", "bfloat16", "float16")


class RegistryError(ValueError):
    """An unknown architecture or backend; the message lists what is available."""


# A detector returns None when the backend can run on (device, dtype), else the reason it cannot.
Detector = Callable[[str, "str | None"], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    detect: Detector

    def unavailable_reason(self, device: str, dtype: str | None = None) -> str | None:
        return self.detect(device, dtype)


@dataclass(frozen=True)
class Complexity:
    train_time: str
    train_memory: str
    decode_time: str
    decode_memory: str


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # taxonomy path, e.g. "full/softmax", "linear/linear-attention"
    description: str  # one line, with the paper
    paper: str
    complexity: Complexity
    backends: tuple[Backend, ...]  # in order of preference for backend "auto"
    factory: Callable[[MixerConfig, str], nn.Module]
    flops: Callable[[MixerConfig, int, int], float] | None = None  # forward FLOPs (config, batch, seq_len)
    has_decode: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)

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

    def resolve_backend(self, name: str, device: str, dtype: str | None = None) -> str:
        """``auto`` -> the first backend that can run on (device, dtype); other names pass through."""
        if name != "auto":
            self.backend(name)
            return name
        for b in self.backends:
            if b.unavailable_reason(device, dtype) is None:
                return b.name
        return self.backends[-1].name

    def build(self, config: MixerConfig, backend: str) -> nn.Module:
        self.backend(backend)
        return self.factory(config, backend)


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec, *, replace: bool = False) -> ArchSpec:
    if spec.name in _REGISTRY and not replace:
        raise RegistryError(f"architecture {spec.name!r} is already registered")
    if not spec.backends:
        raise RegistryError(f"architecture {spec.name!r} declares no backends")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown architecture {name!r}; known: {', '.join(names())}") from None


def all_specs() -> list[ArchSpec]:
    return [_REGISTRY[n] for n in names()]


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that call ``register``; a missing module is a RegistryError."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise RegistryError(f"cannot import plugin module {mod!r}: {e}") from None


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


def requires_cuda_module(module: str, install_hint: str, dtypes: tuple[str, ...] | None = None) -> Detector:
    def detect(device: str, dtype: str | None = None) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install_hint})"
        reason = _cuda_reason(device)
        if reason:
            return reason
        if dtype is not None and dtypes is not None and dtype not in dtypes:
            return f"{module} supports only {'/'.join(dtypes)}, not {dtype}"
        return None

    return detect


# ---- the catalogue --------------------------------------------------------------------

register(
    ArchSpec(
        name="softmax_attention",
        family="full/softmax",
        description="Causal multi-head softmax attention (Vaswani et al., 2017)",
        paper="Attention Is All You Need (arXiv 1706.03762)",
        complexity=Complexity(
            train_time="O(T^2 d)",
            train_memory="O(T d) fused, O(T^2) naive",
            decode_time="O(T d) per token",
            decode_memory="O(T d) KV cache",
        ),
        backends=(
            Backend(
                "flash_attn",
                "flash-attn package (Dao, 2023)",
                requires_cuda_module(
                    "flash_attn",
                    "a separate CUDA build: pip install flash-attn --no-build-isolation",
                    dtypes=("float16", "bfloat16"),
                ),
            ),
            Backend("sdpa", "torch.nn.functional.scaled_dot_product_attention", always),
            Backend("naive", "pure-PyTorch reference, materialises the T x T scores", always),
        ),
        factory=lambda cfg, backend: SoftmaxAttention(cfg, backend),
        flops=softmax_attention_flops,
    )
)

register(
    ArchSpec(
        name="linear_attention",
        family="linear/linear-attention",
        description="Causal linear attention with elu+1 feature map (Katharopoulos et al., 2020)",
        paper="Transformers are RNNs (arXiv 2006.16236)",
        complexity=Complexity(
            train_time="O(T d^2)",
            train_memory="O(T d + (T/C) d^2)",
            decode_time="O(d^2) per token",
            decode_memory="O(d^2) state",
        ),
        backends=(Backend("chunked", "pure-PyTorch chunked reference", always),),
        factory=lambda cfg, backend: LinearAttention(cfg, backend),
        flops=linear_attention_flops,
    )
)
