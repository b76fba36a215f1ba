"""Training a model, from scratch or from a teacher: the losses and the one optimisation loop.

Losses, all on float32 logits ``[..., V]`` with positions flattened:

* ``cross_entropy``: next-token cross-entropy against ``labels`` (the task cells, the bridge).
* ``kl_divergence``: KL(teacher || student) of the next-token distributions at a temperature T,
  averaged over positions and scaled by T^2 (Hinton et al.: the gradients keep their size as T
  grows). ``per_position`` sums each position's KL over the vocabulary before averaging, which
  differs only in float rounding.
* ``kd_loss``: ``kl_weight * KL + ce_weight * CE`` from one log-softmax of the student (RADLADS'
  steps 2 and 3); ``kd_terms``: ``KL + ce_weight * CE`` with each term on its own and both
  returned, for a history that records them (RAD).
* ``hidden_alignment``: ||target - output||_2 / sqrt(d), averaged over positions (RADLADS' step 1,
  one attention module's output against the teacher's).

Schedules map a 0-based step to a learning rate: ``warmup_cosine`` (linear warm-up, then cosine
decay to zero: ``lr_at``), ``cosine`` (from a peak at the first step to a floor at the last:
``cosine_lr``) and ``constant``.

``train_loop`` is AdamW over the given parameters (``make_optimizer``: weight decay on matrices
and embeddings only), one batch per step: set the step's learning rate, compute the loss, clear
the gradients, backpropagate, clip the gradient norm, step the optimiser. After every step it
calls ``on_step`` with a ``Step`` (the loss stays a tensor, so a GPU caller decides when to read
it back); ``on_step`` returning true ends the loop there, and so does a time budget once passed.
``StepLog`` is the ``on_step`` that keeps one history row per step and forwards rows to a
progress callback.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


# ---- losses ----------------------------------------------------------------------------------


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax of ``logits / temperature`` in float32, positions flattened: [N, V]."""
    x = logits.float().flatten(0, -2)
    return F.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in nats of ``logits`` [..., V] against ``labels`` [...]."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), reduction=reduction)


def _kl(s: torch.Tensor, t: torch.Tensor, temperature: float, per_position: bool) -> torch.Tensor:
    if per_position:
        kl = (t.exp() * (t - s)).sum(-1).mean()
    else:
        kl = F.kl_div(s, t, log_target=True, reduction="batchmean")
    return kl if temperature == 1.0 else kl * temperature * temperature


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  per_position: bool = False) -> torch.Tensor:  # fmt: skip
    """Mean over positions of KL(teacher || student) at ``temperature``, times temperature^2."""
    s, t = log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)
    return _kl(s, t, temperature, per_position)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            labels: torch.Tensor | None = None, kl_weight: float = 1.0, ce_weight: float = 0.0,
            temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``kl_weight * KL(teacher || student) + ce_weight * CE(labels)``, both from one log-softmax of
    the student (the cross-entropy at temperature 1); a zero weight skips its term."""
    s = log_probs(student_logits, temperature)
    loss = s.new_zeros(())
    if kl_weight:
        loss = loss + kl_weight * _kl(s, log_probs(teacher_logits, temperature), temperature, False)
    if ce_weight:
        s1 = s if temperature == 1.0 else log_probs(student_logits)
        loss = loss + ce_weight * F.nll_loss(s1, labels.flatten())
    return loss


def kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             ce_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """``KL + ce_weight * CE`` and the terms ``{"kl", "ce"}``: the KL summed per position then
    averaged, the cross-entropy computed on its own (so it is recorded even at weight 0)."""
    kl = kl_divergence(student_logits, teacher_logits, per_position=True)
    ce = cross_entropy(student_logits, labels)
    return kl + ce_weight * ce, {"kl": kl, "ce": ce}


def hidden_alignment(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ||target - output||_2 * d^-0.5 (d: the hidden width), in float32."""
    return (target.float() - output.float()).norm(dim=-1).mean() * target.shape[-1] ** -0.5


# ---- schedules -------------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac * total`` steps, then cosine decay to zero."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cosine_lr(step: int, steps: int, peak: float, floor: float) -> float:
    """Cosine from ``peak`` at step 0 to ``floor`` at the last step."""
    if steps <= 1:
        return peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * step / (steps - 1)))


def warmup_cosine(peak: float, total: int, warmup_frac: float) -> Callable[[int], float]:
    return lambda step: lr_at(step, total, peak, warmup_frac)


def cosine(peak: float, floor: float, steps: int) -> Callable[[int], float]:
    return lambda step: cosine_lr(step, steps, peak, floor)


