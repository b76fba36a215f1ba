"""Interleaved A/B runs: two copies of the code, alternating cells, pooled rows, a verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.run.ab import ABError, materialize, pool_rows
from archbench.cli import main
from archbench.store import load

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
name: ab-tiny
defaults:
  device: cpu
  d_model: 32
  n_heads: 2
  threads: 1
  timeout_s: 120
  measure: {warmup: 2, min_repeats: 15, max_repeats: 15, budget_s: 5.0, energy: false, roofline: false}
sweep:
  arch: [linear_attention]
  mode: [fwd]
  seq_len: [64, 128]
"""


def _copy_code(dest: Path, slow: bool = False) -> Path:
    """A copy of this archbench package; ``slow`` makes linear attention's op sleep 5 ms per call."""
    shutil.copytree(ROOT / "archbench", dest / "archbench", ignore=shutil.ignore_patterns("__pycache__"))
    if slow:
        op = dest / "archbench" / "ops" / "linear_attention.py"
        src = op.read_text()
        marker = "\ndef linear_attention("
        assert marker in src
        op.write_text(src.replace(marker, "\nimport time as _ab_time\n" + marker, 1) + textwrap.dedent('''

            _ab_fast = linear_attention


            def linear_attention(*args, **kwargs):
                _ab_time.sleep(0.005)
                return _ab_fast(*args, **kwargs)
        '''))
    return dest


def test_pool_rows_recomputes_timing_over_rounds():
    rows = [
        {"status": "ok", "time_samples_s": [1.0, 2.0], "time_median_s": 1.5, "tokens_per_s": 100.0, "warmup_calls": 2},
        {"status": "error", "error": "x"},
        {"status": "ok", "time_samples_s": [3.0, 4.0, 5.0], "time_median_s": 4.0, "tokens_per_s": 37.5, "warmup_calls": 2},
    ]
    out = pool_rows(rows)
    assert out["time_samples_s"] == [1.0, 2.0, 3.0, 4.0, 5.0] and out["time_median_s"] == 3.0
    assert out["repeats"] == 5 and out["ab_rounds"] == 2 and out["warmup_calls"] == 4
    assert out["tokens_per_s"] == pytest.approx(50.0)  # tokens per call / pooled median
    failed = pool_rows([{"status": "oom", "error": "big"}])
    assert failed["status"] == "oom" and failed["ab_rounds"] == 1


def test_materialize_sides(tmp_path):
    assert materialize(".", "base", tmp_path).code_path is None
    with pytest.raises(ABError, match="must hold the archbench package"):
        materialize(str(tmp_path), "base", tmp_path)
    with pytest.raises(ABError, match="not a revision"):
        materialize("no-such-rev-xyz", "head", tmp_path)
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0:
        side = materialize("HEAD", "head", tmp_path)
        assert side.spec.startswith("HEAD@")
        assert (Path(side.code_path) / "archbench" / "__init__.py").is_file()


def test_a_side_with_the_older_layout_runs_its_own_worker(tmp_path):
    """A revision from before archbench/run/ keeps its worker at archbench/worker.py: a worker
    running that copy starts from there, and the cell is measured by that copy."""
    from archbench.run.pool import worker_module
    from archbench.run.runner import Runner
    from archbench.store import RunDir
    from archbench.suite import parse_suite

    old = _copy_code(tmp_path / "old") / "archbench"
    worker = (old / "run" / "worker.py").read_text()
    mark = 'result["code_path"] = code_path'
    assert mark in worker
    (old / "worker.py").write_text(worker.replace(mark, mark + '; result["old_layout_worker"] = True'))
    shutil.rmtree(old / "run")
    shutil.rmtree(old / "cli")
    assert worker_module(str(old.parent)) == "archbench.worker"
    assert worker_module(str(ROOT)) == worker_module(None) == "archbench.run.worker"
    cell = parse_suite(__import__("yaml").safe_load(SUITE)).cells()[0]
    runner = Runner([], RunDir(tmp_path / "ab").create(), env={}, code_path=str(old.parent))
    try:
        row = runner.run_one(cell)
    finally:
        runner.close()
    assert row["status"] == "ok", row["error"]
    assert row["code_path"] == str(old.parent) and row.get("old_layout_worker"), "the older copy's worker measured it"


