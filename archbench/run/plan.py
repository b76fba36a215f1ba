"""Plan a sweep before it runs: what each cell is expected to cost, in what order cells go to
workers, which shard a cell belongs to, and which GPUs a run may use.

Why estimate at all: a sweep's makespan is set by its longest cells, so they must start first
(longest-processing-time-first scheduling finishes within 4/3 of the optimum on identical
devices), and shards of a sweep must carry equal work, not equal cell counts: one shard of long
softmax cells would finish hours after the others. The estimate needs to rank cells and add up
roughly, not to be right: a timing cell costs its fixed measurement windows (warm-up, the timing
budget, the energy window) plus its arithmetic at a nominal device rate; a task cell costs its
training work (optimiser steps x learning rates x seeds x tokens x width x depth).

Shards are a pure function of the cell set: the same suite gives every shard the same cells on
every machine and every rerun, so shards can run in any order, any number of times
(``--resume``), and together give exactly the cells of one unsharded run.
"""

from __future__ import annotations

import heapq
import os
import re
from typing import Iterable, Sequence

from archbench.suite import Cell

# Nominal arithmetic rates (work units per second, a unit being one multiply-add of one token
# through one d_model-wide layer): close enough to rank cells and add up shards.
WORK_RATE = {"cpu": 2e9, "cuda": 2e12}
START_S = 0.3  # per cell, whatever it does: building the module and its inputs, one row written
MODE_FACTOR = {"fwd": 1.0, "prefill": 1.0, "fwd_bwd": 3.0, "decode": 1.0, "bpb": 1.0, "lm_eval": 4.0}
TASK_RATE = {"cpu": 2e8, "cuda": 5e10}  # training work units per second (task_cost's units)
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


class PlanError(ValueError):
    """A plan that cannot be made (a bad --shard or --gpus); the message is one line and says what to do."""


def task_cost(cell: Cell) -> float:
    """A task cell's training work, up to a constant: optimiser steps x learning rates x seeds x
    tokens per step x width x depth (attention's extra T factor ignored): enough to order cells."""
    train = cell.train
    if train is None:
        return 0.0
    lrs = len(train.lr) if isinstance(train.lr, list) else 1
    return float(train.steps * lrs * train.seeds * train.batch_size * cell.seq_len * cell.d_model * max(1, cell.n_layers))


def _quadratic(arch: str) -> bool:
    """Whether the arch's training time grows as T^2 (softmax attention and kin), from the catalogue."""
    from archbench import registry

    try:
        return "T^2" in registry.get(arch).complexity.train_time.replace("²", "^2")
    except Exception:  # noqa: BLE001 - an unknown arch (a plugin not loaded here) costs as linear
        return False


def expected_seconds(cell: Cell, _quad: dict | None = None) -> float:
    """A rough wall time of ``cell`` in seconds (see the module docstring): enough to order cells
    longest first and to balance shards; never a prediction to report."""
    kind = "cuda" if cell.device.startswith("cuda") else "cpu"
    if cell.mode == "task":
        return START_S + task_cost(cell) / TASK_RATE[kind]
    m = cell.measure
    fixed = START_S + m.budget_s + (m.warmup_s or 0.0) + (m.energy_window_s if m.energy else 0.0)
    quad = _quad.setdefault(cell.arch, _quadratic(cell.arch)) if _quad is not None else _quadratic(cell.arch)
    tokens = cell.batch * (cell.measure.decode_tokens if cell.mode == "decode" else cell.seq_len)
    work = tokens * cell.d_model * max(1, cell.n_layers) * MODE_FACTOR.get(cell.mode, 1.0)
    if quad:
        work *= max(1.0, cell.seq_len / 1024)
    calls = m.warmup + m.min_repeats  # the timing loop runs at least these calls, whatever the budget
    return fixed + calls * work / WORK_RATE[kind]


def costs(cells: Sequence[Cell]) -> list[float]:
    """``expected_seconds`` of each cell (the catalogue looked up once per arch)."""
    quad: dict = {}
    return [expected_seconds(c, quad) for c in cells]


