"""Run recipes by name from the command line or a recipe suite.

A recipe is a module with a config dataclass and ``run(config, out_dir, progress) -> dict``
(``radlads``: attention -> linear conversion; ``rad``: redundancy-aware hybrid distillation;
``bridge``: cross-attention knowledge transfer). ``make_config`` builds a config from
``KEY=VALUE`` overrides (values parsed as YAML; ``teacher_spec.steps=300``, or in a suite a block
``teacher_spec: {steps: 300}``, reaches the nested teacher spec), refusing unknown keys in one line. A *recipe suite* is a YAML file with a
``recipes:`` list instead of a ``sweep:``; ``run_suite`` runs each entry into its own
sub-directory and gathers every row, tagged with its recipe, into the suite's ``rows.jsonl``.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from archbench.store import RunDir, now_iso

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
    config = make_config(name, overrides)
    return _module(name).run(config, Path(out_dir), progress)


def load_recipe_suite(path: str | Path) -> dict:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{p}: cannot read the recipe suite ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("recipes"), list) or not raw["recipes"]:
        raise RecipeError(f"{p}: a recipe suite needs a non-empty 'recipes:' list of {{recipe: NAME, ...settings}}")
    unknown = sorted(set(raw) - {"name", "description", "recipes"})
    if unknown:
        raise RecipeError(f"{p}: unknown key {', '.join(unknown)}; allowed: name, description, recipes")
    for i, entry in enumerate(raw["recipes"]):
        if not isinstance(entry, dict) or "recipe" not in entry:
            raise RecipeError(f"{p}: recipes[{i}]: each entry needs 'recipe: NAME' ({', '.join(RECIPES)})")
        try:
            make_config(entry["recipe"], {k: v for k, v in entry.items() if k not in ("recipe", "label")})
        except RecipeError as e:
            raise RecipeError(f"{p}: recipes[{i}]: {e}") from None
    return raw


def run_suite(raw: dict, out: Path, on_event: Callable[[str], None] = lambda s: None,
              progress: Callable[[dict], None] | None = None) -> RunDir:  # fmt: skip
    """Run every recipe of a suite into ``out/<i>-<recipe>/``; gather the rows into ``out``.
    ``on_event`` gets a line per recipe started and ended, ``progress`` the recipes' own events."""
    run = RunDir(out).create()
    from archbench.measure.env import collect_env

    device = next((str(e["device"]) for e in raw["recipes"] if e.get("device")), "cpu")  # the GPU's facts when used
    meta = {"run_id": out.name, "suite": raw.get("name", "recipes"), "suite_config": raw, "kind": "recipes",
            "env": collect_env(device), "started_at": now_iso(), "status": "running"}  # fmt: skip
    run.write_meta(meta)
    for i, entry in enumerate(raw["recipes"]):
        name = entry["recipe"]
        label = entry.get("label") or name
        sub = out / f"{i}-{label}"
        on_event(f"recipe {i + 1}/{len(raw['recipes'])}: {label} -> {sub}")
        t0 = time.perf_counter()
        try:
            summary = run_recipe(name, {k: v for k, v in entry.items() if k not in ("recipe", "label")}, sub, progress)
            status, error = "ok", None
        except Exception as e:  # noqa: BLE001 - a failed recipe is a row; the next one still runs
            summary, status, error = {}, "error", f"{type(e).__name__}: {e}"
        for j, row in enumerate(RunDir(sub).rows() if (sub / "rows.jsonl").exists() else []):
            key = f"{i}-{label}-{row.get('key') or row.get('model', j)}"  # unique across the suite's recipes
            run.append({**row, "key": key, "recipe": name, "recipe_label": label})
        if status != "ok":
            run.append({"key": f"{i}-{label}", "recipe": name, "recipe_label": label, "status": status, "error": error})
        on_event(f"  {status} in {time.perf_counter() - t0:.0f} s: {summary if status == 'ok' else error}")
    meta.update(ended_at=now_iso(), status="complete")
    run.write_meta(meta)
    return run
