"""Hybrid architectures, composed from the mixers of the catalogue.

Inter-layer hybrids interleave mixer families across depth, as a layer pattern over a
``models.Stack`` (pre-norm blocks with an FFN):

    pattern letter -> mixer:  A softmax attention   S sliding-window attention
                              M Mamba2              m Mamba
                              D Gated DeltaNet      L linear attention

Intra-layer hybrids run two mixers on the same input inside one layer (Hymba-like:
attention heads and SSM heads in parallel, each output normalised, then averaged).

A hybrid's backends are ``fused`` (every component on its first fused backend that can
run here, its reference where it has none; available when at least one component is
fused) and ``reference`` (every component on its pure-PyTorch reference, the backend each
flags ``reference``). This module does not import the registry: the registry passes
its lookup function to ``specs`` (arrows point down).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from archbench.mixers.base import Mixer, MixerConfig
from archbench.mixers.common import HeadRMSNorm
from archbench.models import build_stack
from archbench.spec import ArchSpec, Backend, Complexity, reference_backend

LETTERS = {
    "A": "softmax_attention",
    "S": "sliding_window_attention",
    "M": "mamba2",
    "m": "mamba",
    "D": "gated_deltanet",
    "L": "linear_attention",
}

Lookup = Callable[[str], ArchSpec]


_BUILD_FOR: ContextVar[tuple[str, bool] | None] = ContextVar("archbench_hybrid_build_for", default=None)


@contextmanager
def building_for(device: str, backward: bool = True):
    """Hybrids built inside run on ``device``, with (``backward``) or without a backward pass:
    their ``fused`` components are chosen for that, as ``auto`` chooses for a single mixer (the
    bench builds every cell's module inside this, backward for fwd_bwd and task cells; elsewhere
    the machine's device is used, with a backward). A forward-only cell thus keeps a fused kernel
    whose backward is refused here (fla's gated chunk backward on Hopper with triton < 3.7.1)."""
    token = _BUILD_FOR.set((str(device), bool(backward)))
    try:
        yield
    finally:
        _BUILD_FOR.reset(token)


def _build_for() -> tuple[str, bool]:
    """(device, backward) of the enclosing ``building_for``; outside one, this machine's device, with a backward."""
    return _BUILD_FOR.get() or ("cuda" if torch.cuda.is_available() else "cpu", True)


def component_backend(spec: ArchSpec, hybrid_backend: str, device: str | None = None, config=None, backward: bool | None = None) -> str:
    """The backend a component uses inside a hybrid built with ``hybrid_backend``: for
    ``fused``, its first fused backend that can run on the device (``building_for``'s, else this
    machine's), forward and, unless ``backward`` is False (default: ``building_for``'s, else
    True), backward: so a GPU node without flash-attn still gets SDPA / FlexAttention / fla, and
    a CPU training cell gets SDPA, not FlexAttention, which has no CPU backward: what ``auto`` picks
    (``ArchSpec.resolve_backend``, taking config's shapes when given). Else its reference."""
    if hybrid_backend != "fused":
        return spec.reference.name
    ctx_device, ctx_backward = _build_for()
    backward = ctx_backward if backward is None else backward
    return spec.resolve_backend("auto", device or ctx_device, None, backward=backward, config=config)


def _fused_detector(components: list[ArchSpec]):
    def detect(device: str, dtype: str | None = None) -> str | None:
        chosen = [(spec, component_backend(spec, "fused", device)) for spec in components]
        if all(name == spec.reference.name for spec, name in chosen):
            return "no component has a fused backend that can run here: " + ", ".join(
                f"{spec.name} ({spec.backends[0].unavailable_reason(device, dtype) or 'reference only'})"
                for spec, _ in chosen
            )
        for spec, name in chosen:
            reason = spec.backend(name).unavailable_reason(device, dtype, backward=True)
            if reason:
                return f"{spec.name} ({name}): {reason}"
        return None

    return detect


def _backends(components: list[ArchSpec]) -> tuple[Backend, ...]:
    return (
        Backend("fused", "every component on its fastest backend that can run here", _fused_detector(components)),
        reference_backend("every component on its pure-PyTorch reference", "reference", op=None),
    )


def _sum_decode(components: list[tuple[ArchSpec, int]]):
    def decode(config: MixerConfig, batch: int, context: int) -> float:
        return sum(count * (spec.decode_cost(config, batch, context) or 0.0) for spec, count in components)

    return decode


def _sum_flops(components: list[tuple[ArchSpec, int]]):
    def flops(config: MixerConfig, batch: int, seq_len: int) -> float:
        total = 0.0
        for spec, count in components:
            if spec.flops is not None:
                total += count * spec.flops(config, batch, seq_len)
        return total

    return flops


@dataclass(frozen=True)
class Hybrid:
    name: str
    pattern: str
    ffn: str
    description: str
    paper: str


INTER_LAYER = (  # one row a hybrid: name, layer pattern, FFN, description, paper
    Hybrid("hybrid_mamba2_attention", "AMMM", "swiglu", "Mamba2 layers with one attention layer in four (Waleffe et al., 2024)", "An Empirical Study of Mamba-based Language Models (arXiv 2406.07887)"),
    Hybrid("hybrid_jamba", "mmAm", "moe", "Jamba-like: Mamba layers, one attention layer in four, top-2 MoE FFNs (Lieber et al., 2024)", "Jamba: A Hybrid Transformer-Mamba Language Model (arXiv 2403.19887)"),
    Hybrid("hybrid_samba", "mSmS", "swiglu", "Samba-like: Mamba interleaved with sliding-window attention (Ren et al., 2024)", "Samba: Simple Hybrid State Space Models for Efficient Unlimited Context Language Modeling (arXiv 2406.07522)"),
    Hybrid("hybrid_gated_deltanet", "DDDA", "swiglu", "Gated DeltaNet layers with one attention layer in four (Yang et al., 2024)", "Gated Delta Networks: Improving Mamba2 with Delta Rule (arXiv 2412.06464)"),
)  # fmt: skip


def _inter_layer_spec(h: Hybrid, lookup: Lookup) -> ArchSpec:
    letters = sorted(set(h.pattern))
    comps = {c: lookup(LETTERS[c]) for c in letters}

    def factory(config: MixerConfig, backend: str) -> Mixer:
        factories = {
            c: (lambda cfg, s=s: s.build(cfg, component_backend(s, backend, config=cfg))) for c, s in comps.items()
        }
        return build_stack(config, h.pattern, factories, ffn=h.ffn, backend=backend)

    has_attention = any(LETTERS[c] == "softmax_attention" for c in letters)
    return ArchSpec(
        name=h.name,
        family="hybrid/inter-layer",
        description=f"{h.description}; pattern {h.pattern}",
        paper=h.paper,
        complexity=Complexity(
            train_time="O(T^2 d) from its attention layers" if has_attention else "O(T d^2)",
            train_memory="O(T d)",
            decode_time="O(T d) per token (KV cache of its attention layers)" if has_attention else "O(d^2) per token",
            decode_memory="O(T d) for attention layers + O(d N) per SSM layer" if has_attention else "O(d N) per layer",
        ),
        backends=_backends(list(comps.values())),
        factory=factory,
        flops=_sum_flops([(comps[c], h.pattern.count(c)) for c in letters]),  # FFN FLOPs not counted
        decode_flops=_sum_decode([(comps[c], h.pattern.count(c)) for c in letters]),
        has_decode=all(s.has_decode for s in comps.values()),
        time_exponent=max(s.time_exponent for s in comps.values()),
    )


class ParallelHybrid(Mixer):
    """Hymba-style intra-layer hybrid: y = (b1 * norm(attn(x)) + b2 * norm(ssm(x))) / 2."""

    def __init__(self, config: MixerConfig, attn: Mixer, ssm: Mixer, backend: str):
        super().__init__()
        self.config, self.backend = config, backend
        self.attn, self.ssm = attn, ssm
        self.norm_attn, self.norm_ssm = HeadRMSNorm(config.d_model), HeadRMSNorm(config.d_model)
        self.beta = nn.Parameter(torch.ones(2))

    def _mix(self, ya: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.beta[0] * self.norm_attn(ya) + self.beta[1] * self.norm_ssm(ys))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(self.attn(x), self.ssm(x))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        ya, sa = self.attn.prefill(x)
        ys, ss = self.ssm.prefill(x)
        return self._mix(ya, ys), (sa, ss)

    def init_state(self, batch: int) -> Any:
        return (self.attn.init_state(batch), self.ssm.init_state(batch))

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        ya, sa = self.attn.step(x_t, state[0])
        ys, ss = self.ssm.step(x_t, state[1])
        return self._mix(ya, ys), (sa, ss)

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return int(self.attn.state_bytes(batch, seq_len)) + int(self.ssm.state_bytes(batch, seq_len))


def _hymba_spec(lookup: Lookup) -> ArchSpec:
    attn, ssm = lookup("sliding_window_attention"), lookup("mamba2")

    def factory(config: MixerConfig, backend: str) -> Mixer:
        return ParallelHybrid(
            config,
            attn.build(config, component_backend(attn, backend, config=config)),
            ssm.build(config, component_backend(ssm, backend, config=config)),
            backend,
        )

    return ArchSpec(
        name="hybrid_hymba",
        family="hybrid/intra-layer",
        description="Hymba-like: sliding-window attention and Mamba2 heads in parallel in every layer (Dong et al., 2024)",
        paper="Hymba: A Hybrid-head Architecture for Small Language Models (arXiv 2411.13676)",
        complexity=Complexity("O(T W d + T d N)", "O(T d)", "O(W d + d N) per token", "O(W d + d N)"),
        backends=_backends([attn, ssm]),
        factory=factory,
        flops=_sum_flops([(attn, 1), (ssm, 1)]),
        decode_flops=_sum_decode([(attn, 1), (ssm, 1)]),
    )


def specs(lookup: Lookup) -> tuple[ArchSpec, ...]:
    """Every hybrid whose components are registered (a missing component skips that hybrid)."""
    out = []
    for h in INTER_LAYER:
        try:
            out.append(_inter_layer_spec(h, lookup))
        except ValueError:  # RegistryError: a component family is not in this build
            continue
    try:
        out.append(_hymba_spec(lookup))
    except ValueError:
        pass
    return tuple(out)
