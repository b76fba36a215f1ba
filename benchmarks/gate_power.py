"""The gate's operating characteristics, measured: false-alarm rate, detection rate, wall time.

    python benchmarks/gate_power.py [--runs 20] [--rounds 12] [--suite suites/gate-cpu.yaml]
                                    [--out results/baselines/cpu-2core-xeon/gate_power.json]

A regression gate is two numbers, not one: how often it fails unchanged code (false alarms)
and how often it catches a real slowdown of the size it is meant to catch (detection). Both
depend on the machine and its load, so they are measured here rather than assumed from alpha.

The shipped gate (``archbench ab SUITE --base A --head B --rounds R``, judged by
``archbench.gate``) is run ``--runs`` times on each of two pairs of code versions, alternately
(an identical pair, then a slowed pair, ...) so that the machine's load falls on both alike:

* identical: A and B are two copies of the same code;
* slowed: B's copy of the plugin mixer ``gate_probe`` (``benchmarks/gate_probe.py``) does
  ``--slow-units`` passes instead of 10, i.e. 30% more work in one cell, a real slowdown.

The suite is ``--suite`` with the ``gate_probe`` cell added, so every run judges the gate's own
cells plus the probe. A false alarm is an identical run that does not pass (exit 1, or 3 for an
underpowered cell); a detection is a slowed run whose probe cell is ``regressed``; a slowed run
that also flags another cell counts that cell as a false alarm too. Each side's code is a
directory holding a link to this checkout's ``archbench`` package and its copy of the plugin.

Writes every run's exit code, wall time and per-cell verdicts and ratios, with the machine and
its load average before and after, to ``--out`` (JSON) and prints the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from archbench.measure.env import cpu_model

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PROBE = "gate_probe"
BASE_UNITS = 10


def make_code(dest: Path, units: int) -> Path:
    """A code directory for ``archbench ab``: a link to this archbench package and a copy of the
    probe plugin doing ``units`` passes per call."""
    dest.mkdir(parents=True)
    (dest / "archbench").symlink_to(ROOT / "archbench", target_is_directory=True)
    src = (HERE / f"{PROBE}.py").read_text()
    marker = f"WORK_UNITS = {BASE_UNITS}"
    if marker not in src:
        raise SystemExit(f"error: {HERE / PROBE}.py no longer sets {marker!r}; update gate_power.py")
    (dest / f"{PROBE}.py").write_text(src.replace(marker, f"WORK_UNITS = {units}", 1))
    return dest


def make_suite(suite: Path, dest: Path) -> Path:
    """The gate suite with the probe cell added (its plugin listed, its arch in the sweep)."""
    raw = yaml.safe_load(suite.read_text())
    raw["plugins"] = sorted(set(raw.get("plugins") or []) | {PROBE})
    archs = raw["sweep"]["arch"]
    raw["sweep"]["arch"] = [*(archs if isinstance(archs, list) else [archs]), PROBE]
    raw["name"] = f"{raw['name']}-power"
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def run_gate(suite: Path, base: Path, head: Path, out: Path, rounds: int, env: dict) -> dict:
    """One gate run (``archbench ab`` at its default threshold and alpha); its exit code, wall
    time and the verdict, ratio and p of every cell."""
    cmd = [sys.executable, "-m", "archbench.cli", "ab", str(suite), "--base", str(base), "--head", str(head),
           "--rounds", str(rounds), "--out", str(out), "--format", "json"]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - t0
    result = {"exit": proc.returncode, "wall_s": round(wall, 1), "cells": {}}
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return result
    for c in report["cells"]:
        arch = c["identity"].get("arch")
        result["cells"][arch] = {"outcome": c["outcome"], "ratio": c["ratio"], "p": c["p_value"], "note": c["note"]}
    result["threshold"], result["alpha"] = report["threshold"], report["alpha"]
    return result


def summarize(runs: list[dict]) -> dict:
    same = [r for r in runs if r["pair"] == "identical"]
    slow = [r for r in runs if r["pair"] == "slowed"]
    alarms = [r for r in same if r["exit"] != 0]
    collateral = [r for r in slow if any(a != PROBE and c["outcome"] in ("regressed", "improved", "underpowered")
                                          for a, c in r["cells"].items())]  # fmt: skip
    caught = [r for r in slow if r["cells"].get(PROBE, {}).get("outcome") == "regressed"]
    walls = sorted(r["wall_s"] for r in runs)
    probe_ratios = sorted(r["cells"][PROBE]["ratio"] for r in slow if PROBE in r["cells"])
    return {
        "identical_runs": len(same),
        "false_alarms": len(alarms),
        "false_alarm_exits": sorted(r["exit"] for r in alarms),
        "slowed_runs": len(slow),
        "detections": len(caught),
        "slowed_runs_flagging_another_cell": len(collateral),
        "probe_ratio_min_median_max": [probe_ratios[0], probe_ratios[len(probe_ratios) // 2], probe_ratios[-1]]
        if probe_ratios
        else None,
        "wall_s_min_median_max": [walls[0], walls[len(walls) // 2], walls[-1]] if walls else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="gate runs per pair (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=12, help="archbench ab --rounds (default: %(default)s)")
    p.add_argument(
        "--suite", type=Path, default=ROOT / "suites" / "gate-cpu.yaml", help="the gate suite (default: %(default)s)"
    )
    p.add_argument(
        "--slow-units",
        type=int,
        default=13,
        help=f"probe passes on the slowed side; {BASE_UNITS} on the others (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "baselines" / "cpu-2core-xeon" / "gate_power.json",
                   help="where to write the runs and rates (default: %(default)s)")  # fmt: skip
    args = p.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.slow_units < 1:
        p.error("--runs, --rounds and --slow-units must be >= 1")
    if not args.suite.is_file():
        p.error(f"--suite {args.suite}: no such file")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="archbench-gate-power-") as tmp:
        work = Path(tmp)
        suite = make_suite(args.suite, work / "suite.yaml")
        base = make_code(work / "base", BASE_UNITS)
        pairs = {"identical": make_code(work / "same", BASE_UNITS), "slowed": make_code(work / "slow", args.slow_units)}
        for i in range(args.runs):
            for pair, head in pairs.items():
                r = run_gate(suite, base, head, work / f"run-{i}-{pair}", args.rounds, env)
                r.update(pair=pair, index=i, loadavg_1m=round(os.getloadavg()[0], 2))
                runs.append(r)
                cells = ", ".join(f"{a} {c['outcome']} {c['ratio']:.3f}x" for a, c in r["cells"].items() if c["ratio"])
                print(f"[{i + 1}/{args.runs}] {pair:>9} exit {r['exit']} {r['wall_s']:6.1f}s  {cells or r.get('error')}",
                      flush=True)  # fmt: skip
                args.out.parent.mkdir(parents=True, exist_ok=True)
                doc = {
                    "what": "archbench ab gate runs on identical code and on code with one cell doing 30% more work",
                    "suite": str(args.suite.relative_to(ROOT) if args.suite.is_relative_to(ROOT) else args.suite),
                    "rounds": args.rounds, "threshold": runs[-1].get("threshold"), "alpha": runs[-1].get("alpha"),
                    "slow_units": args.slow_units, "base_units": BASE_UNITS,
                    "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                                "python": platform.python_version()},
                    "started": started, "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "summary": summarize(runs), "runs": runs,
                }  # fmt: skip
                args.out.write_text(json.dumps(doc, indent=1) + "\n")
    s = summarize(runs)
    print(f"false alarms: {s['false_alarms']}/{s['identical_runs']} identical runs "
          f"(+ {s['slowed_runs_flagging_another_cell']} slowed runs flagging another cell)")  # fmt: skip
    print(
        f"detections:   {s['detections']}/{s['slowed_runs']} slowed runs; probe ratio min/median/max {s['probe_ratio_min_median_max']}"
    )
    print(f"wall per gate run (s) min/median/max: {s['wall_s_min_median_max']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