def longest_first(cells: Sequence[Cell], cost: Sequence[float] | None = None, keys: Sequence[str] | None = None) -> list[int]:
    """Indices of ``cells``, longest expected first; ties in key order (deterministic). ``keys``:
    the cells' keys if the caller has them (a key is a hash of the cell, not free to compute)."""
    cost = costs(cells) if cost is None else cost
    keys = [c.key for c in cells] if keys is None else keys
    return sorted(range(len(cells)), key=lambda i: (-cost[i], keys[i]))


def assign_shards(cells: Sequence[Cell], n: int, cost: Sequence[float] | None = None, keys: Sequence[str] | None = None) -> list[int]:
    """The shard (0..n-1) of each cell: longest first, each onto the shard with the least work so
    far (ties to the lowest shard). A pure function of the cells' keys and costs."""
    if n < 1:
        raise PlanError(f"a sweep splits into at least one shard (got {n})")
    cost = costs(cells) if cost is None else cost
    out = [0] * len(cells)
    heap = [(0.0, s) for s in range(n)]
    for i in longest_first(cells, cost, keys):
        load, s = heapq.heappop(heap)
        out[i] = s
        heapq.heappush(heap, (load + cost[i], s))
    return out


def shard(cells: Sequence[Cell], i: int, n: int, keys: Sequence[str] | None = None) -> list[Cell]:
    """The cells of shard ``i`` of ``n``, in suite order."""
    if not 0 <= i < n:
        raise PlanError(f"--shard {i}/{n}: the shard index runs from 0 to {n - 1}")
    owner = assign_shards(cells, n, keys=keys)
    return [c for c, s in zip(cells, owner) if s == i]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N), with 0 <= i < N."""
    m = SHARD_RE.match(text.strip())
    if not m:
        raise PlanError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. --shard 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise PlanError(f"--shard {text}: the shard index must be below the shard count (0 <= i < {n}), e.g. --shard 0/{max(n, 1)}")
    return i, n


def parse_gpus(text: str, available: Sequence[int]) -> list[int]:
    """``"all"`` or a comma list of GPU indices -> the indices, checked against ``available``
    (the machine's GPUs, in the order CUDA numbers them)."""
    if text.strip() == "all":
        if not available:
            raise PlanError("--gpus all: this machine has no CUDA GPU; run on the CPU (--workers N for task cells)")
        return list(available)
    try:
        wanted = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PlanError(f"--gpus {text!r}: expected all or GPU indices such as 0,1,3") from None
    if not wanted or len(set(wanted)) != len(wanted):
        raise PlanError(f"--gpus {text!r}: expected all or distinct GPU indices such as 0,1,3")
    missing = [g for g in wanted if g not in available]
    if missing:
        have = ",".join(map(str, available)) or "none"
        raise PlanError(f"--gpus {text}: GPU {missing[0]} is not on this machine (its GPUs: {have}); see nvidia-smi -L")
    return wanted


def visible_gpus() -> list[int]:
    """GPU indices this process may use. ``ARCHBENCH_FAKE_GPUS=N`` pretends there are N (tests and
    benchmarks of the scheduler on a CPU machine; their cells run on the CPU)."""
    fake = os.environ.get("ARCHBENCH_FAKE_GPUS")
    if fake:
        return list(range(int(fake)))
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - a broken CUDA install has no usable GPU
        return []


def core_sets(n: int, cores: Iterable[int] | None = None) -> list[list[int]]:
    """``n`` disjoint sets of the cores this process may run on, as equal as they divide (the
    first sets take the remainder); fewer cores than ``n`` is refused."""
    allowed = sorted(cores if cores is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)))
    if n > len(allowed):
        raise PlanError(f"--workers {n}: only {len(allowed)} core(s) to share; use at most --workers {len(allowed)}")
    size, extra = divmod(len(allowed), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(allowed[start:end])
        start = end
    return out
