"""Recipe cells (``mode: recipe``): the shipped recipe suites expand to one keyed cell per recipe,
each carrying its own recipe's settings; every misuse is a one-line SuiteError; other cells keep
their keys."""

import textwrap
from pathlib import Path

import pytest

from archbench.suite import SuiteError, load_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"

RECIPES = """
name: r
defaults:
  mode: recipe
  device: cpu
  recipe_args:
    radlads: {kind: rad_gdn, step1_tokens: 1000}
    rad: {k: 2, steps: 10}
sweep:
  recipe: [radlads, rad, bridge]
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cells_of(tmp_path, text, name="s.yaml"):
    return {c.recipe: c for c in load_suite(write(tmp_path, text, name)).cells()}


def error_of(tmp_path, text):
    p = write(tmp_path, text, "bad.yaml")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert "\n" not in msg, f"error should be one line: {msg!r}"
    assert str(p) in msg, "error should name the file"
    return msg


@pytest.mark.parametrize("name,recipes", [("recipes-cpu", ["radlads", "rad", "bridge"]),
                                          ("recipes-gpu", ["radlads", "rad", "bridge"]),
                                          ("recipes-real", ["radlads", "rad"])])  # fmt: skip
def test_shipped_recipe_suites_expand_to_one_cell_per_recipe(name, recipes):
    suite = load_suite(SUITES / f"{name}.yaml")
    cells = suite.cells()
    assert [c.recipe for c in cells] == recipes
    assert len(set(suite.keys())) == len(recipes)
    args = suite.model.defaults.recipe_args
    for c in cells:
        assert c.mode == "recipe" and c.arch is None
        assert c.recipe_args == args[c.recipe], "a cell carries its own recipe's settings, and only those"
        assert "device" not in c.recipe_args and "seed" not in c.recipe_args
        assert c.label == f"recipe {c.recipe} {c.device}"
        assert c.timeout_s >= 3600
    assert {c.device for c in cells} == ({"cpu"} if name == "recipes-cpu" else {"cuda"})


def test_a_recipe_cell_is_keyed_by_its_recipe_its_settings_device_and_seed(tmp_path):
    base = cells_of(tmp_path, RECIPES)
    assert base["rad"].identity() == {"mode": "recipe", "recipe": "rad", "device": "cpu", "seed": 0}
    assert base["bridge"].recipe_args == {}
    rad_changed = cells_of(tmp_path, RECIPES.replace("steps: 10", "steps: 11"), "b.yaml")
    assert rad_changed["rad"].key != base["rad"].key
    assert rad_changed["radlads"].key == base["radlads"].key, "another recipe's settings are not in the key"
    assert rad_changed["bridge"].key == base["bridge"].key
    run_settings = cells_of(tmp_path, RECIPES.replace("device: cpu", "device: cpu\n  timeout_s: 9"), "c.yaml")
    assert {r: c.key for r, c in run_settings.items()} == {r: c.key for r, c in base.items()}
    for change in ("device: cuda", "device: cpu\n  seed: 1", "device: cpu\n  threads: 2"):
        other = cells_of(tmp_path, RECIPES.replace("device: cpu", change), "d.yaml")
        assert not {c.key for c in other.values()} & {c.key for c in base.values()}, change
    threaded = cells_of(tmp_path, RECIPES.replace("device: cpu", "device: cpu\n  threads: 2"), "e.yaml")
    assert threaded["rad"].identity()["threads"] == 2


def test_a_seed_sweep_gives_distinct_cells(tmp_path):
    cells = load_suite(write(tmp_path, RECIPES.replace("recipe: [radlads, rad, bridge]", "recipe: rad\n  seed: [0, 1]"))).cells()
    assert [c.seed for c in cells] == [0, 1] and len({c.key for c in cells}) == 2
    assert cells[1].label == "recipe rad cpu seed=1"


def test_defaults_recipe_names_the_recipe(tmp_path):
    text = RECIPES.replace("  device: cpu\n", "  device: cpu\n  recipe: rad\n").replace("sweep:\n  recipe: [radlads, rad, bridge]\n", "sweep: {}\n")
    assert list(cells_of(tmp_path, text)) == ["rad"]


@pytest.mark.parametrize(
    "text,expect",
    [
        (RECIPES.replace("recipe: [radlads, rad, bridge]", "recipe: [radlads]\n  mode: [fwd, recipe]\n  arch: softmax_attention"),
         "sweep.mode: mode recipe cells go in a sweep of their own (arch, backend and shapes do not apply)"),
        (RECIPES + "  arch: softmax_attention\n", "sweep.arch: mode recipe cells go in a sweep of their own"),
        (RECIPES + "  seq_len: [64, 128]\n", "sweep.seq_len: mode recipe cells go in a sweep of their own"),
        (RECIPES.replace("device: cpu", "device: cpu\n  arch: softmax_attention"), "defaults.arch: mode recipe cells"),
        (RECIPES.replace("device: cpu", "device: cpu\n  d_model: 64"), "defaults.d_model: mode recipe cells"),
        (RECIPES + "arch_defaults: {softmax_attention: {window: 8}}\n", "arch_defaults: mode recipe cells"),
        (RECIPES.replace("recipe: [radlads, rad, bridge]", "seed: [0]"), "mode recipe needs a recipe (sweep.recipe or defaults.recipe); recipes: radlads, rad, bridge"),
        (RECIPES.replace("[radlads, rad, bridge]", "[radlads, radladz]"), "sweep.recipe[1]: unknown recipe 'radladz'; allowed: radlads, rad, bridge"),
        (RECIPES.replace("    rad: {k: 2, steps: 10}", "    radd: {k: 2}"), "defaults.recipe_args.radd: unknown recipe 'radd'; recipes: radlads, rad, bridge"),
        (RECIPES.replace("{k: 2, steps: 10}", "{kk: 2}"), "defaults.recipe_args.rad: rad: no setting 'kk'; settings: "),
        (RECIPES.replace("{k: 2, steps: 10}", "{teacher_spec: {d_modl: 8}}"), "defaults.recipe_args.rad: rad: teacher_spec has no setting 'd_modl'"),
        (RECIPES.replace("{k: 2, steps: 10}", "{device: cuda}"), "defaults.recipe_args.rad.device: a recipe cell's device is the cell's; set defaults.device"),
        (RECIPES.replace("{k: 2, steps: 10}", "{seed: 3}"), "defaults.recipe_args.rad.seed: a recipe cell's seed is the cell's; set defaults.seed"),
        (RECIPES.replace("{k: 2, steps: 10}", "5"), "defaults.recipe_args.rad: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_recipe_suite_errors(tmp_path, text, expect):
    msg = error_of(tmp_path, text)
    assert expect in msg, f"{expect!r} not in {msg!r}"


def test_recipe_outside_mode_recipe_is_an_error(tmp_path):
    text = "name: a\ndefaults: {recipe: rad}\nsweep: {arch: softmax_attention, seq_len: 8}\n"
    assert "recipe 'rad' is set but no cell has mode recipe; set mode: recipe" in error_of(tmp_path, text)


def test_recipe_args_are_checked_and_keep_other_cells_keys(tmp_path):
    plain = "name: a\ndefaults: {d_model: 64, n_heads: 4}\nsweep: {arch: softmax_attention, backend: sdpa, seq_len: [64, 128]}\n"
    with_args = plain.replace("n_heads: 4}", "n_heads: 4, recipe_args: {rad: {k: 2}}}")
    a = [c.key for c in load_suite(write(tmp_path, plain, "a.yaml")).cells()]
    b = load_suite(write(tmp_path, with_args, "b.yaml")).cells()
    assert [c.key for c in b] == a == ["2bdb7dbcb4e5af05", "7afc8cf0004a2c10"]  # the golden keys of tests/test_suite.py
    assert all(c.recipe is None and c.recipe_args is None and "recipe" not in c.identity() for c in b)
    assert "no setting 'kk'" in error_of(tmp_path, with_args.replace("k: 2", "kk: 2"))
