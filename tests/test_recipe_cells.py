"""Recipes as cells: settings from KEY=VALUE, keyed rows run in workers, failures isolated,
resume after a kill, ``archbench convert``, the report's recipe tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.recipes import RecipeError, make_config, parse_overrides
from archbench.store import RunDir

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "fake_recipe.py"


def _suite(tmp_path, recipes, args="", name="rs") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        plugins: [{PLUGIN}]
        defaults:
          mode: recipe
          timeout_s: 60
          recipe_args: {{{args}}}
        sweep:
          recipe: [{", ".join(recipes)}]
    """))
    return path


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


def test_recipe_cells_run_in_workers_with_keys_and_isolated_failures(tmp_path):
    path = _suite(tmp_path, ["fake", "fake_broken"], args="fake: {steps: 5}")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert r.exit_code == 1, r.output  # one cell failed: exit 1, and the other still ran
    rows = {row["recipe"]: row for row in RunDir(out).rows()}
    assert set(rows) == {"fake", "fake_broken"} and len({row["key"] for row in rows.values()}) == 2
    ok, broken = rows["fake"], rows["fake_broken"]
    assert ok["status"] == "ok" and ok["mode"] == "recipe" and ok["recipe_summary"] == {"steps": 5}
    assert [m["model"] for m in ok["recipe_models"]] == ["teacher", "student"]
    assert all(m["steps"] == 5 for m in ok["recipe_models"]), "the cell's recipe_args reached the recipe"
    assert ok["code_path"], "measured in a worker process"
    assert (out / "artifacts" / ok["key"] / "rows.jsonl").is_file(), "the recipe's own files are kept per cell"
    assert broken["status"] == "error" and "asked to fail" in broken["error"]
    page = (out / "report.html").read_text()
    assert 'id="recipes"' in page and "student" in page


def test_the_seed_and_device_come_from_the_cell_and_are_in_the_key(tmp_path):
    path = _suite(tmp_path, ["fake"])
    text = path.read_text().replace("mode: recipe", "mode: recipe\n  seed: 7")
    path.write_text(text)
    from archbench.suite import load_suite

    (cell,) = load_suite(path).cells()
    assert cell.recipe == "fake" and cell.seed == 7 and cell.arch is None
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--no-report"]).exit_code == 0
    (row,) = RunDir(out).rows()
    assert row["key"] == cell.key and {m["seed"] for m in row["recipe_models"]} == {7}


def test_a_killed_recipe_run_resumes_without_rerunning_finished_recipes(tmp_path):
    marker = tmp_path / "killed"
    path = _suite(tmp_path, ["fake", "fake_kill"], args=f"fake_kill: {{marker: '{marker}'}}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "archbench.cli", "run", str(path), "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == -9 and marker.exists(), first.stderr[-2000:]  # the runner was killed by the recipe
    kept = RunDir(out).rows()
    assert [row["recipe"] for row in kept] == ["fake"], "the recipe finished before the kill keeps its row"
    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    rows = RunDir(out).rows()
    assert [row["recipe"] for row in rows] == ["fake", "fake_kill"], "resumed: fake not run again, fake_kill finished"
    assert rows[0] == kept[0] and rows[1]["status"] == "ok"


def test_convert_runs_one_recipe_cell_and_resumes(tmp_path):
    out = tmp_path / "conv"
    args = ["convert", "fake", "--plugin", str(PLUGIN), "--set", "steps=2", "--out", str(out), "--threads", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    (row,) = RunDir(out).rows()
    assert row["recipe"] == "fake" and row["threads"] == 1 and row["recipe_summary"] == {"steps": 2}
    assert json.loads((out / "run.json").read_text())["suite"] == "recipe-fake"
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0 and len(RunDir(out).rows()) == 1, "a finished recipe is not run again"


@pytest.mark.parametrize(
    "args,match",
    [
        (["convert", "alchemy"], "unknown recipe 'alchemy'"),
        (["convert", "rad", "--set", "kk=1"], "no setting 'kk'"),
        (["convert", "rad", "--set", "steps"], "KEY=VALUE"),
        (["redundancy", "--set", "stepz=3"], "no setting 'stepz'"),
    ],
)
def test_convert_errors_are_one_line_exit_2(args, match):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_shipped_recipe_suites_expand_to_one_cell_per_recipe(monkeypatch):
    pytest.importorskip("transformers")
    import torch

    from archbench.suite import load_suite

    cells = load_suite(ROOT / "suites" / "recipes-cpu.yaml").cells()
    assert [c.recipe for c in cells] == ["radlads", "rad", "bridge"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node
    for c in load_suite(ROOT / "suites" / "recipes-gpu.yaml").cells():
        cfg = make_config(c.recipe, {**c.recipe_args, "device": c.device})
        assert cfg.device == "cuda" and cfg.teacher_spec.d_model == 512 and cfg.teacher_spec.n_layers == 8
        assert cfg.teacher_spec.n_heads == 8  # the block replaced only the fields it names...
        assert cfg.teacher_spec.seed == 0  # ...and kept the others


def test_a_cuda_recipe_suite_without_a_gpu_is_refused_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(main, ["run", str(ROOT / "suites" / "recipes-gpu.yaml"), "--out", "/nonexistent/x"])
    assert r.exit_code == 2 and "CUDA" in r.output and "--device cpu" in r.output, r.output


def test_report_shows_recipe_cells_and_rows_of_older_runs_side_by_side():
    import pandas as pd

    from archbench.report import render_html

    cell = {"key": "c1", "mode": "recipe", "recipe": "radlads", "status": "ok", "recipe_models": [
        {"model": "teacher", "status": "ok", "bits_per_byte": 2.15, "state_bytes": 98304},
        {"model": "<b>student</b>", "status": "ok", "bits_per_byte": 2.13, "state_bytes": 65536}]}  # fmt: skip
    older = [{"key": "x", "recipe": "bridge", "recipe_label": "bridge", "status": "error", "error": "boom"}]
    page = render_html(pd.DataFrame([cell, *older]), [])
    assert 'id="recipes"' in page and "bits_per_byte" in page and "2.13" in page and "bridge" in page
    assert "<b>student</b>" not in page and "&lt;b&gt;student" in page
    assert "recipe radlads" in page, "the results table names a recipe cell by its recipe"
