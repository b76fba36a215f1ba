"""A ``mode: recipe`` cell: run one conversion or distillation recipe and return its row.

A recipe cell is keyed, isolated in a worker and resumed like every other cell: its key hashes the
recipe's name, its settings (``recipe_args``), device and seed, so a rerun of the suite skips a
recipe whose row is already in ``rows.jsonl`` and reruns one that was killed half-way. The
recipe's settings come from the cell's ``recipe_args``; its ``device`` and ``seed`` from the cell.

A recipe measures several models (the teacher, its students, baselines). The cell's row holds them
as a list, ``recipe_models``, one dict per model with the fields the recipe wrote for it (bits per
byte, agreement with the teacher, decode state, tokens, wall time), beside the recipe's summary
(``recipe_summary``). Files the recipe writes besides (``losses.jsonl``, ``run.json``, rankings)
go to the cell's ``artifacts_dir`` under the run directory.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

from archbench.recipes import make_config, run_recipe

# cell fields a recipe takes when its config has a field of that name
CELL_SETTINGS = ("device", "seed")


def recipe_settings(cell: dict) -> dict:
    """The recipe's settings: the cell's ``recipe_args`` plus its device and seed."""
    name = cell["recipe"]
    settings = dict(cell.get("recipe_args") or {})
    fields = {f.name for f in dataclasses.fields(type(make_config(name)))}
    settings.update({k: cell[k] for k in CELL_SETTINGS if k in fields and cell.get(k) is not None})
    return settings


def run_recipe_cell(cell: dict, progress: Callable[[dict], None] | None = None) -> dict:
    """Run the cell's recipe; the fields of its row (``recipe_models``, ``recipe_summary``)."""
    from archbench.store import RunDir

    name = cell["recipe"]
    settings = recipe_settings(cell)
    with tempfile.TemporaryDirectory(prefix=f"archbench-recipe-{name}-") as scratch:
        out = Path(cell.get("artifacts_dir") or scratch)
        summary = run_recipe(name, settings, out, progress)
        models = [_model_row(r) for r in RunDir(out).rows()] if (out / "rows.jsonl").exists() else []
    if not models:
        raise RuntimeError(f"recipe {name!r} finished without writing a row for any model")
    return {"recipe_models": models, "recipe_summary": summary, "artifacts_dir": cell.get("artifacts_dir")}


def _model_row(row: dict) -> dict:
    """A model's row as the recipe wrote it, less what the cell's row says already."""
    return {k: v for k, v in row.items() if k not in ("key", "run_id", "suite", "started_at", "ended_at")}
