"""Passkey retrieval (Mohtashami & Jaggi, 2023, "Landmark Attention: Random-Access Infinite
Context Length for Transformers").

A short random number is hidden in a long stretch of filler text and must be repeated at the
end. The filler is one fixed sentence pattern repeated, so it is perfectly predictable and
carries no information: the only thing worth remembering in the whole sequence is the key.
An example of length T with ``n`` digits reads::

    filler ... <key> d1 .. dn </key> filler ... <query> d1 .. d(n-1)

The labels are the n digits, teacher forced: the position of ``<query>`` predicts d1, the
position of d1 predicts d2, ..., the position of d(n-1) predicts dn; every other label is
ignored. The filler region holds F = T - 2n - 2 tokens; at depth ``d`` the key block starts
after ``round(d * F)`` of them (depth 0: the key opens the sequence, depth 1: it sits right
before the query). The filler is one continuous stream of the pattern that the key block
interrupts, so the filler token at filler index j is always ``pattern[j % len(pattern)]``.

Vocabulary (``VOCAB``, 29 ids)::

    0-9    the digits
    10     <key>     (KEY_START)
    11     </key>    (KEY_END)
    12     <query>   (QUERY)
    13-28  filler words: the grass is green . sky blue sun yellow here we go there and back again

The filler pattern is "the grass is green . the sky is blue . the sun is yellow . here we go .
there and back again ." (24 tokens). Training draws the depth uniformly (``depth=None``) or
fixes it; evaluation reports one group per (length, depth), ``"T=512 depth=0.50"``, so
accuracy can be read as a grid over context length and key depth, and lengths beyond the
training length measure extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from archbench.tasks.base import IGNORE, Task, TaskData, TaskError, generator, register, split_seed

KEY_START, KEY_END, QUERY = 10, 11, 12
SENTENCES = "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again ."
_WORDS = tuple(dict.fromkeys(SENTENCES.split()))  # in order of first appearance
WORD_IDS = {w: 13 + i for i, w in enumerate(_WORDS)}
PATTERN = tuple(WORD_IDS[w] for w in SENTENCES.split())
VOCAB = 13 + len(_WORDS)


@register
@dataclass
class Passkey(Task):
    name = "passkey"
    metric = "accuracy"
    default_ffn = "swiglu"
    vocab_size: ClassVar[int] = VOCAB

    seq_len: int = 256
    n_digits: int = 5
    depth: float | None = None  # None: uniform in [0, 1] per example; a float fixes it
    test_lengths: tuple[int, ...] | None = None  # eval lengths (default: seq_len only)
    test_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        self.seq_len, self.n_digits = int(self.seq_len), int(self.n_digits)
        if self.n_digits < 1:
            raise TaskError(f"passkey: n_digits must be >= 1 (got {self.n_digits})")
        if self.depth is not None:
            self.depth = check_depth(self.depth, "depth")
        if self.test_lengths is not None:
            self.test_lengths = tuple(int(t) for t in self.test_lengths)
            if not self.test_lengths:
                raise TaskError("passkey: test_lengths is empty; give at least one length or leave it unset")
        self.test_depths = tuple(check_depth(d, "test_depths") for d in self.test_depths)
        if not self.test_depths:
            raise TaskError("passkey: test_depths is empty; give at least one depth in [0, 1]")
        labels = [f"{d:.2f}" for d in self.test_depths]
        if len(set(labels)) < len(labels):
            raise TaskError(f"passkey: test_depths {self.test_depths} repeat at 2 decimals; keep them >= 0.01 apart")
        for T in (self.seq_len, *self.lengths):
            check_length(T, self.n_digits)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The evaluation lengths (``test_lengths`` or the training length), without repeats."""
        return tuple(dict.fromkeys(self.test_lengths or (self.seq_len,)))

    def sample(self, n: int, seed: int) -> TaskData:
        return generate(n, self.seq_len, self.n_digits, self.depth, seed)

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        sets = {}
        for T in self.lengths:
            for d in self.test_depths:
                group = T * 1001 + round(d * 1000)  # fixed per (T, depth): groups keep their data when others change
                sets[f"T={T} depth={d:.2f}"] = generate(n, T, self.n_digits, d, split_seed(seed, "test", group))
        return sets

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vocab_size": self.vocab_size}


def check_depth(value, option: str) -> float:
    """A depth as a float in [0, 1], or a one-line TaskError naming the option."""
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise TaskError(f"passkey: {option} must be a number in [0, 1] (got {value!r})") from None
    if not 0.0 <= d <= 1.0:
        raise TaskError(f"passkey: {option} must be in [0, 1] (got {value!r})")
    return d


def check_length(seq_len: int, n_digits: int) -> None:
    """A sequence must hold the key block (n + 2 tokens) and the query with its answer (n tokens)."""
    need = 2 * n_digits + 2
    if seq_len < need:
        raise TaskError(f"passkey: length {seq_len} cannot hold {n_digits} digits twice plus markers; use >= {need}")


def filler_length(seq_len: int, n_digits: int) -> int:
    """F: the number of filler tokens in an example of this length."""
    return seq_len - 2 * n_digits - 2


def key_start(seq_len: int, n_digits: int, depth: float) -> int:
    """Position of ``<key>`` at a fixed depth: ``round(depth * F)`` filler tokens precede it."""
    return math.floor(depth * filler_length(seq_len, n_digits) + 0.5)


def generate(n: int, seq_len: int, n_digits: int, depth: float | None, seed: int) -> TaskData:
    """``n`` passkey examples, deterministic in all arguments (``depth=None``: uniform per example)."""
    check_length(seq_len, n_digits)
    g = generator(seed)
    T, nd = seq_len, n_digits
    F = filler_length(T, nd)
    digits = torch.randint(0, 10, (n, nd), generator=g)
    if depth is None:
        start = torch.randint(0, F + 1, (n, 1), generator=g)
    else:
        start = torch.full((n, 1), key_start(T, nd, check_depth(depth, "depth")), dtype=torch.long)
    pos = torch.arange(T).unsqueeze(0)
    # the filler stream continues across the key block: filler index j = pos before it, pos - (n + 2) after
    filler_index = torch.where(pos < start, pos, pos - (nd + 2))
    inputs = torch.tensor(PATTERN)[filler_index.remainder(len(PATTERN))]
    block = torch.cat([torch.full((n, 1), KEY_START), digits, torch.full((n, 1), KEY_END)], dim=1)
    offset = pos - start
    in_block = (offset >= 0) & (offset < nd + 2)
    inputs = torch.where(in_block, block.gather(1, offset.clamp(0, nd + 1)), inputs)
    inputs[:, T - nd] = QUERY
    inputs[:, T - nd + 1 :] = digits[:, : nd - 1]
    labels = torch.full((n, T), IGNORE, dtype=torch.long)
    labels[:, T - nd :] = digits
    return TaskData(inputs, labels)
