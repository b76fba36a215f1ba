"""Conversion and distillation recipes: turn a softmax transformer into an efficient model and
measure what it costs and what it keeps.

``teacher`` provides the transformer (any transformers causal LM, or a tiny byte-level
Llama pre-trained here on the embedded standard-library corpus); each recipe module builds a
student from it, trains it in steps, and reports quality against the teacher.

A recipe is registered here by name with its module and config dataclass; the module has
``run(config, out_dir, progress) -> dict`` and writes its rows (one per model: teacher,
students, baselines) to ``out_dir/rows.jsonl``. ``make_config`` builds a config from overrides
(values parsed as YAML; ``teacher_spec.steps=300``, or a block ``teacher_spec: {steps: 300}``,
reaches the nested teacher spec), refusing unknown keys in one line.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

RECIPES = {
    "radlads": ("archbench.recipes.radlads", "RadladsConfig"),
    "rad": ("archbench.recipes.redundancy", "RedundancyConfig"),
    "bridge": ("archbench.recipes.bridge", "BridgeConfig"),
}


class RecipeError(ValueError):
    """A recipe or its settings cannot be used; one line, says what to do."""


def _module(name: str):
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[name][0])


def make_config(name: str, overrides: dict[str, Any] | None = None):
    """The recipe's config with ``overrides`` applied (dotted keys reach nested dataclasses)."""
    mod = _module(name)
    cls = getattr(mod, RECIPES[name][1])
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head not in fields:
            raise RecipeError(f"{name}: no setting {head!r}; settings: {', '.join(fields)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(cls(), head, None)):
            nested.setdefault(head, {}).update(value)  # a block of nested settings: teacher_spec: {d_model: 512}
        else:
            flat[key] = tuple(value) if isinstance(value, list) else value
    try:
        base = cls()
        for head, sub in nested.items():
            inner = getattr(base, head)
            known = {f.name for f in dataclasses.fields(inner)}
            unknown = sorted(set(sub) - known)
            if unknown:
                raise RecipeError(f"{name}: {head} has no setting {', '.join(map(repr, unknown))}; settings: {', '.join(sorted(known))}")
            flat[head] = dataclasses.replace(inner, **sub)
        return dataclasses.replace(base, **flat)
    except (TypeError, ValueError) as e:
        if isinstance(e, RecipeError):
            raise
        msg = str(e).splitlines()[0]
        own = (f"{name}:", f"{RECIPES[name][0].rsplit('.', 1)[-1]}:")  # the recipe's own errors name it already
        raise RecipeError(msg if msg.startswith(own) else f"{name}: {msg}") from None


def parse_overrides(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for a in assignments:
        if "=" not in a:
            raise RecipeError(f"--set {a!r}: expected KEY=VALUE, e.g. --set step1_tokens=50000")
        key, value = a.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_recipe(name: str, overrides: dict[str, Any], out_dir: Path, progress: Callable[[dict], None] | None = None) -> dict:
    """Run recipe ``name`` with ``overrides`` into ``out_dir``; its summary."""
    config = make_config(name, overrides)
    return _module(name).run(config, Path(out_dir), progress)


def names() -> list[str]:
    return list(RECIPES)


def _file(module: str) -> str | None:
    """The source file of an imported module (one plugin file imported under two names is one recipe)."""
    return getattr(sys.modules.get(module), "__file__", None) or module


def register(name: str, module: str, config: str) -> None:
    """Make recipe ``name`` runnable: ``module`` (importable by name) has ``run(config, out_dir,
    progress)`` and the config dataclass called ``config``. A suite's plugin registers its own
    recipes this way (``plugins: [my_recipes.py]``), as it registers architectures."""
    if not name.isidentifier():
        raise RecipeError(f"recipe name {name!r}: use letters, digits and underscores")
    if name in RECIPES and RECIPES[name] != (module, config) and _file(RECIPES[name][0]) != _file(module):
        raise RecipeError(f"recipe {name!r} is registered already (by {RECIPES[name][0]}); pick another name")
    RECIPES[name] = (module, config)
