"""Measuring a suite in rounds (``archbench run --rounds N``): each timing cell measured N times
in passes that alternate direction, every round's row kept, one pooled row per cell; failed
cells not repeated; resume counts only pooled cells as done."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from archbench.run.pooling import pool_rows
from archbench.run.runner import Runner
from archbench.store import RunDir, load
from archbench.suite import parse_suite

FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "budget_s": 0.05}


def _cells(archs):
    raw = {
        "name": "rounds",
        "plugins": ["faulty_mixers"],
        "defaults": {"d_model": 16, "n_heads": 2, "timeout_s": 60, "measure": FAST},
        "sweep": {"arch": list(archs), "seq_len": [8]},
    }
    suite = parse_suite(raw)
    return suite, suite.cells()


def test_rounds_alternate_direction_and_pool_every_ok_round(tmp_path):
    suite, cells = _cells(["softmax_attention", "test_raise", "linear_attention"])
    run_dir = RunDir(tmp_path / "run").create()
    runner = Runner(cells, run_dir, plugins=suite.model.plugins, rounds=3)
    assert runner.total_steps == 3 + 2 * 3
    summary = runner.run()
    assert summary.counts["ok"] == 2 and summary.failed == 1  # the first round's rows are what it counts
    rows = run_dir.rows()
    timed = [(r["arch"], r["round"]) for r in rows if r.get("round")]
    assert timed[:3] == [("softmax_attention", 1), ("test_raise", 1), ("linear_attention", 1)]
    # the failed cell is not repeated; round 2 runs last to first, round 3 first to last
    assert timed[3:] == [("linear_attention", 2), ("softmax_attention", 2), ("softmax_attention", 3), ("linear_attention", 3)]
    pooled = [r for r in rows if r.get("rounds") == 3 and r.get("round") is None]
    assert sorted(r["arch"] for r in pooled) == ["linear_attention", "softmax_attention"]
    for p in pooled:
        mine = [r for r in rows if r["key"] == p["key"] and r.get("round")]
        assert p["repeats"] == sum(r["repeats"] for r in mine) == len(p["time_samples_s"])
        assert p["round_medians_s"] == [r["time_median_s"] for r in mine]
        assert min(p["round_medians_s"]) <= p["time_median_s"] <= max(p["round_medians_s"])
    df = load(run_dir.path)  # the latest row per cell: pooled where there is one
    assert len(df) == 3
    assert set(df[df["status"] == "ok"]["rounds"]) == {3}


def test_pool_rows_keeps_the_last_row_of_a_cell_never_ok():
    rows = [{"status": "error", "error": "a"}, {"status": "oom", "error": "b"}]
    out = pool_rows(rows)
    assert out["status"] == "oom" and out["rounds"] == 2
    ok = [{"status": "ok", "time_samples_s": [1.0, 3.0], "time_median_s": 2.0, "warmup_calls": 1},
          {"status": "error"}, {"status": "ok", "time_samples_s": [2.0], "time_median_s": 2.0, "warmup_calls": 1}]  # fmt: skip
    out = pool_rows(ok, prefix="ab_")
    assert out["ab_rounds"] == 2 and out["repeats"] == 3 and out["time_median_s"] == 2.0 and out["warmup_calls"] == 2


def test_resume_counts_a_timing_cell_done_only_with_its_pooled_row(tmp_path):
    d = RunDir(tmp_path / "run").create()
    d.append({"key": "partial", "mode": "fwd", "status": "ok", "round": 2, "rounds": 3})
    d.append({"key": "pooled", "mode": "fwd", "status": "ok", "round": None, "rounds": 3})
    d.append({"key": "other_n", "mode": "fwd", "status": "ok", "round": None, "rounds": 2})
    d.append({"key": "task", "mode": "task", "status": "ok"})
    d.append({"key": "plain", "mode": "fwd", "status": "ok"})
    assert d.done_keys(rounds=3) == {"pooled", "task"}
    assert d.done_keys() == {"partial", "pooled", "other_n", "task", "plain"}


def test_cli_rounds(tmp_path, cli_env):
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: s
        defaults: {{d_model: 16, n_heads: 2, timeout_s: 60, measure: {FAST}}}
        sweep: {{arch: [softmax_attention, linear_attention], seq_len: [8]}}
    """))  # fmt: skip
    run = [sys.executable, "-m", "archbench.cli", "run", str(suite), "--no-report"]
    r = subprocess.run([*run, "--out", str(tmp_path / "a"), "--rounds", "2"], env=cli_env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "[round 2/2]" in r.stderr
    rows = RunDir(tmp_path / "a").rows()
    assert len(rows) == 2 * (2 + 1) and sum(r.get("round") is None for r in rows) == 2
    bad = subprocess.run([*run, "--rounds", "0"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--rounds" in bad.stderr
