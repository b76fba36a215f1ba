"""The catalogue: architecture name -> ArchSpec.

An ArchSpec (``archbench.spec``) says what an architecture is (taxonomy family, one line with its paper),
what it costs in theory (complexity, analytic FLOPs), which implementations
(backends) exist and whether each can run here, and how to build it from the common
``MixerConfig``. Add a new architecture by writing its mixer in ``archbench/mixers/`` with
its ``ArchSpec`` in that file's ``SPECS`` tuple, and list a new module in ``CATALOGUE``
below (or call ``register`` from your own module, named under ``plugins:`` in a suite).
"""

from __future__ import annotations

import importlib

from archbench import hf, hybrids
from archbench.mixers import attention, delta, gla, linear, rnn, sparse, ssm
from archbench.spec import (  # noqa: F401 - re-exported for plugins
    DTYPES,
    ArchSpec,
    Backend,
    Complexity,
    RegistryError,
    always,
    cuda_only,
    requires_cuda_module,
    requires_fla,
)

CATALOGUE = (attention, sparse, linear, gla, delta, rnn, ssm, hf)

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


# ---- the catalogue --------------------------------------------------------------------
# Each mixer module declares SPECS next to its code; list a new module here.
for _module in CATALOGUE:
    for _spec in _module.SPECS:
        register(_spec)
# Hybrids are compositions of the entries above.
for _spec in hybrids.specs(get):
    register(_spec)
BUILTIN = frozenset(_REGISTRY)  # the shipped catalogue, before any plugin registers


def builtin_specs() -> list[ArchSpec]:
    """The shipped catalogue (what the README lists), without plugins registered since."""
    return [_REGISTRY[n] for n in names() if n in BUILTIN]
