"""How every task trains a model: ``archbench.distill.train_loop`` (AdamW with weight decay on
matrices and embeddings, none on norms and biases; linear warm-up then cosine decay to zero;
gradient-norm clipping) on shuffled batches of the task's training set, evaluated every
``eval_every`` steps on the task's held-out sets, stopped early once the overall score passes
``target``, on divergence, or past ``max_train_s``. With ``epochs`` set the run is counted in
passes over the training set instead (Zoology's protocol): ``epochs`` times ``train_examples //
batch_size`` steps, the cosine schedule over all of them, an evaluation after every epoch. Loss
and scores are computed only at labelled positions, so the output head runs on those rows alone
(a large-vocabulary MQAR costs what its queries cost). Deterministic on CPU given the seed: the
seed fixes the initialisation, the training set and the order of its batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from archbench.distill import Step, cross_entropy, lr_at, make_optimizer, train_loop, warmup_cosine  # noqa: F401
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


def labelled_loss(model, inputs: torch.Tensor, labels: torch.Tensor, autocast: dict | None = None):
    """(summed cross-entropy in nats, the logits at labelled positions, their labels)."""
    with torch.autocast(**autocast) if autocast else _null():
        h = model.hidden(inputs)
    mask = labels != IGNORE
    logits = model.head(h[mask].float() if autocast else h[mask]).float()
    target = labels[mask]
    return cross_entropy(logits, target, reduction="sum"), logits, target


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


def shuffled_batches(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator,
                     device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Endless batches in a shuffled order, reshuffled (``gen``) when the rest would not fill a batch."""
    order, cursor = torch.randperm(len(inputs), generator=gen).to(device), 0
    while True:
        if cursor + batch_size > len(inputs):
            order, cursor = torch.randperm(len(inputs), generator=gen).to(device), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        yield inputs[idx], labels[idx]


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
    train = task.sample(settings.train_examples, split_seed(seed, "train"))
    sets = task.eval_sets(settings.test_examples, seed)
    autocast = {"device_type": torch.device(device).type, "dtype": dtype} if dtype != torch.float32 else None
    # the training set lives on the device once (no host gather and copy per step), and on a GPU
    # the loss is read back (a host sync) only every `check` steps, so launches run ahead
    batches = shuffled_batches(train.inputs.to(device), train.labels.to(device), settings.batch_size,
                               generator(split_seed(seed, "train", 1)), device)  # fmt: skip
    total, eval_every = settings.schedule()
    check = 1 if torch.device(device).type == "cpu" else min(eval_every, 50)
    history: list[dict] = []
    run = {"last": None, "loss": float("nan"), "diverged": False, "stopped_early": False, "out_of_time": False}

    def loss_fn(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        nats, _, target = labelled_loss(model, inputs, labels, autocast)
        return nats / max(1, target.numel())

    def on_step(s: Step) -> bool:
        """Evaluate every ``eval_every`` steps, at the end, on divergence or when time runs out; stop
        on divergence, time out, or once the score passes the target."""
        step, run["out_of_time"] = s.index + 1, s.out_of_time
        at_eval = step % eval_every == 0 or step == total or s.out_of_time
        if step % check == 0 or at_eval:
            run["loss"] = float(s.loss)
            run["diverged"] = run["diverged"] or not math.isfinite(run["loss"])
        if not (run["diverged"] or at_eval):
            return False
        last = run["last"] = evaluate(model, task, sets, settings, device, autocast)
        history.append({"step": step, "loss": run["loss"], "score": last["score"]})
        if on_progress:
            on_progress({"step": step, "steps": total, "lr": settings.lr, "seed": seed, "loss": run["loss"],
                         "score": last["score"]})  # fmt: skip
        if run["diverged"] or s.out_of_time:
            return True
        if passes(task.metric, last["score"], settings.target):
            run["stopped_early"] = step < total
            return True
        return False

    steps = train_loop(model, batches, total, warmup_cosine(settings.lr, total, settings.warmup_frac), loss_fn,
                       weight_decay=settings.weight_decay, grad_clip=settings.grad_clip, on_step=on_step, started=t0,
                       max_seconds=settings.max_train_s)  # fmt: skip
    last = run["last"]
    return RunResult(
        lr=settings.lr,
        seed=seed,
        score=last["score"],
        by_group=last["by_group"],
        exact=last["exact"],
        steps=steps,
        tokens_seen=steps * settings.batch_size * task.seq_len,
        wall_s=time.perf_counter() - t0,
        stopped_early=run["stopped_early"],
        diverged=run["diverged"],
        final_loss=run["loss"],
        out_of_time=run["out_of_time"],
        history=history,
        model=model.eval() if keep_model else None,
    )
