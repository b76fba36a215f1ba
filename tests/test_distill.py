"""The shared losses and training loop: values against hand computations, mixing, the loop's order
of operations, its stops, and the per-step history it keeps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from archbench import distill
from archbench.distill import (
    StepLog,
    constant,
    cosine_lr,
    cross_entropy,
    hidden_alignment,
    kd_loss,
    kd_terms,
    kl_divergence,
    train_loop,
    train_only,
    warmup_cosine,
)


def _logits(seed: int, shape=(2, 5, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _kl_by_hand(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    p = F.softmax(t_logits / temperature, -1)
    return (p * (p.log() - F.log_softmax(s_logits / temperature, -1))).sum(-1).mean()


def test_kl_is_teacher_to_student_per_position_and_scaled_by_t_squared():
    s, t = _logits(0), _logits(1)
    assert float(kl_divergence(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(s, t)) == pytest.approx(float(_kl_by_hand(s, t)), rel=1e-5)
    assert float(kl_divergence(s, t)) != pytest.approx(float(kl_divergence(t, s)), rel=1e-3)  # not symmetric
    assert float(kl_divergence(s, t, 2.0)) == pytest.approx(4 * float(_kl_by_hand(s, t, 2.0)), rel=1e-5)
    assert float(kl_divergence(s, t, per_position=True)) == pytest.approx(float(kl_divergence(s, t)), rel=1e-5)


def test_kd_loss_mixes_kl_and_cross_entropy_and_kd_terms_returns_both():
    s, t = _logits(0), _logits(1)
    labels = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(2))
    kl, ce = float(kl_divergence(s, t)), float(cross_entropy(s, labels))
    assert ce == pytest.approx(float(F.cross_entropy(s.reshape(-1, 7), labels.reshape(-1))), rel=1e-6)
    assert float(kd_loss(s, t, labels, 0.5, 0.5)) == pytest.approx(0.5 * kl + 0.5 * ce, rel=1e-5)
    assert float(kd_loss(s, None, labels, kl_weight=0.0, ce_weight=1.0)) == pytest.approx(ce, rel=1e-5)
    loss, parts = kd_terms(s, t, labels, ce_weight=0.25)
    assert set(parts) == {"kl", "ce"} and float(parts["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(loss) == pytest.approx(float(parts["kl"]) + 0.25 * ce, rel=1e-6)


def test_hidden_alignment_is_the_scaled_l2_distance():
    target = torch.zeros(2, 3, 4)
    output = torch.full((2, 3, 4), 0.5)  # ||0.5 * ones(4)|| = 1 at every position
    assert float(hidden_alignment(target, output)) == pytest.approx(1 / 2)
    assert float(hidden_alignment(target, target)) == 0.0


def test_schedules():
    assert cosine_lr(0, 10, 1e-3, 1e-5) == 1e-3 and cosine_lr(9, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(0, 1, 1e-3, 1e-5) == 1e-3
    assert constant(3e-4)(17) == 3e-4
    lr = warmup_cosine(1e-3, 20, 0.1)
    assert lr(0) == pytest.approx(5e-4) and lr(1) == pytest.approx(1e-3) and lr(19) < 1e-5


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    model = torch.nn.Linear(3, 1)
    batches = itertools.cycle([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)])
    return model, batches, lambda inputs, labels: F.mse_loss(model(inputs).squeeze(-1), labels)


def test_train_loop_is_adamw_with_the_schedule_and_clipping():
    torch.manual_seed(0)
    model, batches, loss_fn = _regression()
    twin = torch.nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    ref = torch.optim.AdamW([twin.weight, twin.bias], lr=0.1, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    ref_batches = _regression()[1]
    lr = warmup_cosine(0.1, 12, 0.25)
    for step in range(12):  # the same steps written out: lr, loss, zero_grad, backward, clip, step
        for group in ref.param_groups:
            group["lr"] = lr(step)
        inputs, labels = next(ref_batches)
        loss = F.mse_loss(twin(inputs).squeeze(-1), labels)
        ref.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([twin.weight, twin.bias], 0.5)
        ref.step()
    log = StepLog(12)
    assert train_loop(model, batches, 12, lr, loss_fn, grad_clip=0.5, on_step=log) == 12
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
    assert [r["lr"] for r in log.rows] == [lr(i) for i in range(12)]
    assert [r["tokens"] for r in log.rows] == [48 * (i + 1) for i in range(12)]  # 16 rows x 3 numbers a batch
    assert log.rows[-1]["loss"] < log.rows[0]["loss"]


def test_train_loop_stops_when_asked_or_out_of_time(monkeypatch):
    model, batches, loss_fn = _regression()
    assert train_loop(model, batches, 50, constant(0.01), loss_fn, on_step=lambda s: s.index == 4) == 5
    clock = iter(range(0, 1000, 10))  # each reading 10 s after the last
    monkeypatch.setattr(distill.time, "perf_counter", lambda: float(next(clock)))
    seen = []
    steps = train_loop(model, batches, 50, constant(0.01), loss_fn, on_step=seen.append, max_seconds=25.0)
    assert steps == 3 and [s.out_of_time for s in seen] == [False, False, True] and seen[-1].wall_s == 30.0


def test_train_only_freezes_the_rest():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    params = train_only(model, [model[1]])
    assert params == [model[1].weight, model[1].bias] and not model[0].weight.requires_grad
    assert len(train_only(model)) == 4 and model[0].weight.requires_grad


def test_step_log_rows_and_progress_events():
    model, batches, loss_fn = _regression()

    def with_terms(inputs, labels):
        loss = loss_fn(inputs, labels)
        return loss, {"half": loss / 2}

    events = []
    log = StepLog(10, events.append, tags={"stage": "a"}, first=1, every=4, event={"event": "step"}, wall=True)
    train_loop(model, batches, 10, constant(0.01), with_terms, on_step=log)
    assert list(log.rows[0]) == ["stage", "step", "loss", "half", "lr", "tokens", "wall_s"]
    assert [r["step"] for r in log.rows] == list(range(1, 11))
    assert all(math.isclose(r["half"], r["loss"] / 2, rel_tol=1e-6) for r in log.rows)
    assert [e["step"] for e in events] == [4, 8, 10] and all(e["event"] == "step" and e["steps"] == 10 for e in events)
    only = []
    log = StepLog(3, only.append, tags={"variant": "v"}, event_keys=("variant", "step", "steps"))
    train_loop(model, batches, 3, constant(0.01), loss_fn, on_step=log)
    assert only == [{"variant": "v", "step": i, "steps": 3} for i in range(3)]
