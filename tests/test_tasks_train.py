"""The shared training loop: schedule, determinism, early stop, divergence, best over lr."""

from __future__ import annotations

import math

import pytest
import torch

from archbench import registry
from archbench.mixers.base import MixerConfig
from archbench.models import LM, Stack
from archbench.tasks import make_task
from archbench.tasks.cell import summarise, task_from_cell
from archbench.tasks.train import RunResult, TrainSettings, lr_at, make_optimizer, train_run


def _builder(task, arch="softmax_attention", d=32):
    spec = registry.get(arch)
    cfg = MixerConfig(d_model=d, n_heads=2)
    backend = spec.resolve_backend("auto", "cpu", backward=True)
    return lambda: LM(Stack(cfg, [spec.build(cfg, backend) for _ in range(2)], ffn=None), task.vocab_size)


def test_lr_schedule_warms_up_then_decays_to_zero():
    total, peak = 100, 1e-3
    lrs = [lr_at(s, total, peak, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])), "monotone cosine decay after warm-up"
    assert lr_at(total, total, peak, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_only_on_matrices():
    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    model = _builder(task)()
    decay, no_decay = make_optimizer(model, 1e-3, 0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_training_is_deterministic_and_learns():
    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    s = TrainSettings(steps=40, batch_size=16, lr=3e-3, eval_every=20, train_examples=256, test_examples=64)
    a = train_run(_builder(task), task, s, seed=0)
    b = train_run(_builder(task), task, s, seed=0)
    assert a.score == b.score and a.final_loss == b.final_loss and a.history == b.history
    assert a.steps == 40 and a.tokens_seen == 40 * 16 * 16 and not a.stopped_early
    assert 0.0 <= a.score <= 1.0 and set(a.by_group) == {"kv=2"}
    assert a.history[-1]["loss"] < math.log(32), "training reduces the loss below chance"
    c = train_run(_builder(task), task, s, seed=1)
    assert c.final_loss != a.final_loss


def test_early_stop_at_target():
    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    s = TrainSettings(steps=50, batch_size=8, lr=1e-3, eval_every=5, target=0.0, train_examples=64, test_examples=16)
    r = train_run(_builder(task), task, s, seed=0)
    assert r.steps == 5 and r.stopped_early


def test_wall_time_cap_evaluates_and_stops_the_run(monkeypatch):
    from archbench.tasks import train as train_mod

    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    clock = iter(range(0, 10_000, 10))  # each reading of the clock is 10 s after the last
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: float(next(clock)))
    s = TrainSettings(steps=50, batch_size=8, lr=1e-3, eval_every=20, max_train_s=25.0, train_examples=64, test_examples=16)
    r = train_run(_builder(task), task, s, seed=0)
    # start at 0; steps 1 and 2 read 10 and 20 s; step 3 reads 30 s > 25 s: evaluate there and stop
    assert r.out_of_time and not r.stopped_early and r.steps == 3
    assert r.history == [{"step": 3, "loss": r.final_loss, "score": r.score}] and math.isfinite(r.final_loss)
    uncapped = train_run(_builder(task), task, TrainSettings(**{**s.__dict__, "max_train_s": None}), seed=0)
    assert not uncapped.out_of_time and uncapped.steps == 50


def test_divergence_stops_the_run():
    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    s = TrainSettings(steps=30, batch_size=8, lr=1e-3, eval_every=10, train_examples=64, test_examples=16)

    def poisoned():
        model = _builder(task)()
        with torch.no_grad():
            model.embed.weight[:] = float("nan")
        return model

    r = train_run(poisoned, task, s, seed=0)
    assert r.diverged and r.steps == 1


def _run(lr, seed, score, groups=None):
    return RunResult(lr, seed, score, groups or {"all": score}, None, 10, 100, 0.1, False, False, 0.5)


def test_summary_reports_best_lr_mean_and_spread():
    task = make_task("mqar", seq_len=16, vocab_size=32, num_kv_pairs=2)
    runs = {1e-3: [_run(1e-3, 0, 0.5), _run(1e-3, 1, 0.7)], 3e-3: [_run(3e-3, 0, 0.9), _run(3e-3, 1, 0.8)]}
    row = summarise(task, runs)
    assert row["best_lr"] == 3e-3 and row["accuracy"] == pytest.approx(0.85) == row["task_score"]
    assert row["task_score_min"] == 0.8 and row["task_score_max"] == 0.9 and row["task_score_std"] > 0
    assert [e["lr"] for e in row["lr_grid"]] == [1e-3, 3e-3] and row["n_seeds"] == 2
    assert row["tokens_seen"] == 400 and row["task_config"]["num_kv_pairs"] == 2


def test_summary_lower_is_better_for_bits():
    class Bits:
        metric = "bits_per_byte"

        def describe(self):
            return {"task": "lm"}

    runs = {1e-3: [_run(1e-3, 0, 2.5)], 3e-3: [_run(3e-3, 0, 2.0)]}
    row = summarise(Bits(), runs)
    assert row["best_lr"] == 3e-3 and row["bits_per_byte"] == 2.0 and "accuracy" not in row


def test_task_from_cell_takes_cell_fields_and_args():
    args = {"mqar": {"power_a": 0.5}, "induction": {"test_lengths": [64]}}
    cell = {"task": "mqar", "seq_len": 32, "vocab_size": 64, "num_kv_pairs": 4, "task_args": args}
    t = task_from_cell(cell)
    assert (t.seq_len, t.vocab_size, t.num_kv_pairs, t.power_a) == (32, 64, 4, 0.5)
    with pytest.raises(ValueError, match="already sets"):
        task_from_cell({**cell, "task_args": {"mqar": {"seq_len": 8}}})
    with pytest.raises(ValueError, match="'power_a' is not a task"):
        task_from_cell({**cell, "task_args": {"power_a": 0.5}})
    with pytest.raises(ValueError, match="has no num_kv_pairs"):
        task_from_cell({**cell, "task": "induction"})
