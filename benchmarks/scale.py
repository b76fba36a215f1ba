"""How much does archbench's scheduling cost, and how large a sweep can it plan?

Three measurements (numbers for a machine go in docs/scale-out.md with the machine, date and
load average: on a shared machine every wall-clock number moves with the load):

* **plan**: a sweep of ``--plan-cells`` (100,000) cells of a plugin mixer is validated, expanded
  into cells, split into 8 shards and ordered longest first; the time of each step (target: the
  whole under 10 s).
* **scheduler**: ``--cells`` (2,000) cells of ``scale_noop`` (this file, loaded as a plugin: a
  mixer that returns its input, so a cell is all harness) over ``--devices`` (4) logical devices
  (``archbench.run.pool.gpu_slots`` on the CPU: one pinned worker each, as ``--gpus`` runs them). From the
  runner's callbacks: the *makespan* (first dispatch to last row), the *busy time* of each
  device (dispatch to answer, summed over its cells), the *ideal* makespan (busy time / devices:
  no device ever idle), and the scheduler's *overhead per cell* ((makespan x devices - busy
  time) / cells: how long a device waits between cells, for the runner to read a row, append
  and fsync it, and send the next cell). Worker start-up (importing torch) is reported apart.
  Targets: overhead under 50 ms per cell, makespan within 15% of ideal.
* **smoke** (``--smoke``): ``archbench run suites/smoke.yaml`` end to end, its wall time against
  the time inside timed calls (the rows' raw samples) and inside cells (the rows' ``wall_s``).

    python benchmarks/scale.py [--cells 2000] [--devices 4] [--plan-cells 100000] [--smoke] [--json out.json]
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from archbench import registry
from archbench.mixers.base import Mixer
from archbench.spec import ArchSpec, Backend, Complexity


class NoopMixer(Mixer):
    """Returns its input: a cell of this mixer measures nothing but the harness around it."""

    def __init__(self, config):
        super().__init__()
        self.config, self.backend = config, "ref"
        self.scale = nn.Parameter(torch.ones(1))  # a module with no parameters has nothing to count

    def forward(self, x):
        return x


if "scale_noop" not in registry.names():
    registry.register(ArchSpec(name="scale_noop", family="test/scale", description="benchmarks/scale.py: returns its input",
                               paper="-", complexity=Complexity("O(T d)", "-", "-", "-"),
                               backends=(Backend("ref", "test", registry.always, reference=True),),
                               factory=lambda cfg, backend: NoopMixer(cfg), has_decode=False))  # fmt: skip

FAST = {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.001, "energy": False, "roofline": False}


def _raw(n_lens: int, batches: list[int], d_models: list[int], modes: list[str]) -> dict:
    return {
        "name": "scale",
        "plugins": [os.path.abspath(__file__)],
        "defaults": {"device": "cpu", "n_heads": 1, "timeout_s": 60, "measure": FAST},
        "sweep": {"arch": ["scale_noop"], "seq_len": list(range(1, n_lens + 1)), "batch": batches, "d_model": d_models,
                  "mode": modes},
    }  # fmt: skip


def bench_plan(n_cells: int, shards: int = 8) -> dict:
    """Validate, expand, shard and order a sweep of ``n_cells`` cells (n/100 lengths x 10 batches
    x 5 widths x 2 modes)."""
    from archbench.run import plan
    from archbench.suite import parse_suite

    raw = _raw(n_cells // 100, list(range(1, 11)), [8, 16, 32, 64, 128], ["fwd", "fwd_bwd"])
    t0 = time.perf_counter()
    suite = parse_suite(raw, source="<scale>")
    t1 = time.perf_counter()
    cells = suite.cells()
    t2 = time.perf_counter()
    keys = suite.keys()  # hashed while expanding
    cost = plan.costs(cells)
    t3 = time.perf_counter()
    owner = plan.assign_shards(cells, shards, cost, keys)
    t4 = time.perf_counter()
    plan.longest_first(cells, cost, keys)
    t5 = time.perf_counter()
    loads = [sum(c for c, s in zip(cost, owner) if s == k) for k in range(shards)]
    return {"cells": len(cells), "validate_and_expand_s": t1 - t0, "cells_s": t2 - t1, "costs_s": t3 - t2,
            "shard_s": t4 - t3, "order_s": t5 - t4, "total_s": t5 - t0, "shard_imbalance": max(loads) / min(loads) - 1}  # fmt: skip


def bench_scheduler(n_cells: int, devices: int) -> dict:
    """The 2,000-cell sweep over ``devices`` logical devices (see the module docstring)."""
    import tempfile

    from archbench.run.pool import gpu_slots
    from archbench.run.runner import Runner
    from archbench.store import RunDir
    from archbench.suite import parse_suite

    suite = parse_suite(_raw(n_cells, [1], [8], ["fwd"]), source="<scale>")
    cells = suite.cells()
    dispatched: dict[str, float] = {}
    spans: list[tuple[int, float, float]] = []  # (device, dispatched, answered), the parent's clock
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir(tmp).create()
        slots = gpu_slots(list(range(devices)))

        def on_start(i, cell):
            dispatched[cell.key] = time.monotonic()

        def on_row(i, cell, row):  # wall_s: from sending the cell to reading its answer (not to writing the row)
            spans.append((row["env"]["gpu_index"], dispatched[cell.key], dispatched[cell.key] + row["wall_s"]))

        runner = Runner(cells, run_dir, plugins=suite.model.plugins, env={}, slots=slots, on_start=on_start, on_row=on_row)
        t0 = time.monotonic()
        summary = runner.run()
        t1 = time.monotonic()
    end = max(a for _, _, a in spans)
    ready = max(min(a for g, _, a in spans if g == d) for d in range(devices))  # every device has answered once
    busy = sum(max(0.0, a - max(s, ready)) for _, s, a in spans)  # time inside cells once all devices are up
    after = sum(1 for _, _, a in spans if a > ready)
    makespan, ideal = end - ready, busy / devices
    return {
        "cells": len(cells), "devices": devices, "ok": summary.counts["ok"], "total_wall_s": t1 - t0,
        "startup_s": ready - t0, "cells_after_startup": after, "makespan_s": makespan, "ideal_s": ideal,
        "makespan_over_ideal": makespan / ideal if ideal else None,
        "overhead_ms_per_cell": 1e3 * (makespan * devices - busy) / max(1, after),
        "in_cell_ms_per_cell": 1e3 * busy / max(1, after),
    }  # fmt: skip


def bench_smoke() -> dict:
    """``archbench run suites/smoke.yaml`` in a subprocess: wall time vs time in timed calls and in cells."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from archbench.store import load

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "archbench.cli", "run", str(root / "suites/smoke.yaml"), "--out", tmp, "--no-report"],
                           capture_output=True, text=True)  # fmt: skip
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise SystemExit(f"smoke run failed: {r.stderr[-500:]}")
        df = load(tmp)
    timed = float(sum(sum(s) for s in df.time_samples_s))
    in_cells = float(df.wall_s.sum())
    return {"cells": len(df), "wall_s": wall, "in_cells_s": in_cells, "timed_s": timed,
            "startup_and_between_cells_s": wall - in_cells, "in_cells_untimed_s": in_cells - timed}  # fmt: skip


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--plan-cells", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true", help="also run the smoke suite end to end (about a minute)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    out = {"load_before": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M")}
    out["plan"] = bench_plan(args.plan_cells)
    print("plan:", json.dumps(out["plan"], indent=None), flush=True)
    out["scheduler"] = bench_scheduler(args.cells, args.devices)
    print("scheduler:", json.dumps(out["scheduler"]), flush=True)
    if args.smoke:
        out["smoke"] = bench_smoke()
        print("smoke:", json.dumps(out["smoke"]), flush=True)
    out["load_after"] = os.getloadavg()[0]
    print(f"load average: {out['load_before']:.1f} before, {out['load_after']:.1f} after on {os.cpu_count()} CPU(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