@pytest.mark.slow
def test_ab_catches_a_slowdown_and_passes_identical_code(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    fast = _copy_code(tmp_path / "fast")
    slow = _copy_code(tmp_path / "slow", slow=True)

    r = CliRunner().invoke(main, ["ab", str(suite), "--base", str(fast), "--head", str(slow), "--rounds", "8",
                                  "--out", str(tmp_path / "ab1"), "--format", "md", "-o", str(tmp_path / "c.md")])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "regress" in (tmp_path / "c.md").read_text().lower()
    base, head = load(tmp_path / "ab1" / "base"), load(tmp_path / "ab1" / "head")
    assert set(base["key"]) == set(head["key"]) and len(base) == 2
    assert set(base["code_path"]) == {str(fast)} and set(head["code_path"]) == {str(slow)}, "each side ran its own code"
    assert (base["ab_rounds"] == 8).all() and (base["repeats"] == 120).all()
    assert all(len(m) == 8 for m in head["ab_round_medians_s"])
    meta = [json.loads((tmp_path / "ab1" / s / "run.json").read_text()) for s in ("base", "head")]
    assert meta[0]["ab_id"] == meta[1]["ab_id"], "both sides name one A/B run: compare pairs their rounds"
    assert "signed-rank" in (tmp_path / "c.md").read_text() or "paired rounds" in (tmp_path / "c.md").read_text()
    assert all(a == [0] for a in head["cpu_affinity"]) and all(a == [0] for a in base["cpu_affinity"]), "same core"
    # interleaved: within a cell the two sides' rounds overlap in time (A B, B A)
    assert (head["time_median_s"] > base["time_median_s"] + 4e-3).all()

    # identical code: no verdict. Cells of a few ms (sub-millisecond calls are dominated by
    # per-process effects such as memory layout, which no interleaving cancels)
    bigger = tmp_path / "big.yaml"
    bigger.write_text(textwrap.dedent(SUITE).replace("d_model: 32", "d_model: 128").replace("[64, 128]", "[1024]"))
    same = CliRunner().invoke(main, ["ab", str(bigger), "--base", str(fast), "--head", ".", "--rounds", "8",
                                     "--out", str(tmp_path / "ab2")])  # fmt: skip
    assert same.exit_code == 0, same.output


def test_ab_pairs_cells_that_differ_in_a_field(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(SUITE).replace("linear_attention", "softmax_attention"))
    r = CliRunner().invoke(main, ["ab", str(suite), "--base-set", "sweep.backend=sdpa", "--head-set", "sweep.backend=naive",
                                  "--rounds", "1", "--out", str(tmp_path / "ab"), "--format", "json"])  # fmt: skip
    assert r.exit_code == 3, r.output  # one round cannot show anything: underpowered
    head = load(tmp_path / "ab" / "head")
    assert set(head["backend"]) == {"naive"} and head["ab_head_key"].notna().all()
    assert set(head["key"]) == set(load(tmp_path / "ab" / "base")["key"])
    bad = CliRunner().invoke(main, ["ab", str(suite), "--head-set", "sweep.seq_len=[256]", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "pair one to one" in bad.output


def test_too_few_rounds_are_underpowered(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(SUITE).replace("[64, 128]", "[64]"))
    r = CliRunner().invoke(main, ["ab", str(suite), "--rounds", "2", "--out", str(tmp_path / "ab")])
    assert r.exit_code == 3, r.output
    assert "UNDERPOWERED" in r.output and "needs >= 8 rounds" in r.output
    for side in ("base", "head"):  # a new worker process per side per round
        assert len(list((tmp_path / "ab" / side / "logs").glob("worker-*.log"))) == 2
    # compare pairs the same two directories (one ab_id); the flag turns exit 3 into 0
    both = [str(tmp_path / "ab" / s) for s in ("base", "head")]
    assert CliRunner().invoke(main, ["compare", *both, "--alpha", "0.01"]).exit_code == 3
    assert CliRunner().invoke(main, ["compare", *both, "--alpha", "0.01", "--allow-underpowered"]).exit_code == 0
