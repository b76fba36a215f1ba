"""Scores for task predictions, computed only at labelled positions (label != -100).

``accuracy``: per example, the fraction of its labelled positions predicted exactly (argmax),
then the mean over examples (Zoology's MQAR metric); ``exact``: the fraction of examples with
every labelled position right (a passkey is found only if all its digits are); ``bits``:
mean cross-entropy in bits per labelled token (bits per byte for a byte-level LM).
"""

from __future__ import annotations

import math

import torch

from archbench.tasks.base import IGNORE


def per_example_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] accuracy of each example over its labelled positions (NaN for an example with none)."""
    mask = labels != IGNORE
    hits = ((preds == labels) & mask).sum(dim=1).double()
    n = mask.sum(dim=1).double()
    return torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(n, float("nan")))


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples (with at least one label) of their per-example accuracy."""
    acc = per_example_accuracy(preds, labels)
    acc = acc[~acc.isnan()]
    if acc.numel() == 0:
        raise ValueError("no labelled positions to score")
    return float(acc.mean())


def exact_match(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples (with at least one label) whose labelled positions are all right."""
    acc = per_example_accuracy(preds, labels)
    acc = acc[~acc.isnan()]
    if acc.numel() == 0:
        raise ValueError("no labelled positions to score")
    return float((acc == 1.0).double().mean())


def bits_per_token(total_nats: float, n_tokens: int) -> float:
    """Cross-entropy summed in nats over n tokens -> mean bits per token."""
    if n_tokens <= 0:
        raise ValueError("no labelled positions to score")
    return total_nats / n_tokens / math.log(2)


def better(metric: str, a: float | None, b: float | None) -> bool:
    """Is score ``a`` better than ``b`` for this metric (None is worst)?"""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return False
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a < b if metric == "bits_per_byte" else a > b


def passes(metric: str, value: float | None, target: float | None) -> bool:
    """Has a run reached its early-stop target (accuracy >= target, bits <= target)?"""
    if target is None or value is None or math.isnan(value):
        return False
    return value <= target if metric == "bits_per_byte" else value >= target
