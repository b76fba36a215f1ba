"""``archbench compare`` on real smoke runs: identical code passes, one cell's samples x 1.3 fails.

    python benchmarks/smoke_gate.py [--pairs 5] [--factor 1.3] [--out results/baselines/cpu-2core-xeon/smoke_gate.json]

The gate's unit tests prove its logic on synthetic samples; this runs what a user would try first:
``archbench run suites/smoke.yaml`` twice, back to back, on unchanged code, then ``archbench compare
A B`` (default threshold and alpha) must exit 0; and the same B with every timing sample of one
cell multiplied by ``--factor`` must exit 1 with that cell ``regressed``. The scaled cell is
``--cell`` (by default linear attention's chunked forward at T=1024, a mid-sized cell of a few
milliseconds). Repeated ``--pairs`` times, each pair with two new runs, so the identical-code
pass rate is measured, not assumed: two independent runs share no rounds, so a machine's slow
phase between them is the gate's main risk (``archbench ab`` interleaves to avoid it; docs/ci.md).

Writes every pair's exit codes, verdict counts and the load average to ``--out`` (JSON).
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

from archbench.measure.env import cpu_model
from archbench.store import RunDir

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "suites" / "smoke.yaml"


def archbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archbench.cli", *args], capture_output=True, text=True, cwd=ROOT)


def smoke_run(out: Path) -> float:
    t0 = time.monotonic()
    r = archbench("run", str(SMOKE), "--out", str(out), "--no-report")
    if r.returncode != 0:
        raise SystemExit(f"error: the smoke run failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - t0


def scaled_copy(src: Path, dest: Path, factor: float, cell: str) -> str:
    """``src``'s rows with the samples (and median) of ``cell`` ("arch/backend mode T") times ``factor``."""
    rows = RunDir(src).rows()
    named = {f"{r['arch']}/{r['backend']} {r['mode']} {r['seq_len']}": r for r in rows if r.get("status") == "ok"}
    if cell not in named:
        raise SystemExit(f"error: --cell {cell!r} is not an ok cell of the smoke run; cells: {', '.join(sorted(named))}")
    slow = named[cell]
    out = RunDir(dest).create()
    out.write_meta(RunDir(src).read_meta())
    for r in rows:
        if r is slow:
            r = {**r, "time_samples_s": [s * factor for s in r["time_samples_s"]], "time_median_s": r["time_median_s"] * factor}
        out.append(r)
    return f"{slow['arch']}/{slow['backend']} {slow['mode']} T={slow['seq_len']}"


def verdicts(run_a: Path, run_b: Path) -> tuple[int, dict]:
    """``compare``'s exit code; its verdict counts, its run-to-run noise note and the cells it
    called regressed or improved (label and ratio)."""
    r = archbench("compare", str(run_a), str(run_b), "--format", "json")
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        return r.returncode, {"error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
    flagged = {c["label"]: round(c["ratio"], 3) for c in doc["cells"] if c["outcome"] in ("regressed", "improved")}
    noise = next((n for n in doc["notes"] if n.startswith("run-to-run noise")), None)
    return r.returncode, {"counts": doc["counts"], "noise": noise, "flagged": flagged}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="pairs of smoke runs (default: %(default)s)")
    p.add_argument("--factor", type=float, default=1.3, help="the scaled cell's slowdown (default: %(default)s)")
    p.add_argument("--cell", default="linear_attention/chunked fwd 1024", help="the cell to scale (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "baselines" / "cpu-2core-xeon" / "smoke_gate.json",
                   help="where to write the pairs (default: %(default)s)")  # fmt: skip
    args = p.parse_args(argv)
    if args.pairs < 1 or args.factor <= 1:
        p.error("--pairs must be >= 1 and --factor > 1")
    pairs = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="archbench-smoke-gate-") as tmp:
        for i in range(args.pairs):
            a, b, x = Path(tmp) / f"{i}-a", Path(tmp) / f"{i}-b", Path(tmp) / f"{i}-x"
            wall = [smoke_run(a), smoke_run(b)]
            scaled = scaled_copy(b, x, args.factor, args.cell)
            same_exit, same = verdicts(a, b)
            slow_exit, slow = verdicts(a, x)
            pairs.append({"pair": i, "identical_exit": same_exit, "identical": same, "scaled_cell": scaled,
                          "scaled_exit": slow_exit, "scaled": slow, "run_wall_s": [round(w, 1) for w in wall],
                          "loadavg_1m": round(os.getloadavg()[0], 2)})  # fmt: skip
            print(f"[{i + 1}/{args.pairs}] identical: exit {same_exit} {same}\n      {scaled} x{args.factor}: exit {slow_exit} {slow}",
                  flush=True)  # fmt: skip
    summary = {
        "identical_pass": sum(p["identical_exit"] == 0 for p in pairs),
        "scaled_fail": sum(p["scaled_exit"] == 1 for p in pairs),
        "pairs": len(pairs),
    }
    doc = {"what": f"archbench compare on two smoke runs of unchanged code, and with one cell's samples x {args.factor}",
           "suite": "suites/smoke.yaml", "factor": args.factor, "started": started,
           "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version()},
           "summary": summary, "runs": pairs}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"identical code passed {summary['identical_pass']}/{len(pairs)}; scaled cell failed {summary['scaled_fail']}/{len(pairs)}; "
          f"written to {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
