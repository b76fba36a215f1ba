"""A task cell end to end: suite -> worker (training progress streamed back) -> row -> report."""

from __future__ import annotations

import textwrap

from click.testing import CliRunner

from archbench.cli import main
from archbench.run.runner import Runner
from archbench.store import RunDir, load
from archbench.suite import load_suite

SUITE = """
name: tiny-tasks
defaults:
  device: cpu
  d_model: 32
  n_heads: 2
  vocab_size: 64
  task: mqar
  timeout_s: 300
  train: {steps: 12, batch_size: 16, lr: [1e-3, 3e-3], eval_every: 6, train_examples: 256, test_examples: 32}
  task_args: {mqar: {test_kv_pairs: [2, 4]}}
  measure: {warmup: 1, min_repeats: 2, max_repeats: 3, budget_s: 0.05, energy: false, roofline: false}
sweep:
  arch: [softmax_attention, gated_deltanet]
  mode: [task, decode]
  num_kv_pairs: [2]
  seq_len: [32]
"""


def test_task_cells_run_stream_progress_and_report(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SUITE))
    cells = load_suite(path).cells()
    assert sorted(c.mode for c in cells) == ["decode", "decode", "task", "task"]
    progress = []
    run_dir = RunDir(tmp_path / "run")
    run_dir.create()
    summary = Runner(cells, run_dir, env={}, on_progress=lambda cell, info: progress.append((cell.arch, info))).run()
    assert summary.counts["ok"] == 4, [r.get("error") for r in run_dir.rows()] if hasattr(run_dir, "rows") else None
    # 2 lrs x 1 seed x 2 evals per run, for each of the 2 task cells
    assert len(progress) == 8 and {p[1]["runs"] for p in progress} == {2}
    assert progress[0][1]["step"] == 6 and progress[1][1]["step"] == 12

    df = load(run_dir.path)
    tasks = df[df["mode"] == "task"]
    for _, r in tasks.iterrows():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["task_metric"] == "accuracy"
        assert r["best_lr"] in (1e-3, 3e-3) and len(r["lr_grid"]) == 2
        assert set(r["task_by_group"]) == {"kv=2", "kv=4"}
        assert r["tokens_seen"] == 2 * 12 * 16 * 32 and r["state_bytes"] > 0 and r["params"] > 0
        assert r["batch"] == 16 and r["task_config"]["num_kv_pairs"] == 2
    state = dict(zip(tasks["arch"], tasks["state_bytes"]))
    assert state["softmax_attention"] == 2 * 2 * 32 * 32 * 4, "KV cache of 2 layers x (k, v) x T x d x fp32"

    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", str(run_dir.path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert 'id="accuracy"' in page and "task=mqar, T=32, kv=2" in page
    assert 'data-div="task-0-decode_s_per_token"' in page, "decode rows of the same arch and width feed the latency Pareto chart"
    md = CliRunner().invoke(main, ["report", str(run_dir.path), "--format", "md"])
    assert md.exit_code == 0 and "mqar" in md.output
