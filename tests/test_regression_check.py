"""The CPU regression check (benchmarks/regression.py): the factor rule, the exit codes, the baseline file.

Timing-dependent tests use ops that sleep (their times do not depend on the machine's speed) or a
real op made to do several times its work, judged against a factor well below that multiple.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import interleave  # noqa: E402
import regression  # noqa: E402
from inputs import op_cases  # noqa: E402

TINY = ["--seq-len", "32", "--heads", "2", "--head-dim", "8", "--matmul", "128"]


def test_judge_applies_the_factor_rule_to_ratios():
    base = {"same": 1.0, "edge": 1.0, "slow": 2.0, "fast": 1.0}
    cur = {"same": 1.1, "edge": 2.0, "slow": 4.2, "fast": 0.4, "added": 3.0}
    v = {x.op: x for x in regression.judge(base, cur, factor=2.0)}
    assert {op: x.status for op, x in v.items()} == {
        "same": "ok",
        "edge": "ok",  # exactly factor x is not above it
        "slow": "REGRESSED",
        "fast": "faster",
        "added": "new",
    }
    assert v["slow"].quotient == pytest.approx(2.1) and v["slow"].baseline == 2.0 and v["slow"].current == 4.2
    assert v["added"].baseline is None and v["added"].quotient is None
    assert regression.judge(base, cur, factor=1.5)[1].status == "REGRESSED"  # edge: 2.0x > 1.5x
    with pytest.raises(ValueError, match="factor must be >= 1"):
        regression.judge(base, cur, factor=0.5)


def test_ratios_are_in_units_of_the_reference_and_the_table_names_everything():
    r = regression.ratios({"a": 6e-3, "b": 1e-3, regression.REFERENCE: 2e-3})
    assert r == pytest.approx({"a": 3.0, "b": 0.5})
    table = regression.format_table(regression.judge({"a": 1.0, "b": 0.5}, r, factor=2.0), 2.0)
    header, row_a, row_b = table.splitlines()
    assert "baseline" in header and "current" in header and "2x" in header
    assert row_a.split() == ["a", "1.000", "3.000", "3.00x", "REGRESSED"]
    assert row_b.split() == ["b", "0.500", "0.500", "1.00x", "ok"]


@pytest.fixture
def sleepy(monkeypatch):
    """Replace the ops by two that take a set time and the matmul by one of 2 ms, on a virtual
    clock: each call advances the clock the check reads by its duration, so the verdicts depend
    on the durations alone, never on how busy the machine is (real sleeps overshoot by
    milliseconds on a loaded 2-core runner, which once turned a steady op into a regression).

    Returns the ops' durations (mutable) and the set of torch thread counts the ops ran under."""
    threads_seen: set[int] = set()
    durations = {"steady": 0.002, "victim": 0.002}
    now = [0.0]

    def nap(name):
        def run():
            threads_seen.add(torch.get_num_threads())
            now[0] += durations[name]

        return run

    def reference():
        now[0] += 0.002

    clock = SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(regression, "time", clock)  # calls per sample
    monkeypatch.setattr(interleave, "time", clock)  # the round-robin samples
    monkeypatch.setattr(regression, "build_cases", lambda shape: {name: nap(name) for name in durations})
    monkeypatch.setattr(regression, "build_reference", lambda n: reference)
    return durations, threads_seen


def test_a_two_fold_slowdown_of_one_op_fails_the_check(sleepy, tmp_path, capsys):
    durations, threads_seen = sleepy
    path = tmp_path / "baseline.json"
    threads_before = torch.get_num_threads()
    assert regression.main(["save", "--baseline", str(path), "--rounds", "5", "--threads", "3"]) == 0
    saved = json.loads(path.read_text())
    assert saved["ratios"] == pytest.approx({"steady": 1.0, "victim": 1.0}, rel=0.3)
    assert saved["config"]["threads"] == 3 and saved["config"]["rounds"] == 5
    assert {"cpu", "threads", "torch", "date"} <= set(saved["machine"])
    capsys.readouterr()

    assert regression.main(["check", "--baseline", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK: no op regressed" in out and "REGRESSED" not in out
    assert threads_seen == {3} and torch.get_num_threads() == threads_before  # the recorded count, then restored

    durations["victim"] = 0.004  # twice the work: caught at the default factor
    assert regression.main(["check", "--baseline", str(path)]) == 1
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split() for line in out.splitlines()[2:] if line.split()[:1] in (["steady"], ["victim"])
    }
    assert rows["victim"][-1] == "REGRESSED" and float(rows["victim"][3].rstrip("x")) > 1.5
    assert rows["steady"][-1] == "ok"
    assert "FAIL: victim" in out

    durations["victim"] = 0.003  # 1.5x: within a factor of 2
    assert regression.main(["check", "--baseline", str(path), "--factor", "2"]) == 0


def test_real_ops_round_trip_and_a_multiplied_op_is_caught(tmp_path, monkeypatch, capsys):
    path = tmp_path / "baseline.json"
    assert regression.main(["save", "--baseline", str(path), "--rounds", "7", *TINY]) == 0
    saved = json.loads(path.read_text())
    expected = set(op_cases()) | {f"{name}.train" for name in op_cases()}  # forward and training calls
    assert set(saved["ratios"]) == expected and all(r > 0 for r in saved["ratios"].values())
    assert (
        saved["config"]["shape"]["seq_len"] == 32
        and saved["config"]["matmul"] == 128
        and saved["config"]["threads"] == 1
    )
    assert regression.main(["check", "--baseline", str(path), "--factor", "50"]) == 0

    real = regression.build_cases

    def eight_fold(shape):
        fns = real(shape)
        once = fns["linear_attention"]
        fns["linear_attention"] = lambda: [once() for _ in range(8)]
        return fns

    monkeypatch.setattr(regression, "build_cases", eight_fold)
    capsys.readouterr()
    assert regression.main(["check", "--baseline", str(path)]) == 1
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("linear_attention "))
    assert row[-1] == "REGRESSED"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no baseline at"),
        ("{not json", "not readable JSON"),
        (json.dumps({"format": "something-else/1"}), "not in the archbench-cpu-op-ratios/1 format"),
        (json.dumps({"format": regression.FORMAT, "ratios": {"a": 1.0}}), "malformed (KeyError"),
        (json.dumps({"format": regression.FORMAT, "config": {"shape": {"bogus": 1}}, "ratios": {}}), "malformed"),
        (json.dumps({"format": regression.FORMAT, "config": {"shape": {}}, "ratios": {"a": -1.0}}), "positive ratios"),
    ],
)
def test_a_missing_or_malformed_baseline_exits_2_and_says_how_to_make_one(sleepy, tmp_path, capsys, content, message):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    assert regression.main(["check", "--baseline", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "regression.py save" in err and len(err.strip().splitlines()) == 1


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        regression.main(["check", "--factor", "0.9"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        regression.main(["save", "--threads", "0"])
    assert e.value.code == 2
