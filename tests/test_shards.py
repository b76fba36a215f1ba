"""Sharding and one worker per device: the plan splits a sweep by key and expected cost, the N
shards of a sweep written into one run directory give exactly the keys of one run, readers and
``archbench status`` see every shard, and the scheduler pins a worker per (fake) GPU so that no
two cells ever share one."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.run import plan
from archbench.cli import main
from archbench.run.pool import cpu_slots, gpu_slots
from archbench.run.runner import Runner
from archbench.store import RunDir, load, read_rows
from archbench.suite import load_suite, parse_suite

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PLUGIN = TESTS / "shard_plugin.py"
FAST = {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.01, "energy": False, "roofline": False}
# the smoke suite cut to 4 cells (both archs, fwd, T=256 and 512), its measurements shortened
SMOKE_SETS = ["sweep.mode=[fwd]", "sweep.seq_len=[256,512]", "sweep.backend=[sdpa,chunked]", "defaults.measure.budget_s=0.05",
              "defaults.measure.min_repeats=2", "defaults.measure.warmup=1"]  # fmt: skip


def _probe_suite(path: Path, seq_lens, arch="probe_sleep", extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        name: probe
        plugins: [{json.dumps(str(PLUGIN))}]
        defaults: {{d_model: 16, n_heads: 2, timeout_s: 60, measure: {json.dumps(FAST)}}}
        sweep:
          arch: {json.dumps([arch] if isinstance(arch, str) else arch)}
          seq_len: {json.dumps(list(seq_lens))}
        """) + extra)  # fmt: skip
    return path


def _cells(n_lens=16, batches=(1, 4, 16)):
    raw = {"name": "p", "defaults": {"d_model": 512, "n_heads": 8},
           "sweep": {"arch": ["softmax_attention", "linear_attention"], "mode": ["fwd", "fwd_bwd"],
                     "seq_len": [512 * (k + 1) for k in range(n_lens)], "batch": list(batches)}}  # fmt: skip
    return parse_suite(raw).cells()


def test_shards_partition_the_sweep_deterministically_and_balance_its_cost():
    cells = _cells()
    n = 4
    owner = plan.assign_shards(cells, n)
    shuffled = list(cells)
    random.Random(3).shuffle(shuffled)
    again = dict(zip((c.key for c in shuffled), plan.assign_shards(shuffled, n)))
    assert all(again[c.key] == s for c, s in zip(cells, owner)), "a cell's shard depends on the cells, not their order"
    parts = [plan.shard(cells, i, n) for i in range(n)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cells)  # each cell in exactly one shard
    cost = dict(zip((c.key for c in cells), plan.costs(cells)))
    loads = [sum(cost[c.key] for c in p) for p in parts]
    assert max(loads) <= 1.05 * min(loads), loads  # balanced by expected cost...
    longest = max(cells, key=lambda c: cost[c.key])
    naive = [sum(cost[c.key] for k, c in enumerate(sorted(cells, key=lambda c: c.key)) if k % n == i) for i in range(n)]
    assert max(loads) / min(loads) < max(naive) / min(naive)  # better than dealing cells out by key
    # ...by cost, not by count: one very long cell gets a shard nearly to itself
    huge = parse_suite({"name": "h", "defaults": {"d_model": 1024, "n_heads": 8, "batch": 64, "mode": "fwd_bwd"},
                        "sweep": {"arch": ["softmax_attention"], "seq_len": [32768]}}).cells()  # fmt: skip
    skewed = huge + cells[:20]
    owner = plan.assign_shards(skewed, 2)
    assert owner.count(owner[0]) == 1  # the long cell's shard holds nothing else
    assert plan.expected_seconds(longest) > plan.expected_seconds(min(cells, key=lambda c: cost[c.key]))
    assert longest.arch == "softmax_attention" and longest.seq_len == 8192 and longest.batch == 16 and longest.mode == "fwd_bwd"
    linear = next(c for c in cells if c.arch == "linear_attention" and c.seq_len == 8192 and c.batch == 16 and c.mode == "fwd_bwd")
    assert plan.expected_seconds(linear) < plan.expected_seconds(longest)  # T^2 costs more than T at the same shape


def test_bad_shards_gpus_and_workers_are_one_line():
    assert plan.parse_shard("1/2") == (1, 2)
    for bad in ("3/2", "2/2", "0/0", "a/b", "1"):
        with pytest.raises(plan.PlanError) as e:
            plan.parse_shard(bad)
        assert "\n" not in str(e.value) and "--shard" in str(e.value)
    assert plan.parse_gpus("all", [0, 1, 2]) == [0, 1, 2] and plan.parse_gpus("0,2", [0, 1, 2]) == [0, 2]
    with pytest.raises(plan.PlanError, match="GPU 5 is not on this machine"):
        plan.parse_gpus("0,5", [0, 1])
    with pytest.raises(plan.PlanError, match="no CUDA GPU"):
        plan.parse_gpus("all", [])
    for bad in ("x", "1,1", ""):
        with pytest.raises(plan.PlanError):
            plan.parse_gpus(bad, [0, 1])
    sets = plan.core_sets(3, range(8))
    assert sets == [[0, 1, 2], [3, 4, 5], [6, 7]]
    with pytest.raises(plan.PlanError, match="at most --workers 2"):
        plan.core_sets(3, [0, 1])


