"""A ``mode: task`` cell: train the cell's architecture on its task over the lr grid and the
seeds, and summarise as a row (best over lr, as Zoology reports; mean and spread over seeds).
The row also carries the protocol it was trained under and the published result it can be
compared with (``archbench.tasks.protocol``).

The model is ``models.LM`` around ``n_layers`` blocks of the arch's mixer (a hybrid brings its
own blocks), with the task's default MLP (none for the recall tasks) unless ``train.ffn`` says
otherwise; vocabulary and length come from the task.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import torch

from archbench.tasks.base import Task, make_task
from archbench.tasks.metrics import better
from archbench.tasks.protocol import comparable_to, protocol
from archbench.tasks.train import RunResult, TrainSettings, train_run

# cell fields a task may take as options (when the task has an option of that name)
_CELL_OPTIONS = ("seq_len", "vocab_size", "num_kv_pairs")


def task_from_cell(cell: dict) -> Task:
    """The task a cell names, with options from the cell fields it has and ``task_args``."""
    from archbench.tasks.base import TASKS, TaskError

    name = cell["task"]
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    fields = {f.name for f in dataclasses.fields(TASKS[name])}
    options = {k: cell[k] for k in _CELL_OPTIONS if k in fields and cell.get(k) is not None}
    if cell.get("num_kv_pairs") is not None and "num_kv_pairs" not in fields:
        raise TaskError(f"task {name!r} has no num_kv_pairs; drop it from the suite for this task")
    per_task = dict(cell.get("task_args") or {})
    unknown = sorted(set(per_task) - set(TASKS))
    if unknown:
        raise TaskError(
            f"task_args maps task names to their options (e.g. task_args: {{mqar: {{power_a: 0.01}}}}); "
            f"{', '.join(map(repr, unknown))} is not a task; tasks: {', '.join(sorted(TASKS))}"
        )
    args = dict(per_task.get(name) or {})
    clash = sorted(set(args) & set(options))
    if clash:
        raise TaskError(f"task_args sets {', '.join(clash)}, which the cell already sets; sweep it as a cell field instead")
    return make_task(name, **options, **args)


def settings_for(train: dict, lr: float) -> TrainSettings:
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in train.items() if k in known and k != "lr"}, lr=float(lr))


def run_task_cell(
    cell: dict,
    build_model: Callable[[Task], torch.nn.Module],
    dtype: torch.dtype = torch.float32,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train every (lr, seed) of the cell and return the task fields of its row."""
    task = task_from_cell(cell)
    train = dict(cell["train"])
    lrs = [float(x) for x in (train["lr"] if isinstance(train["lr"], list) else [train["lr"]])]
    seeds = [int(cell["seed"]) + i for i in range(int(train.get("seeds", 1)))]
    runs: dict[float, list[RunResult]] = {}
    n_runs, done = len(lrs) * len(seeds), 0
    for lr in lrs:
        for seed in seeds:
            def progress(info, _i=done):
                if on_progress:
                    on_progress({**info, "run": _i + 1, "runs": n_runs})

            result = train_run(lambda: build_model(task), task, settings_for(train, lr), seed, cell["device"], dtype, progress)
            runs.setdefault(lr, []).append(result)
            done += 1
    row = summarise(task, runs)
    row["protocol"] = protocol(cell, row["task_config"], row)
    row["comparable_to"] = comparable_to(row["protocol"])
    return row


def summarise(task: Task, runs: dict[float, list[RunResult]]) -> dict:
    """Best lr by mean score over seeds; that lr's mean, spread and per-group means."""
    metric = task.metric
    per_lr = []
    for lr, rs in runs.items():
        scores = [r.score for r in rs]
        per_lr.append({
            "lr": lr,
            "scores": scores,
            "mean": statistics.fmean(scores),
            "steps": [r.steps for r in rs],
            "diverged": sum(r.diverged for r in rs),
        })  # fmt: skip
    best = per_lr[0]
    for entry in per_lr[1:]:
        if better(metric, entry["mean"], best["mean"]):
            best = entry
    best_runs = runs[best["lr"]]
    scores = best["scores"]
    groups = sorted({g for r in best_runs for g in r.by_group})
    by_group = {g: statistics.fmean(r.by_group[g] for r in best_runs) for g in groups}
    all_runs = [r for rs in runs.values() for r in rs]
    exact = [r.exact for r in best_runs if r.exact is not None]
    row = {
        "task_metric": metric,
        "task_score": best["mean"],
        "task_score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "task_score_min": min(scores),
        "task_score_max": max(scores),
        "task_by_group": by_group,
        "task_exact": statistics.fmean(exact) if exact else None,
        "best_lr": best["lr"],
        "lr_grid": per_lr,
        "n_seeds": len(scores),
        "train_steps": statistics.fmean(r.steps for r in best_runs),
        "tokens_seen": sum(r.tokens_seen for r in all_runs),
        "tokens_seen_best": statistics.fmean(r.tokens_seen for r in best_runs),
        "train_wall_s": sum(r.wall_s for r in all_runs),
        "stopped_early": sum(r.stopped_early for r in best_runs),
        "diverged": sum(r.diverged for r in all_runs),
        "out_of_time": sum(r.out_of_time for r in all_runs),
        "final_loss": statistics.fmean(r.final_loss for r in best_runs),
        "history": best_runs[0].history,
        "task_config": task.describe(),
    }
    row["accuracy" if metric == "accuracy" else "bits_per_byte"] = best["mean"]
    return row
