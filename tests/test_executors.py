"""Scale-out executors without a cluster: submitit's local executor (real subprocesses, the code
path of a Slurm array) and Ray with logical GPUs each run a small CPU suite end to end, one of
whose shards dies mid-sweep (its runner is killed) and is resumed; the merged rows hold exactly
the keys of one unsharded run. Without the ``dist`` extra these tests skip, and the CLI says
which pip line is missing."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.store import load, rows_files
from archbench.suite import load_suite

TESTS = Path(__file__).resolve().parent
PLUGIN = TESTS / "shard_plugin.py"
FAST = {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.01, "energy": False, "roofline": False}


def _suite(path: Path) -> Path:
    """Six cells; the probe_crash_once cell kills its shard's runner the first time it runs."""
    path.write_text(textwrap.dedent(f"""
        name: dist
        plugins: [{json.dumps(str(PLUGIN))}]
        defaults: {{d_model: 16, n_heads: 2, timeout_s: 60, measure: {json.dumps(FAST)}}}
        sweep:
          arch: [probe_sleep, probe_crash_once]
          seq_len: [8, 16, 32]
        exclude:
          - {{arch: probe_crash_once, seq_len: [8, 16]}}
        """))  # fmt: skip
    return path


def _check_merged(out: Path, suite: Path, marker: Path) -> None:
    assert marker.exists(), "the crashing cell ran (and killed its shard) once"
    planned = {c.key for c in load_suite(suite).cells()}
    df = load(out)
    assert set(df.key) == planned and (df.status == "ok").all()
    keys = [k for p in rows_files(out) for k in (json.loads(x)["key"] for x in p.read_text().splitlines() if x.strip())]
    assert sorted(keys) == sorted(planned)  # every cell exactly once: the resumed shard skipped what it had
    r = CliRunner().invoke(main, ["status", str(out)])
    assert r.exit_code == 0 and [ln.split()[2] for ln in r.output.splitlines()[1:3]] == ["complete", "complete"], r.output


@pytest.mark.slow
def test_submitit_local_array_resumes_a_shard_that_died(tmp_path, cli_env):
    pytest.importorskip("submitit")
    suite, out, marker = _suite(tmp_path / "s.yaml"), tmp_path / "run", tmp_path / "crashed"
    env = dict(cli_env, ARCHBENCH_CRASH_ONCE=str(marker))
    r = subprocess.run([sys.executable, "-m", "archbench.cli", "run", str(suite), "--executor", "slurm", "--slurm-local",
                        "--shards", "2", "--retries", "1", "--out", str(out), "--no-report"],
                       env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "died" in r.stderr and "submitting it again" in r.stderr, r.stderr[-3000:]
    _check_merged(out, suite, marker)
    assert list((out / "slurm").glob("*_log.out")), "submitit's own job logs are kept beside the rows"


@pytest.mark.slow
def test_ray_tasks_on_logical_gpus_resume_a_shard_that_died(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    suite, out, marker, probe = _suite(tmp_path / "s.yaml"), tmp_path / "run", tmp_path / "crashed", tmp_path / "probe"
    monkeypatch.setenv("ARCHBENCH_CRASH_ONCE", str(marker))
    monkeypatch.setenv("ARCHBENCH_PROBE_FILE", str(probe))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)  # before: workers inherit the environment
    try:
        r = CliRunner().invoke(main, ["run", str(suite), "--executor", "ray", "--shards", "2", "--retries", "1",
                                      "--gpus-per-shard", "1", "--out", str(out), "--no-report"])  # fmt: skip
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.output[-3000:]
    _check_merged(out, suite, marker)
    visible = {line.split()[1] for line in probe.read_text().splitlines()}
    assert visible and visible <= {"0", "1"}, visible  # each shard ran on the one logical GPU Ray gave it
    assert set(load(out).env_cuda_visible_devices) <= {"0", "1"}  # and its rows say so


def test_unusable_executors_are_one_line_exit_2(tmp_path, monkeypatch):
    suite = _suite(tmp_path / "s.yaml")

    def one_line(args):
        r = CliRunner().invoke(main, ["run", str(suite), *args, "--out", str(tmp_path / "o")])
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1, r.output
        return lines[0]

    with monkeypatch.context() as m:  # the extra not installed
        m.setitem(sys.modules, "submitit", None)
        m.setitem(sys.modules, "ray", None)
        assert "pip install 'archbench[dist]'" in one_line(["--executor", "slurm", "--shards", "2"])
        assert "pip install 'archbench[dist]'" in one_line(["--executor", "ray", "--shards", "2"])
    pytest.importorskip("submitit")
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))  # no sbatch here
        assert "sbatch is not on PATH" in one_line(["--executor", "slurm", "--shards", "2"])
    assert not (tmp_path / "o").exists()  # refused before anything was written
    pytest.importorskip("ray")
    line = one_line(["--executor", "ray", "--shards", "2", "--ray-address", "127.0.0.1:9"])
    assert "nothing answers at 127.0.0.1:9" in line
