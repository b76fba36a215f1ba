"""Isolation: a raising, crashing (SIGABRT), hanging or OOM-ing cell becomes a row and the
sweep goes on; exit codes; resume after SIGKILL completes exactly the missing cells."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from archbench.run.runner import Runner
from archbench.store import RunDir, load, read_rows
from archbench.suite import parse_suite

FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "budget_s": 0.05}


def _suite(archs, seq_lens=(16,), timeout_s=60, extra=None):
    raw = {
        "name": "iso",
        "plugins": ["faulty_mixers"],
        "defaults": {"d_model": 16, "n_heads": 2, "timeout_s": timeout_s, "measure": FAST},
        "sweep": {"arch": list(archs), "seq_len": list(seq_lens), **(extra or {})},
    }
    return parse_suite(raw)


def test_failures_are_isolated_and_recorded(tmp_path):
    suite = _suite(["test_raise", "test_oom", "test_abort", "softmax_attention", "test_hang", "linear_attention"], timeout_s=60)
    cells = suite.cells()
    # the hang needs a short timeout; every other cell keeps the long one
    cells = [c.model_copy(update={"timeout_s": 4.0}) if c.arch == "test_hang" else c for c in cells]
    run_dir = RunDir(tmp_path / "run").create()
    summary = Runner(cells, run_dir, plugins=suite.model.plugins).run()
    rows = {r["arch"]: r for r in run_dir.rows()}
    assert len(rows) == 6  # every cell has a row; nothing stopped the sweep
    assert rows["test_raise"]["status"] == "error" and "deliberate failure" in rows["test_raise"]["error"]
    assert rows["test_oom"]["status"] == "oom"
    assert rows["test_abort"]["status"] == "error"
    assert "SIGABRT" in rows["test_abort"]["error"]
    # actionable: the crashing frame faulthandler saw, the failing line, and where the full log is
    abort = rows["test_abort"]["error"]
    assert "Fatal Python error: Aborted" in abort and "faulty_mixers.py" in abort and "Extension modules" not in abort
    assert Path(abort.rsplit("full log: ", 1)[1]).is_file()
    raised = rows["test_raise"]["error"]
    assert 'raise ValueError("deliberate failure' in raised and Path(raised.rsplit("full traceback: ", 1)[1]).is_file()
    assert rows["test_hang"]["status"] == "timeout" and "timeout" in rows["test_hang"]["error"]
    assert rows["softmax_attention"]["status"] == "ok" and rows["linear_attention"]["status"] == "ok"
    for r in rows.values():
        assert r["key"] and r["started_at"] and r["env"]["torch"]
    ok = rows["softmax_attention"]
    assert ok["time_median_s"] > 0 and ok["repeats"] >= 2 and len(ok["time_samples_s"]) == ok["repeats"]
    assert ok["tokens_per_s"] > 0 and ok["peak_mem_bytes"] >= 0 and ok["mem_method"].startswith("rss_sampled")
    assert ok["peak_tflops"] > 0 and ok["pct_peak_flops"] > 0 and ok["kernels"] == ["torch.sdpa"]
    assert ok["bound"] in ("compute", "memory") and ok["pct_of_roof"] > 0 and ok["min_bytes"] > 0
    assert ok["energy_source"] in ("none", "rapl") and (ok["energy_reason"] or ok["energy_j_per_call"])
    assert summary.counts["ok"] == 2 and summary.failed == 3  # error x2 + timeout; oom is a result
    # the crashed and hung workers were replaced: three worker logs, not one per cell
    assert len(list(run_dir.logs.glob("worker-*.log"))) == 3


def test_healthy_worker_runs_many_cells(tmp_path):
    suite = _suite(["softmax_attention", "linear_attention"], seq_lens=(8, 16, 32))
    run_dir = RunDir(tmp_path / "run").create()
    summary = Runner(suite.cells(), run_dir).run()
    assert summary.counts["ok"] == 6
    assert len(list(run_dir.logs.glob("worker-*.log"))) == 1


def _cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "archbench.cli", *args], env=env, capture_output=True, text=True, **kw)


def _write_suite(tmp_path, archs, seq_lens, name="cli"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            plugins: [faulty_mixers]
            defaults:
              d_model: 16
              n_heads: 2
              timeout_s: 60
              measure: {json.dumps(FAST)}
            sweep:
              arch: {json.dumps(archs)}
              seq_len: {json.dumps(seq_lens)}
            """
        )
    )
    return p


