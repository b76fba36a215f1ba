"""The CLI end to end: --help everywhere, env, the smoke suite producing rows and a report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.store import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cmd", [[], ["run"], ["report"], ["list"], ["env"], ["compare"], ["ab"], ["baseline"], ["baseline", "save"]])
def test_help(cmd):
    r = CliRunner().invoke(main, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_env_json():
    r = CliRunner().invoke(main, ["env", "--json"])
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert info["torch"] and info["device"] in ("cpu", "cuda") and "optional_packages" in info


def test_long_context_on_cpu_stops_with_advice(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU refusal path does not apply")
    r = CliRunner().invoke(main, ["run", str(ROOT / "suites/long-context.yaml"), "--results-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert "CUDA" in r.output and "--device cpu" in r.output
    assert not any(tmp_path.iterdir()), "nothing should be written"


def test_resume_without_a_run_is_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["run", str(ROOT / "suites/smoke.yaml"), "--resume", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to resume" in r.output


def test_report_of_missing_dir_is_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no run found" in r.output


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path):
    """The Quickstart's job: the shipped smoke suite, all cells ok, a self-contained report."""
    out = tmp_path / "smoke"
    r = subprocess.run(
        [sys.executable, "-m", "archbench.cli", "run", str(ROOT / "suites/smoke.yaml"), "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    df = load(out)
    assert len(df) == 30 and set(df["status"]) == {"ok"}
    assert set(df["backend"]) == {"sdpa", "naive", "chunked"} and set(df["mode"]) == {"fwd", "fwd_bwd"}
    assert (df["time_median_s"] > 0).all() and (df["tokens_per_s"] > 0).all()
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["counts"] == {"ok": 30} and meta["env"]["torch"]
    assert (out / "report.csv").is_file()
    md = CliRunner().invoke(main, ["report", str(out), "--format", "md"])
    assert md.exit_code == 0 and "| arch/backend | T=256 |" in md.output
    html = (out / "report.html").read_text()
    assert "<script src" not in html and "softmax_attention" in html and "linear_attention" in html
    # a second report from the CLI, to a chosen file
    r2 = CliRunner().invoke(main, ["report", str(out), "-o", str(tmp_path / "r.html")])
    assert r2.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 100_000


def test_allow_changed_goes_with_resume(tmp_path):
    r = CliRunner().invoke(main, ["run", str(ROOT / "suites/smoke.yaml"), "--allow-changed", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--allow-changed goes with --resume" in r.output
    assert not any(tmp_path.iterdir())


def test_run_exit_codes_are_documented():
    from archbench.cli import exits

    r = CliRunner().invoke(main, ["run", "--help"])
    for code in ("129", "130", "143"):
        assert code in exits.__doc__ and code in r.output and code in (ROOT / "docs/reliability.md").read_text()
    assert (exits.EXIT_SIGHUP, exits.EXIT_INTERRUPTED, exits.EXIT_SIGTERM) == (129, 130, 143)
