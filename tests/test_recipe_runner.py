"""Recipes by name: settings from KEY=VALUE, recipe suites, failures isolated, the CLI."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.recipes import runner
from archbench.recipes.runner import RecipeError, load_recipe_suite, make_config, parse_overrides, run_suite


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(runner.RECIPES, "fake", ("fake_recipe", "FakeConfig"))


def test_make_config_applies_nested_overrides_and_refuses_unknown_keys():
    pytest.importorskip("transformers")
    cfg = make_config("radlads", parse_overrides(["step1_tokens=5000", "teacher_spec.steps=12", "kind=rad_rwkv6"]))
    assert cfg.step1_tokens == 5000 and cfg.teacher_spec.steps == 12 and cfg.kind == "rad_rwkv6"
    with pytest.raises(RecipeError, match="no setting 'step9_tokens'"):
        make_config("radlads", {"step9_tokens": 1})
    with pytest.raises(RecipeError, match="teacher_spec has no setting 'colour'"):
        make_config("radlads", {"teacher_spec.colour": 1})
    with pytest.raises(RecipeError, match="unknown recipe 'alchemy'"):
        make_config("alchemy")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["steps"])


def test_recipe_suite_runs_each_recipe_and_isolates_failures(tmp_path, fake):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent("""
        name: rs
        recipes:
          - {recipe: fake, steps: 5}
          - {recipe: fake, fail: true, label: broken}
          - {recipe: fake}
    """))
    raw = load_recipe_suite(path)
    run = run_suite(raw, tmp_path / "out")
    rows = run.rows()
    assert [r["recipe_label"] for r in rows] == ["fake", "fake", "broken", "fake", "fake"]
    broken = [r for r in rows if r["status"] != "ok"]
    assert len(broken) == 1 and "asked to fail" in broken[0]["error"], "a failed recipe is a row; the next still runs"
    assert (tmp_path / "out" / "0-fake" / "rows.jsonl").is_file() and run.read_meta()["status"] == "complete"

    assert len({r["key"] for r in rows}) == len(rows), "every gathered row has its own key"
    from archbench.store import load

    assert len(load(tmp_path / "out")) == len(rows), "the report sees every row, not the last per (missing) key"

    r = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 1 and (tmp_path / "cli" / "report.html").is_file(), r.output


@pytest.mark.parametrize(
    "text,match",
    [
        ("name: x\nrecipes: []\n", "non-empty 'recipes:'"),
        ("name: x\nrecipes: [{steps: 1}]\n", "needs 'recipe: NAME'"),
        ("name: x\nrecipes: [{recipe: fake, stepz: 1}]\n", "no setting 'stepz'"),
        ("name: x\nextra: 1\nrecipes: [{recipe: fake}]\n", "unknown key extra"),
    ],
)
def test_recipe_suite_errors_are_one_line(tmp_path, fake, text, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match) as e:
        load_recipe_suite(path)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["run", str(path)])
    assert r.exit_code == 2


def test_shipped_recipe_suite_validates():
    pytest.importorskip("transformers")
    from pathlib import Path

    raw = load_recipe_suite(Path(__file__).parent.parent / "suites" / "recipes-cpu.yaml")
    assert {e["recipe"] for e in raw["recipes"]} == {"radlads", "rad", "bridge"}


def test_the_gpu_recipe_suite_validates_with_a_block_of_teacher_settings(monkeypatch):
    pytest.importorskip("transformers")
    from pathlib import Path

    import torch

    path = Path(__file__).parent.parent / "suites" / "recipes-gpu.yaml"
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="sees no CUDA device; use device=cpu"):
            load_recipe_suite(path)  # here: refused in one line, before anything runs
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node
    raw = load_recipe_suite(path)
    for entry in raw["recipes"]:
        cfg = make_config(entry["recipe"], {k: v for k, v in entry.items() if k != "recipe"})
        assert cfg.device == "cuda" and cfg.teacher_spec.d_model == 512 and cfg.teacher_spec.n_layers == 8
        assert cfg.teacher_spec.n_heads == 8  # the block replaced only the fields it names...
        assert cfg.teacher_spec.seed == 0  # ...and kept the others
    with pytest.raises(RecipeError, match="teacher_spec has no setting 'width'"):
        make_config("radlads", {"teacher_spec": {"width": 3}})


def test_report_shows_recipe_rows_side_by_side():
    import pandas as pd

    from archbench.report import render_html

    rows = [
        {"key": "t", "recipe": "radlads", "recipe_label": "radlads", "model": "teacher", "status": "ok", "bits_per_byte": 2.15, "state_bytes": 98304},
        {"key": "s", "recipe": "radlads", "recipe_label": "radlads", "model": "<b>student</b>", "status": "ok", "bits_per_byte": 2.13, "state_bytes": 65536},
        {"key": "x", "recipe": "bridge", "recipe_label": "bridge", "status": "error", "error": "boom"},
    ]  # fmt: skip
    page = render_html(pd.DataFrame(rows), [])
    assert 'id="recipes"' in page and "bits_per_byte" in page and "2.13" in page
    assert "<b>student</b>" not in page and "&lt;b&gt;student" in page
