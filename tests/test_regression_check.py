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


def test_judge_applies_the_gate_rule_to_per_round_ratios():
    """The shared rule (archbench.gate): beyond the factor and significant; the gate's verdict words."""
    base = {"same": [1.0, 1.02] * 8, "edge": [1.0, 1.02] * 8, "slow": [2.0, 2.04] * 8, "fast": [1.0, 1.02] * 8,
            "few": [1.0, 1.02], "wobbly": [0.5, 1.5] * 8}  # fmt: skip
    cur = {"same": [1.1, 1.12] * 8, "edge": [2.0, 2.04] * 8, "slow": [4.2, 4.3] * 8, "fast": [0.4, 0.41] * 8,
           "few": [4.0, 4.1], "wobbly": [0.6, 2.4] * 8, "added": [3.0] * 16}  # fmt: skip
    v = {x.op: x for x in regression.judge(base, cur, factor=2.0)}
    assert {op: x.status for op, x in v.items()} == {
        "same": "unchanged",
        "edge": "unchanged",  # exactly factor x is not above it
        "slow": "regressed",
        "fast": "improved",
        "few": "underpowered",  # 2 rounds a side can never reach p < 0.002, however far apart
        "wobbly": "insignificant",  # 1.5x... of medians 1.0 -> 1.5, beyond 1.2 but not significant
        "added": "added",
    } | {"wobbly": v["wobbly"].status}
    assert v["slow"].quotient == pytest.approx(4.25 / 2.02, rel=0.01) and v["slow"].p_value < 1e-4
    assert v["added"].baseline is None and v["added"].quotient is None
    assert regression.judge(base, cur, factor=1.5)[1].status == "regressed"  # edge: 2.0x > 1.5x
    assert {x.status for x in regression.judge(base, cur, factor=1.2)} >= {"insignificant"}  # wobbly: 1.5x, not significant
    with pytest.raises(ValueError, match="factor must be > 1"):
        regression.judge(base, cur, factor=0.5)


def test_ratios_are_per_round_units_of_the_reference_and_the_table_names_everything():
    r = regression.ratio_samples({"a": [6e-3, 8e-3], "b": [1e-3, 1e-3], regression.REFERENCE: [2e-3, 4e-3]})
    assert r == {"a": pytest.approx([3.0, 2.0]), "b": pytest.approx([0.5, 0.25])}
    base, cur = {"a": [1.0] * 10, "b": [0.5] * 10}, {"a": [3.0] * 10, "b": [0.5] * 10}
    table = regression.format_table(regression.judge(base, cur, factor=2.0), 2.0)
    header, row_a, row_b = table.splitlines()
    assert "baseline" in header and "current" in header and "2x" in header and "p" in header.split()
    assert row_a.split()[:4] == ["a", "1.000", "3.000", "3.00x"] and row_a.split()[-1] == "regressed"
    assert row_b.split()[:4] == ["b", "0.500", "0.500", "1.00x"] and row_b.split()[-1] == "unchanged"


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
    assert regression.main(["save", "--baseline", str(path), "--rounds", "9", "--threads", "3"]) == 0
    saved = json.loads(path.read_text())
    assert saved["ratios"] == pytest.approx({"steady": 1.0, "victim": 1.0}, rel=0.3)
    assert saved["config"]["threads"] == 3 and saved["config"]["rounds"] == 9
    assert [len(saved["ratio_samples"][op]) for op in ("steady", "victim")] == [9, 9]
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
    assert rows["victim"][-1] == "regressed" and float(rows["victim"][3].rstrip("x")) > 1.5
    assert rows["steady"][-1] == "unchanged"
    assert "FAIL: victim" in out

    durations["victim"] = 0.003  # 1.5x: within a factor of 2
    assert regression.main(["check", "--baseline", str(path), "--factor", "2"]) == 0


def test_a_baseline_of_too_few_rounds_is_underpowered_not_passed(sleepy, tmp_path, capsys):
    durations, _ = sleepy
    path = tmp_path / "baseline.json"
    assert regression.main(["save", "--baseline", str(path), "--rounds", "3"]) == 0
    durations["victim"] = 0.004  # twice the work, but 3 rounds a side cannot show it at alpha 0.002
    capsys.readouterr()
    assert regression.main(["check", "--baseline", str(path)]) == 3
    out = capsys.readouterr().out
    assert "UNDERPOWERED: steady, victim" in out and "--rounds 8" in out
    assert regression.main(["check", "--baseline", str(path), "--allow-underpowered"]) == 0


