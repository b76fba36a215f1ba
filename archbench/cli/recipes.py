"""``archbench convert`` and ``archbench redundancy``: one recipe cell, run like any suite's cells.

Each command builds a one-cell suite (``mode: recipe``, the recipe's settings in ``recipe_args``)
and hands it to ``archbench run``'s own path: the recipe runs in a worker process, its row is keyed
and written to ``rows.jsonl``, a killed run resumes with ``--resume``, and the report shows the
teacher and students side by side. A suite file does the same for several recipes at once
(``suites/recipes-cpu.yaml``).
"""

from __future__ import annotations

import click

from archbench.cli.exits import fail


def recipe_suite(name: str, settings: dict, threads: int | None = None, plugins: tuple[str, ...] = ()) -> dict:
    """The one-cell suite of recipe ``name`` with ``settings`` (its device and seed become the cell's)."""
    args = dict(settings)
    defaults = {"mode": "recipe", "recipe": name, "timeout_s": 7 * 24 * 3600.0}
    for field in ("device", "seed"):
        if field in args:
            defaults[field] = args.pop(field)
    if threads:
        defaults["threads"] = threads
    defaults["recipe_args"] = {name: args}
    suite = {"name": f"recipe-{name}", "description": f"archbench convert {name}", "defaults": defaults, "sweep": {}}
    return {**suite, "plugins": list(plugins)} if plugins else suite


def run_recipe_command(name: str, assignments: list[str], out_dir, resume: bool, threads: int | None,
                       plugins: tuple[str, ...] = ()) -> None:
    from archbench.cli.run import run_suite_here
    from archbench.recipes import RecipeError, parse_overrides
    from archbench.suite import SuiteError, parse_suite

    source = f"archbench convert {name}"
    try:
        suite = parse_suite(recipe_suite(name, parse_overrides(assignments), threads, plugins), source=source)
        cells = suite.cells()
    except (RecipeError, SuiteError) as e:
        fail(str(e))
    run_suite_here(suite, source, cells, out_dir=out_dir, results_dir="results", resume=resume)


_SET = "A recipe setting, e.g. --set step1_tokens=50000, --set teacher_spec.steps=300 or --set device=cuda (repeatable)."
_OUT = "Run directory (default: results/recipe-<method>/<run-id>)."
_RESUME = "Continue the run in --out (or the latest of this recipe): a recipe with a row already is not run again."
_THREADS = "torch CPU threads (1 is fastest for these tiny models on a busy 2-core machine)."


@click.command()
@click.argument("method", metavar="METHOD")
@click.option("--teacher", default="default", show_default=True, help="'default' (a byte-level Llama pre-trained here on the stdlib corpus and cached) or a local transformers model directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help=_OUT)
@click.option("--resume", is_flag=True, help=_RESUME)
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS)
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE|FILE.py",
              help="Import a plugin first: a recipe it registers (archbench.recipes.register) becomes a METHOD (repeatable).")
def convert(method, teacher, overrides, out_dir, resume, threads, plugins):
    """Convert or distil a softmax transformer into an efficient student and measure both.

    \b
    radlads  attention -> linear attention (RADLADS): align, distil, fine-tune
    rad      redundancy-aware hybrid: replace the most redundant attention layers with Mamba2
    bridge   cross-attention knowledge transfer from a frozen big model (LLM Modules)
    NAME     a recipe registered by a --plugin

    The recipe runs as one cell of a run directory: rows.jsonl holds its row (teacher and
    students side by side, under recipe_models), artifacts/<key>/ its losses, run.json and the
    student's safetensors, report.html the recipe table. Exit codes as archbench run.

    \b
    Examples:
      archbench convert radlads --set kind=rad_gdn --set step1_tokens=50000
      archbench convert bridge --set steps=100 --threads 1
      archbench convert radlads --out results/r1 --resume     # finish a killed run
    """
    run_recipe_command(method, [f"teacher={teacher}", *overrides], out_dir, resume, threads, plugins)


@click.command()
@click.argument("model", default="default")
@click.option("--k", "k", type=click.IntRange(min=1), default=2, show_default=True, help="Attention layers to replace with Mamba2.")
@click.option("--search", type=click.Choice(["bo", "greedy"]), default="bo", show_default=True, help="Which search picks the layers (both are run and stored).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="A RAD setting, e.g. --set steps=100 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: results/recipe-rad/<run-id>).")
@click.option("--resume", is_flag=True, help=_RESUME)
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS)
def redundancy(model, k, search, overrides, out_dir, resume, threads):
    """Rank MODEL's attention layers by redundancy (self-speculative decoding acceptance with
    the layers skipped; Bayesian optimisation and greedy search), replace the k most redundant
    with Mamba2 mixers initialised from the attention weights, distil them, and compare with
    replacing k evenly spaced layers. MODEL: 'default' or a local transformers model directory.

    \b
    Example:
      archbench redundancy --k 3 --set steps=300 --threads 1
    """
    run_recipe_command("rad", [f"teacher={model}", f"k={k}", f"search={search}", *overrides], out_dir, resume, threads)
