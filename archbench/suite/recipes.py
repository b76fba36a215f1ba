"""Recipe cells (``mode: recipe``): a conversion or distillation recipe (``archbench.recipes``) run
as a cell. A recipe builds its own teacher and students, so arch, backend and shapes do not apply:
a recipe sweep names only ``recipe`` (the axis), ``device``, ``seed`` and ``threads``, and sits in
a sweep of its own. Each recipe's settings come from ``defaults.recipe_args.<recipe>``, checked
against the recipe's config when the suite loads; a cell carries its own recipe's settings only,
and they are part of its key.
"""

from __future__ import annotations

import itertools
from typing import Any

from archbench.fields import CELL_FIELDS, RECIPE_CELL_FIELDS
from archbench.suite.cell import Cell
from archbench.suite.models import Defaults, SuiteError, SuiteModel

# recipe settings the cell gives (a recipe's device and seed are the cell's)
CELL_SETTINGS = ("device", "seed")
_ALONE = "mode recipe cells go in a sweep of their own (arch, backend and shapes do not apply)"


def recipe_args(d: Defaults, source: str) -> dict[str, dict[str, Any]]:
    """``defaults.recipe_args`` checked: known recipes, no device or seed (the cell's), and settings
    the recipe's config takes (``archbench.recipes.make_config``)."""
    if not d.recipe_args:
        return {}
    from archbench.recipes import RECIPES, RecipeError, make_config

    for name, settings in d.recipe_args.items():
        where = f"{source}: defaults.recipe_args.{name}"
        if name not in RECIPES:
            raise SuiteError(f"{where}: unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
        for key in settings:
            head = key.split(".", 1)[0]
            if head in CELL_SETTINGS:
                raise SuiteError(f"{where}.{key}: a recipe cell's {head} is the cell's; set defaults.{head} or sweep.{head} instead")
        try:
            make_config(name, settings)
        except RecipeError as e:
            raise SuiteError(f"{where}: {e}") from None
    return {name: dict(settings) for name, settings in d.recipe_args.items()}


def expand_recipes(model: SuiteModel, axes: dict[str, list[Any]], source: str) -> dict[str, Cell]:
    """The recipe cells of a sweep whose mode is ``recipe``, by key, in sweep order."""
    d = model.defaults
    if set(axes["mode"]) != {"recipe"}:
        raise SuiteError(f"{source}: sweep.mode: {_ALONE}; move the other modes to another suite")
    for f in CELL_FIELDS:
        if f in RECIPE_CELL_FIELDS:
            continue
        for section, given in (("sweep", getattr(model.sweep, f) is not None), ("defaults", f in d.model_fields_set)):
            if given:
                raise SuiteError(f"{source}: {section}.{f}: {_ALONE}; drop {f}, and put the recipe's own settings "
                                 "in defaults.recipe_args.<recipe>")  # fmt: skip
    if model.arch_defaults:
        raise SuiteError(f"{source}: arch_defaults: {_ALONE}; drop arch_defaults")
    if axes["recipe"] == [None]:
        from archbench.recipes import names

        raise SuiteError(f"{source}: mode recipe needs a recipe (sweep.recipe or defaults.recipe); recipes: {', '.join(names())}")
    settings = recipe_args(d, source)
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*(axes[f] for f in CELL_FIELDS)):
        values = dict(zip(CELL_FIELDS, combo))
        if any(rule.matches(values) for rule in model.exclude):
            continue
        cell = Cell(**values, timeout_s=d.timeout_s, measure=d.measure, recipe_args=settings.get(values["recipe"], {}))
        cells.setdefault(cell.key, cell)
    if not cells:
        raise SuiteError(f"{source}: the sweep expands to no cells (every cell is excluded); loosen 'exclude'")
    return cells
