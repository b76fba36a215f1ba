"""The catalogue: architecture name -> ArchSpec.

An ArchSpec (``archbench.spec``) says what an architecture is (taxonomy family, one line with its paper),
what it costs in theory (complexity, analytic FLOPs), which implementations
(backends) exist and whether each can run here, and how to build it from the common
``MixerConfig``. Add a new architecture by writing its mixer in ``archbench/mixers/`` with
its ``ArchSpec`` in that file's ``SPECS`` tuple: every module of ``archbench.mixers`` that
declares ``SPECS`` joins the catalogue (``CATALOGUE`` below), so no list needs editing (or call
``register`` from your own module or file, named under ``plugins:`` in a suite by module name or
by file path: ``load_plugins``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pkgutil

from archbench import hf, hybrids, mixers
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



def _mixer_modules() -> tuple:
    """Every module of ``archbench.mixers`` that declares ``SPECS``, in name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(mixers.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{mixers.__name__}.{info.name}")
        if hasattr(module, "SPECS"):
            found.append(module)
    return tuple(found)


# The shipped catalogue: the mixer modules, then the transformers model families (hf).
CATALOGUE = (*_mixer_modules(), hf)

_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec, *, replace: bool = False) -> ArchSpec:
    if spec.name in _REGISTRY and not replace:
        raise RegistryError(f"architecture {spec.name!r} is already registered")
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


def is_plugin_path(plugin: str) -> bool:
    """A plugin named by file (``archs.py``, ``./x/archs.py``) rather than by module (``my_pkg.archs``)."""
    return plugin.endswith(".py") or "/" in plugin or os.sep in plugin


def load_plugins(plugins: list[str] | tuple[str, ...]) -> None:
    """Import user plugins that call ``register``. Each is a module name, imported from
    ``sys.path`` (``my_pkg.archs``), or the path of a ``.py`` file (``archs/mine.py``; relative
    paths are taken from the working directory, and a suite makes them relative to its own file).
    A file is imported once per process under a name derived from its absolute path. A plugin
    that cannot be found or imported is a RegistryError."""
    for plugin in plugins:
        if is_plugin_path(plugin):
            _load_plugin_file(plugin)
            continue
        try:
            importlib.import_module(plugin)
        except ImportError as e:
            hint = "name a module on sys.path or a .py file"
            raise RegistryError(f"cannot import plugin module {plugin!r}: {e} ({hint})") from None


def _load_plugin_file(plugin: str) -> None:
    path = Path(plugin).expanduser().absolute()
    if not path.is_file():
        raise RegistryError(f"plugin file not found: {path} (a plugin is a module name or the path of a .py file)")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"archbench_plugin_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise RegistryError(f"plugin file {path} failed to import: {type(e).__name__}: {e}") from None


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