@pytest.mark.parametrize("args, says", [
    (["--shard", "3/2"], "shard index must be below"),
    (["--gpus", "7", "--device", "cuda"], "GPU 7 is not on this machine"),
    (["--shard", "0/2"], "needs --out"),
    (["--executor", "ray"], "needs --shards"),
    (["--shards", "2"], "go with --executor"),
])  # fmt: skip
def test_cli_refuses_bad_scale_out_input_with_one_line(args, says):
    r = CliRunner().invoke(main, ["run", str(ROOT / "suites/smoke.yaml"), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], r.output


def test_smoke_in_two_shards_gives_the_keys_of_one_run_and_one_report(tmp_path, cli_env):
    """The issue's done-when, on the smoke suite cut to 4 cells: shard 1/2 then shard 0/2 into
    one --out, then the report renders every cell and status says both are complete."""
    out = tmp_path / "run"
    sets = [a for s in SMOKE_SETS for a in ("--set", s)]
    for i in (1, 0):  # any order
        r = subprocess.run([sys.executable, "-m", "archbench.cli", "run", str(ROOT / "suites/smoke.yaml"), "--shard", f"{i}/2",
                            "--out", str(out), *sets], env=cli_env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
    planned = {c.key for c in load_suite(ROOT / "suites/smoke.yaml", SMOKE_SETS).cells()}
    assert len(planned) == 4
    assert sorted(p.name for p in out.glob("rows*.jsonl")) == ["rows-0of2.jsonl", "rows-1of2.jsonl"]
    per_file = [{r["key"] for r in read_rows(p)} for p in sorted(out.glob("rows-*.jsonl"))]
    assert per_file[0] and per_file[1] and not per_file[0] & per_file[1]  # each cell in one shard's file
    assert per_file[0] | per_file[1] == planned
    assert set(load(out).key) == planned and (load(out).status == "ok").all()
    assert "report: " in r.stderr and (out / "report.html").is_file()  # the last shard to finish renders it
    r = CliRunner().invoke(main, ["report", str(out), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    csv = (tmp_path / "r.csv").read_text()
    assert all(k in csv for k in planned)  # every shard's cells are in the rendered data
    r = CliRunner().invoke(main, ["status", str(out)])
    assert r.exit_code == 0 and "4/4 cells with a row" in r.output, r.output
    assert r.output.count("complete") == 2, r.output
    # a second run of a finished shard is refused without --resume, and with it runs nothing
    again = CliRunner().invoke(main, ["run", str(ROOT / "suites/smoke.yaml"), "--shard", "0/2", "--out", str(out), *sets, "--no-report"])
    assert again.exit_code == 2 and "--resume" in again.output
    other = CliRunner().invoke(main, ["run", str(ROOT / "suites/smoke.yaml"), "--shard", "0/3", "--out", str(out), *sets])
    assert other.exit_code == 2 and "3 shards" not in other.output and "in 2 shards" in other.output


def test_a_dead_shard_shows_in_status_and_resumes(tmp_path, cli_env):
    env = dict(cli_env, ARCHBENCH_PROBE_SLEEP_S="0.3")
    suite = _probe_suite(tmp_path / "s.yaml", [8 * k for k in range(1, 9)])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "archbench.cli", "run", str(suite), "--shard", "0/2", "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = out / "rows-0of2.jsonl"
    deadline = time.monotonic() + 120
    while len(read_rows(rows)) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.poll() is not None else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    r = CliRunner().invoke(main, ["status", str(out)])
    assert r.exit_code == 0, r.output
    line0 = next(ln for ln in r.output.splitlines() if "shard 0/2" in ln)
    line1 = next(ln for ln in r.output.splitlines() if "shard 1/2" in ln)
    assert "dead" in line0 and f"--out {out} --shard 0/2 --resume" in line0, r.output
    assert "not started" in line1, r.output
    done = len(read_rows(rows))
    for i in (0, 1):
        r2 = subprocess.run([*cmd[:6], f"{i}/2", *cmd[7:], "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert r2.returncode == 0, r2.stderr[-2000:]
    keys = [r["key"] for r in read_rows(rows)]
    assert len(keys) == len(set(keys)) >= done  # no cell of the dead shard measured twice
    planned = {c.key for c in load_suite(suite).cells()}
    assert set(load(out).key) == planned
    r = CliRunner().invoke(main, ["status", str(out)])
    assert [ln.split()[2] for ln in r.output.splitlines()[1:3]] == ["complete", "complete"], r.output


def test_one_worker_per_gpu_pinned_longest_first_never_two_cells_on_one_gpu(tmp_path, monkeypatch):
    """Fake GPUs (CPU cells): each slot's worker is spawned with CUDA_VISIBLE_DEVICES of its GPU,
    cells run on several slots at once but one at a time per slot, and rows name their GPU."""
    probe = tmp_path / "probe.txt"
    monkeypatch.setenv("ARCHBENCH_PROBE_FILE", str(probe))
    monkeypatch.setenv("ARCHBENCH_PROBE_SLEEP_S", "0.05")
    suite = load_suite(_probe_suite(tmp_path / "s.yaml", [8, 16, 32, 64, 128, 256], arch=["probe_sleep"]))
    cells = suite.cells()
    run_dir = RunDir(tmp_path / "run").create()
    starts, began, spans = [], {}, []

    def on_start(i, cell):
        starts.append(cell)
        began[cell.key] = time.monotonic()

    def on_row(i, cell, row):  # wall_s: from sending the cell to reading its answer
        spans.append((row["env"]["gpu_index"], began[cell.key], began[cell.key] + row["wall_s"]))

    slots = gpu_slots([0, 2], facts={0: {"gpu_index": 0, "gpu_uuid": "GPU-aaa"}, 2: {"gpu_index": 2, "gpu_uuid": "GPU-ccc"}})
    runner = Runner(cells, run_dir, plugins=suite.model.plugins, env={}, slots=slots, on_start=on_start, on_row=on_row)
    summary = runner.run()
    assert summary.counts["ok"] == len(cells)
    assert [c.seq_len for c in starts] == sorted((c.seq_len for c in cells), reverse=True)  # longest expected first
    rows = run_dir.rows()
    assert {r["env"]["gpu_index"] for r in rows} == {0, 2}
    assert all(r["env"]["gpu_uuid"] == {0: "GPU-aaa", 2: "GPU-ccc"}[r["env"]["gpu_index"]] for r in rows)
    for g in (0, 2):  # a GPU's cells never overlap in time
        mine = sorted((a, b) for gpu, a, b in spans if gpu == g)
        assert all(x[1] <= y[0] for x, y in zip(mine, mine[1:])), mine
    overlap = any(a0 < b1 and a1 < b0 for g0, a0, b0 in spans for g1, a1, b1 in spans if g0 == 0 and g1 == 2)
    assert overlap, "the two GPUs ran cells at the same time"
    seen = {line.split()[1] for line in probe.read_text().splitlines()}
    assert seen == {"0", "2"}  # each worker saw only its own GPU


def test_workers_get_disjoint_cores(tmp_path, monkeypatch):
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores and CPU affinity")
    probe = tmp_path / "probe.txt"
    monkeypatch.setenv("ARCHBENCH_PROBE_FILE", str(probe))
    suite = load_suite(_probe_suite(tmp_path / "s.yaml", [8, 16]))
    cells = suite.cells()
    sets = plan.core_sets(2)
    run_dir = RunDir(tmp_path / "run").create()
    summary = Runner(cells, run_dir, plugins=suite.model.plugins, env={}, slots=cpu_slots(2, sets)).run()
    assert summary.counts["ok"] == 2
    cores = {line.split()[2] for line in probe.read_text().splitlines()}
    assert cores == {",".join(map(str, sets[0]))}  # timing cells run alone, on the first worker and its cores only


def test_a_pinned_gpu_is_named_as_nvml_and_children_see_it(monkeypatch):
    """torch's cuda:0 in a process pinned to GPU 3 is NVML's device 3 (energy, clocks, memory
    follow the pinned GPU), and a runner itself limited to GPUs 2,3 pins its workers by those names."""
    from archbench.measure.env import physical_gpu

    assert physical_gpu(0, visible="3") == 3 and physical_gpu(1, visible="2,3") == 3
    assert physical_gpu(0, visible="GPU-1234") == "GPU-1234" and physical_gpu(2, visible="") == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [dict(s.env)["CUDA_VISIBLE_DEVICES"] for s in gpu_slots([0, 1])] == ["2", "3"]

    class FakeNvml:
        def nvmlInit(self):
            pass

        def nvmlDeviceGetHandleByIndex(self, i):
            return ("index", i)

        def nvmlDeviceGetHandleByUUID(self, u):
            return ("uuid", u)

    from archbench.measure.env import nvml_handle

    assert nvml_handle(FakeNvml(), 1) == ("index", 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert nvml_handle(FakeNvml(), 0) == ("uuid", "GPU-abc")
