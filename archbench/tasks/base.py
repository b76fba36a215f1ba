"""The task contract: what a task gives the training loop and how it is scored.

A task turns ``(its options, seed)`` into token sequences with labels, deterministically:

    inputs  [N, T]  int64 token ids fed to the model
    labels  [N, T]  int64 target id at each position, or IGNORE (-100) where nothing is scored

``labels[:, t]`` is what the model must predict after reading ``inputs[:, :t+1]`` (next-token
convention, already shifted). A task also names its evaluation sets: one or more held-out
``TaskData`` keyed by a group label (``"kv=4"``, ``"T=512 depth=0.50"``), drawn from seeds
disjoint from the training seeds, so accuracy can be reported overall and per group.

Tasks know nothing of architectures or training; ``archbench.tasks.train`` does the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

IGNORE = -100

# Seeds are mixed with a per-split salt so a train set and a test set never share a stream.
TRAIN_SALT, TEST_SALT = 0x7A11, 0x7E57


def split_seed(seed: int, split: str, group: int = 0) -> int:
    """A generator seed for (user seed, split, eval group): disjoint streams for train/test."""
    salt = {"train": TRAIN_SALT, "test": TEST_SALT}[split]
    return (int(seed) * 1_000_003 + salt * 7919 + int(group) * 104_729) % (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


@dataclass
class TaskData:
    """A batch of examples: ``inputs`` and ``labels`` [N, T] on CPU."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape != self.labels.shape or self.inputs.dim() != 2:
            raise ValueError(f"inputs and labels must both be [N, T] (got {tuple(self.inputs.shape)}, {tuple(self.labels.shape)})")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def slice(self, idx) -> "TaskData":
        return TaskData(self.inputs[idx], self.labels[idx])


class TaskError(ValueError):
    """Options a task cannot satisfy; the message is one line and says what to change."""


class Task:
    """Base class: subclasses are dataclasses of their options and implement ``sample``.

    ``metric`` is ``"accuracy"`` (exact match at labelled positions, higher is better) or
    ``"bits_per_byte"`` (cross-entropy in bits at labelled positions, lower is better).
    ``default_ffn`` is the MLP the model gets unless the suite says otherwise: Zoology's
    recall models have none.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    default_ffn: ClassVar[str | None] = None
    seq_len: int
    vocab_size: int

    def sample(self, n: int, seed: int) -> TaskData:  # pragma: no cover - abstract
        """``n`` training examples from the stream of ``seed`` (deterministic)."""
        raise NotImplementedError

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        """Held-out sets keyed by group label; default: one set of the training distribution."""
        return {"all": self.sample(n, split_seed(seed, "test"))}

    def describe(self) -> dict[str, Any]:
        """The options that define the data (recorded in each row)."""
        return {"task": self.name, **dataclasses.asdict(self)}


TASKS: dict[str, Callable[..., Task]] = {}


def register(cls):
    """Class decorator: make a Task subclass available by its ``name``."""
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **options) -> Task:
    """Build a task by name from its options; unknown names/options give a one-line TaskError."""
    from archbench import tasks as _  # noqa: F401 - registers the built-in tasks

    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TaskError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; options: {', '.join(sorted(fields))}")
    try:
        return cls(**options)
    except TypeError as e:
        raise TaskError(f"task {name!r}: {e}") from None