def test_cli_exit_codes(tmp_path, cli_env):
    bad = _write_suite(tmp_path, ["test_raise", "softmax_attention"], [8], name="bad")
    r = _cli(["run", str(bad), "--out", str(tmp_path / "a"), "--no-report"], cli_env, timeout=240)
    assert r.returncode == 1, r.stderr
    r = _cli(["run", str(bad), "--out", str(tmp_path / "b"), "--no-report", "--allow-failures"], cli_env, timeout=240)
    assert r.returncode == 0, r.stderr
    # --out on an existing run without --resume is refused (rows are never clobbered)
    r = _cli(["run", str(bad), "--out", str(tmp_path / "b")], cli_env, timeout=60)
    assert r.returncode == 2 and "--resume" in r.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nsweep: {arch: softmax_attention, seq_lenn: [1]}\n")
    r = _cli(["run", str(typo)], cli_env, timeout=60)
    assert r.returncode == 2 and "seq_lenn" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_resume_after_sigkill_completes_exactly_the_missing_cells(tmp_path, cli_env):
    lens = [8, 16, 24, 32, 40, 48]
    suite = _write_suite(tmp_path, ["test_slow"], lens, name="resume")
    out = tmp_path / "run"
    env = dict(cli_env, ARCHBENCH_TEST_SLOW_S="0.25")
    proc = subprocess.Popen(
        [sys.executable, "-m", "archbench.cli", "run", str(suite), "--out", str(out), "--no-report"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    rows_path = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(read_rows(rows_path)) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-sweep
    proc.wait()
    first = read_rows(rows_path)
    assert 2 <= len(first) < len(lens), "the kill should land mid-sweep"
    first_keys = {r["key"] for r in first}

    r = _cli(["run", str(suite), "--out", str(out), "--resume", "--no-report"], env, timeout=240)
    assert r.returncode == 0, r.stderr
    rows = read_rows(rows_path)
    second_keys = [r["key"] for r in rows[len(first):]]
    assert set(second_keys).isdisjoint(first_keys), "resume re-ran a finished cell"
    assert len(second_keys) == len(set(second_keys)) == len(lens) - len(first)
    df = load(out)
    assert sorted(df["seq_len"]) == lens and set(df["status"]) == {"ok"}
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["resumed_at"]


def test_resume_reruns_failed_cells_and_load_keeps_the_latest(tmp_path):
    suite = _suite(["softmax_attention"], seq_lens=(8, 16))
    cells = suite.cells()
    run_dir = RunDir(tmp_path / "run").create()
    run_dir.append({"key": cells[0].key, "status": "error", "error": "flaky", "arch": "softmax_attention", "seq_len": 8})
    run_dir.append({"key": cells[1].key, "status": "ok", "arch": "softmax_attention", "seq_len": 16})
    done = run_dir.done_keys()
    assert done == {cells[1].key}
    Runner(cells, run_dir).run(skip_keys=done)
    assert len(read_rows(run_dir.rows_path)) == 3
    df = load(run_dir.path)
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    assert len(load(run_dir.path, all_rows=True)) == 3


def test_stop_after_oom_skips_longer_lengths_of_the_same_curve(tmp_path):
    raw = {
        "name": "oom",
        "plugins": ["faulty_mixers"],
        "defaults": {"d_model": 16, "n_heads": 2, "stop_after_oom": True, "measure": FAST},
        "sweep": {"arch": ["test_oom_long", "softmax_attention"], "seq_len": [16, 32, 64, 128]},
    }
    cells = parse_suite(raw).cells()
    run_dir = RunDir(tmp_path / "run").create()
    Runner(cells, run_dir, plugins=["faulty_mixers"]).run()
    status = {(r["arch"], r["seq_len"]): r["status"] for r in run_dir.rows()}
    assert [status[("test_oom_long", T)] for T in (16, 32, 64, 128)] == ["ok", "oom", "skipped", "skipped"]
    assert all(status[("softmax_attention", T)] == "ok" for T in (16, 32, 64, 128))  # other curves unaffected
    skipped = next(r for r in run_dir.rows() if r["status"] == "skipped")
    assert "seq_len=32" in skipped["error"]


def test_pooled_runs_start_the_longest_training_first():
    from archbench.run.plan import task_cost
    from archbench.run.runner import schedule

    raw = {
        "name": "order",
        "defaults": {"device": "cpu", "d_model": 16, "n_heads": 2, "vocab_size": 256, "task": "mqar",
                     "train": {"steps": 10, "batch_size": 8, "lr": [1e-3, 1e-2]}},  # fmt: skip
        "sweep": {"arch": ["softmax_attention"], "mode": ["decode", "task"], "num_kv_pairs": [2],
                  "seq_len": [16, 64], "d_model": [16, 32]},  # fmt: skip
    }
    cells = parse_suite(raw).cells()
    order = [c for _, c in schedule(list(enumerate(cells)))]
    kinds = [c.mode for c in order]
    assert kinds == sorted(kinds, key=lambda m: m != "task"), "task cells first"
    costs = [task_cost(c) for c in order if c.mode == "task"]
    assert costs == sorted(costs, reverse=True) and costs[0] == 8 * costs[-1]  # 4x the tokens, 2x the width
    timing = [c for c in order if c.mode != "task"]
    assert timing == [c for c in cells if c.mode != "task"], "timing cells keep the suite's order"


def test_task_cells_run_in_parallel_and_timing_cells_alone(tmp_path):
    raw = {
        "name": "jobs",
        "plugins": ["faulty_mixers"],
        "defaults": {"device": "cpu", "d_model": 16, "n_heads": 2, "vocab_size": 32, "task": "mqar", "timeout_s": 120,
                     "train": {"steps": 40, "batch_size": 16, "lr": 1e-3, "eval_every": 20, "train_examples": 256,
                               "test_examples": 16},
                     "measure": {**FAST, "energy": False, "roofline": False}},  # fmt: skip
        "sweep": {"arch": ["softmax_attention", "linear_attention", "test_raise", "test_abort"], "mode": ["task", "decode"],
                  "num_kv_pairs": [2], "seq_len": [16]},  # fmt: skip
        "exclude": [{"arch": ["test_raise", "test_abort"], "mode": "decode"}],
    }
    suite = parse_suite(raw)
    cells = suite.cells()
    run_dir = RunDir(tmp_path / "run").create()
    seen, in_flight, most, alone = [], set(), [0], []

    def on_start(i, cell):
        if cell.mode != "task":
            alone.append(not in_flight)  # a timing cell starts only when no other cell is running
        in_flight.add(cell.key)
        most[0] = max(most[0], len(in_flight))

    runner = Runner(cells, run_dir, plugins=suite.model.plugins, jobs=2, on_start=on_start,
                    on_row=lambda i, cell, row: in_flight.discard(cell.key),
                    on_progress=lambda c, info: seen.append(c.key))  # fmt: skip
    summary = runner.run()
    rows = run_dir.rows()
    assert sorted((r["arch"], r["mode"]) for r in rows) == sorted((c.arch, c.mode) for c in cells)  # no row lost
    by = {(r["arch"], r["mode"]): r for r in rows}
    assert by[("test_raise", "task")]["status"] == "error" and "SIGABRT" in by[("test_abort", "task")]["error"]
    tasks = [by[(a, "task")] for a in ("softmax_attention", "linear_attention")]
    assert all(r["status"] == "ok" and r["threads_used"] == max(1, (os.cpu_count() or 1) // 2) for r in tasks)
    assert {c.key for c in cells if c.mode == "task" and not c.arch.startswith("test_")} <= set(seen)
    assert summary.counts["ok"] == 4 and summary.failed == 2
    assert most[0] == 2 and alone == [True, True]  # two task cells at once; the two decode cells alone


def test_a_cell_is_sent_with_its_artifacts_dir_in_the_run_directory(tmp_path):
    cell = _suite(["softmax_attention"]).cells()[0]
    run_dir = RunDir(tmp_path / "run").create()
    sent = Runner([cell], run_dir, env={}).payload(cell, threads=2)
    assert sent["artifacts_dir"] == str(tmp_path / "run" / "artifacts" / cell.key)
    assert sent["key"] == cell.key and sent["threads"] == 2 and sent["arch"] == "softmax_attention"
    assert not (tmp_path / "run" / "artifacts").exists()  # made by whoever writes there
    alone = Runner([cell], None, env={}).payload(cell)  # no run directory: nowhere to put artifacts
    assert "artifacts_dir" not in alone and alone["key"] == cell.key and alone["threads"] == cell.threads


def test_jobs_must_be_positive(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="jobs must be >= 1"):
        Runner([], RunDir(tmp_path / "run").create(), env={}, jobs=0)


def test_crash_summary_keeps_the_crashing_frames_not_the_module_list():
    from archbench.run.worker import crash_summary

    log = (
        "cell abc: x/ref fwd\n"
        "Fatal Python error: Segmentation fault\n\n"
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/w/archbench/run/worker.py", line 80 in _watch_lifeline\n\n'
        "Current thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/p/plugin.py", line 30 in forward\n'
        '  File "/t/module.py", line 1511 in _call_impl\n'
        '  File "/a/bench.py", line 99 in call\n'
        '  File "/a/timing.py", line 50 in run\n'
        '  File "/a/timing.py", line 10 in time_fn\n\n'
        "Extension modules: numpy.core._multiarray_umath, torch._C, " + "x, " * 400 + "(total: 90)\n"
    )
    text = crash_summary(log, "/run/logs/worker-1.log")
    lines = text.splitlines()
    assert lines[0] == "Fatal Python error: Segmentation fault"
    assert lines[1] == '  File "/p/plugin.py", line 30 in forward' and len(lines) == 6  # 4 innermost frames
    assert "_watch_lifeline" not in text and "Extension modules" not in text
    assert lines[-1] == "full log: /run/logs/worker-1.log"
    assert crash_summary("plain output\n", None) == "log tail: plain output"