def test_real_ops_round_trip_and_a_multiplied_op_is_caught(tmp_path, monkeypatch, capsys):
    path = tmp_path / "baseline.json"
    assert regression.main(["save", "--baseline", str(path), "--rounds", "9", *TINY]) == 0
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
    assert row[-1] == "regressed"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no baseline at"),
        ("{not json", "not readable JSON"),
        (json.dumps({"format": "something-else/1"}), "not in the archbench-cpu-op-ratios/2 format"),
        (json.dumps({"format": "archbench-cpu-op-ratios/1", "ratios": {"a": 1.0}}), "not in the archbench-cpu-op-ratios/2"),
        (json.dumps({"format": regression.FORMAT, "ratios": {"a": 1.0}}), "malformed (KeyError"),
        (json.dumps({"format": regression.FORMAT, "config": {"shape": {"bogus": 1}}, "ratio_samples": {}}), "malformed"),
        (json.dumps({"format": regression.FORMAT, "config": {"shape": {}}, "ratio_samples": {"a": [-1.0]}}), "positive"),
        (json.dumps({"format": regression.FORMAT, "config": {"shape": {}}, "ratio_samples": {"a": []}}), "positive"),
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
    for bad in (["--factor", "0.9"], ["--factor", "1"], ["--alpha", "0"]):
        with pytest.raises(SystemExit) as e:
            regression.main(["check", *bad])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        regression.main(["save", "--threads", "0"])
    assert e.value.code == 2


def test_gate_power_builds_two_code_versions_whose_probe_differs_only_in_its_work(tmp_path):
    """benchmarks/gate_power.py: the slowed side's plugin does 13 passes where the base's does 10,
    the suite gains the probe cell, and the rates count what they say."""
    import importlib.util

    import gate_power
    import yaml

    slow = gate_power.make_code(tmp_path / "slow", 13)
    assert (slow / "archbench" / "__init__.py").is_file()
    spec = importlib.util.spec_from_file_location("slow_probe", slow / "gate_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # registers nothing new: gate_probe is already registered or registers once
    assert probe.WORK_UNITS == 13
    from archbench.mixers.base import MixerConfig

    calls = []
    real = probe.linear_attention
    probe.linear_attention = lambda *a, **k: calls.append(1) or real(*a, **k)
    probe.GateProbe(MixerConfig(d_model=16, n_heads=2))(torch.randn(1, 8, 16))
    assert len(calls) == 13

    suite = yaml.safe_load(gate_power.make_suite(gate_power.ROOT / "suites" / "gate-cpu.yaml", tmp_path / "s.yaml").read_text())
    assert suite["plugins"] == ["gate_probe"] and suite["sweep"]["arch"][-1] == "gate_probe"

    cell = lambda o, r=1.0: {"outcome": o, "ratio": r, "p": None, "note": None}  # noqa: E731
    runs = [
        {"pair": "identical", "exit": 0, "wall_s": 60.0, "cells": {"a": cell("unchanged"), "gate_probe": cell("unchanged")}},
        {"pair": "identical", "exit": 3, "wall_s": 70.0, "cells": {"a": cell("underpowered"), "gate_probe": cell("unchanged")}},
        {"pair": "slowed", "exit": 1, "wall_s": 65.0, "cells": {"a": cell("unchanged"), "gate_probe": cell("regressed", 1.28)}},
        {"pair": "slowed", "exit": 1, "wall_s": 64.0, "cells": {"a": cell("regressed"), "gate_probe": cell("insignificant", 1.2)}},
    ]
    s = gate_power.summarize(runs)
    assert (s["false_alarms"], s["identical_runs"], s["false_alarm_exits"]) == (1, 2, [3])
    assert (s["detections"], s["slowed_runs"], s["slowed_runs_flagging_another_cell"]) == (1, 2, 1)
    assert s["probe_ratio_min_median_max"] == [1.2, 1.28, 1.28] and s["wall_s_min_median_max"] == [60.0, 65.0, 70.0]