def constant(lr: float) -> Callable[[int], float]:
    return lambda step: lr


# ---- the loop --------------------------------------------------------------------------------


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require gradients, in its order."""
    return [p for p in model.parameters() if p.requires_grad]


def train_only(model: nn.Module, parts: Iterable[nn.Module] | None = None) -> list[nn.Parameter]:
    """Make the parameters of ``parts`` (every parameter when None) the only trainable ones of
    ``model``; returns them in ``model``'s order."""
    keep = None if parts is None else {id(p) for m in parts for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)
    return trainable(model)


def make_optimizer(model: nn.Module | Iterable[nn.Parameter], lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.98)) -> torch.optim.AdamW:  # fmt: skip
    """AdamW over the trainable parameters of ``model`` (a module or a list of parameters): weight
    decay on matrices and embeddings (dim >= 2), none on norms and biases."""
    params = trainable(model) if isinstance(model, nn.Module) else [p for p in model if p.requires_grad]
    decay, no_decay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


@dataclass
class Step:
    """One optimiser step, as ``train_loop`` hands it to ``on_step``."""

    index: int  # 0-based
    loss: torch.Tensor  # detached scalar (read it back with float())
    lr: float
    tokens: int  # tokens seen so far, this step's batch included
    wall_s: float  # since the loop's clock started
    out_of_time: bool  # the time budget ran out at this step, before the last: the loop stops after it
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # the loss's named terms (detached), if any


def train_loop(params: nn.Module | Sequence[nn.Parameter], batches: Batches, steps: int, lr: Callable[[int], float],
               loss_fn: LossFn, *, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.98),
               grad_clip: float | None = 1.0, on_step: Callable[[Step], bool | None] | None = None,
               tokens: int = 0, started: float | None = None, max_seconds: float | None = None) -> int:  # fmt: skip
    """Run up to ``steps`` AdamW steps on ``params`` (a module: its trainable parameters) with
    learning rate ``lr(step)``; ``loss_fn(inputs, labels)`` returns the loss, or (loss, named
    terms). ``tokens`` counts on from the given number; the clock runs from ``started`` (a
    ``time.perf_counter()`` reading; default now), and with ``max_seconds`` the loop stops after
    the first step past it. Returns the number of steps taken."""
    params = trainable(params) if isinstance(params, nn.Module) else list(params)
    opt = make_optimizer(params, lr(0), weight_decay, betas)
    t0 = time.perf_counter() if started is None else started
    for index in range(steps):
        rate = lr(index)
        for group in opt.param_groups:
            group["lr"] = rate
        inputs, labels = next(batches)
        out = loss_fn(inputs, labels)
        loss, parts = out if isinstance(out, tuple) else (out, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        tokens += inputs.numel()
        wall = time.perf_counter() - t0
        late = max_seconds is not None and index + 1 < steps and wall > max_seconds
        terms = {k: v.detach() for k, v in parts.items()}
        stop = on_step(Step(index, loss.detach(), rate, tokens, wall, late, terms)) if on_step else None
        if stop or late:
            return index + 1
    return steps


class StepLog:
    """An ``on_step`` that keeps one row per step in ``rows``: ``tags``, then ``step`` (counted from
    ``first``), ``loss``, the loss's named terms, ``lr``, ``tokens`` (and ``wall_s`` with ``wall``).
    Every ``every`` steps, and at the last, ``progress`` gets ``{**event, **row, "steps": steps}``,
    or only ``event_keys`` of that when given."""

    def __init__(self, steps: int, progress: Callable[[dict], None] | None = None, *, tags: dict | None = None,
                 first: int = 0, wall: bool = False, every: int = 1, event: dict | None = None,
                 event_keys: Sequence[str] | None = None):  # fmt: skip
        self.steps, self.progress, self.tags, self.first, self.wall = steps, progress, dict(tags or {}), first, wall
        self.every, self.event, self.event_keys = max(1, every), dict(event or {}), event_keys
        self.rows: list[dict] = []

    def __call__(self, s: Step) -> None:
        row = {**self.tags, "step": s.index + self.first, "loss": float(s.loss),
               **{k: float(v) for k, v in s.parts.items()}, "lr": s.lr, "tokens": s.tokens}  # fmt: skip
        if self.wall:
            row["wall_s"] = s.wall_s
        self.rows.append(row)
        if self.progress and ((s.index + 1) % self.every == 0 or s.index + 1 == self.steps):
            info = {**self.event, **row, "steps": self.steps}
            self.progress(info if self.event_keys is None else {k: info[k] for k in self.event_keys})
