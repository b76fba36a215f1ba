"""The training loop every task shares.

AdamW (weight decay on matrices and embeddings, none on norms and biases), linear warm-up then
cosine decay to zero, gradient-norm clipping, evaluation every ``eval_every`` steps on the
task's held-out sets, early stop once the overall score passes ``target``. With ``epochs`` set
the run is counted in passes over the training set instead (Zoology's protocol): ``epochs`` times
``train_examples // batch_size`` steps, the cosine schedule over all of them, an evaluation after
every epoch. Loss and scores
are computed only at labelled positions, so the output head runs on those rows alone (a
large-vocabulary MQAR costs what its queries cost). Deterministic on CPU given the seed:
the seed fixes the initialisation, the training set and the order of its batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from archbench.tasks.base import IGNORE, Task, TaskData, generator, split_seed
from archbench.tasks.metrics import accuracy, bits_per_token, exact_match, passes


@dataclass(frozen=True)
class TrainSettings:
    """One training run's settings (the suite's ``defaults.train`` minus the grids)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    target: float | None = None
    train_examples: int = 20_000
    test_examples: int = 500
    eval_batch: int = 256
    max_train_s: float | None = None  # wall-time cap per run: evaluate and stop once passed
    epochs: int | None = None  # passes over the training set instead of ``steps`` (evaluated after each)

    def schedule(self) -> tuple[int, int]:
        """(total steps, steps between evaluations): ``steps`` and ``eval_every``, or from ``epochs``."""
        if self.epochs is None:
            return self.steps, self.eval_every
        per_epoch = max(1, self.train_examples // self.batch_size)
        return self.epochs * per_epoch, per_epoch


@dataclass
class RunResult:
    """What one (lr, seed) run produced."""

    lr: float
    seed: int
    score: float  # the task metric on the held-out sets at the end of the run
    by_group: dict[str, float]
    exact: float | None  # accuracy tasks: fraction of examples fully right
    steps: int
    tokens_seen: int
    wall_s: float
    stopped_early: bool
    diverged: bool
    final_loss: float
    out_of_time: bool = False  # stopped by ``max_train_s`` before its schedule ended
    history: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model, when kept


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac * total`` steps, then cosine decay to zero."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


def labelled_loss(model, inputs: torch.Tensor, labels: torch.Tensor, autocast: dict | None = None):
    """(summed cross-entropy in nats, the logits at labelled positions, their labels)."""
    with torch.autocast(**autocast) if autocast else _null():
        h = model.hidden(inputs)
    mask = labels != IGNORE
    logits = model.head(h[mask].float() if autocast else h[mask]).float()
    target = labels[mask]
    return F.cross_entropy(logits, target, reduction="sum"), logits, target


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def evaluate(model, task: Task, sets: dict[str, TaskData], settings: TrainSettings, device: str, autocast=None) -> dict:
    """The task metric per eval group and overall (examples pooled across groups)."""
    was_training = model.training
    model.eval()
    groups, total_nats, total_tokens, exact_all, preds_all = {}, 0.0, 0, [], []
    for name, data in sets.items():
        nats, tokens, preds, labs = 0.0, 0, [], []
        for lo in range(0, len(data), settings.eval_batch):
            inp = data.inputs[lo : lo + settings.eval_batch].to(device)
            lab = data.labels[lo : lo + settings.eval_batch].to(device)
            loss, logits, target = labelled_loss(model, inp, lab, autocast)
            nats += float(loss)
            tokens += target.numel()
            full = torch.full_like(lab, IGNORE)
            full[lab != IGNORE] = logits.argmax(-1)
            preds.append(full.cpu())
            labs.append(lab.cpu())
        preds_t, labs_t = torch.cat(preds), torch.cat(labs)
        if task.metric == "bits_per_byte":
            groups[name] = bits_per_token(nats, tokens)
        else:
            groups[name] = accuracy(preds_t, labs_t)
            exact_all.append((exact_match(preds_t, labs_t), len(data)))
        total_nats, total_tokens = total_nats + nats, total_tokens + tokens
        preds_all.append((preds_t, labs_t))
    if task.metric == "bits_per_byte":
        overall = bits_per_token(total_nats, total_tokens)
        exact = None
    else:
        n = sum(len(d) for d in sets.values())
        overall = sum(groups[k] * len(d) for k, d in sets.items()) / n
        exact = sum(e * m for e, m in exact_all) / n
    model.train(was_training)
    return {"score": overall, "by_group": groups, "exact": exact, "loss_nats": total_nats / max(1, total_tokens)}


def train_run(
    build_model: Callable[[], torch.nn.Module],
    task: Task,
    settings: TrainSettings,
    seed: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_progress: Callable[[dict], None] | None = None,
    keep_model: bool = False,
) -> RunResult:
    """Train one model from scratch with ``settings.lr`` and ``seed``; evaluate it (and return
    it as ``result.model`` when ``keep_model``)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model().to(device)
    model.train()
    opt = make_optimizer(model, settings.lr, settings.weight_decay)
    train = task.sample(settings.train_examples, split_seed(seed, "train"))
    sets = task.eval_sets(settings.test_examples, seed)
    autocast = {"device_type": torch.device(device).type, "dtype": dtype} if dtype != torch.float32 else None
    order_gen = generator(split_seed(seed, "train", 1))
    order = torch.randperm(len(train), generator=order_gen).to(device)
    # the training set lives on the device once (no host gather and copy per step), and on a GPU
    # the loss is read back (a host sync) only every `check` steps, so launches run ahead
    train_inputs, train_labels = train.inputs.to(device), train.labels.to(device)
    check = 1 if torch.device(device).type == "cpu" else min(settings.schedule()[1], 50)
    total, eval_every = settings.schedule()
    cursor, history, last = 0, [], None
    stopped_early = diverged = out_of_time = False
    loss_val = float("nan")
    step = 0
    for step in range(1, total + 1):
        if cursor + settings.batch_size > len(train):
            order, cursor = torch.randperm(len(train), generator=order_gen).to(device), 0
        idx = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        inputs, labels = train_inputs[idx], train_labels[idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, total, settings.lr, settings.warmup_frac)
        nats, _, target = labelled_loss(model, inputs, labels, autocast)
        loss = nats / max(1, target.numel())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        at_eval = step % eval_every == 0 or step == total
        if settings.max_train_s is not None and step < total and time.perf_counter() - t0 > settings.max_train_s:
            out_of_time = at_eval = True
        if step % check == 0 or at_eval:
            loss_val = float(loss.detach())
            if not math.isfinite(loss_val):
                diverged = True
        if diverged or at_eval:
            last = evaluate(model, task, sets, settings, device, autocast)
            history.append({"step": step, "loss": loss_val, "score": last["score"]})
            if on_progress:
                on_progress({"step": step, "steps": total, "lr": settings.lr, "seed": seed, "loss": loss_val, "score": last["score"]})
            if diverged or out_of_time:
                break
            if passes(task.metric, last["score"], settings.target):
                stopped_early = step < total
                break
    return RunResult(
        lr=settings.lr,
        seed=seed,
        score=last["score"],
        by_group=last["by_group"],
        exact=last["exact"],
        steps=step,
        tokens_seen=step * settings.batch_size * task.seq_len,
        wall_s=time.perf_counter() - t0,
        stopped_early=stopped_early,
        diverged=diverged,
        final_loss=loss_val,
        out_of_time=out_of_time,
        history=history,
        model=model.eval() if keep_model else None,
    )
