"""Selective copying and induction heads (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", section 4.1 and appendix E.1).

Both tasks separate models that can *choose* what to keep in their state from those whose state
update ignores the content of the input (time-invariant SSMs, plain convolutions).

**Selective copying.** An example of length T over V ids hides ``k = n_tokens`` data tokens
(drawn with replacement from [2, V)) at distinct random positions of a region of length
``T - k`` whose other positions hold the noise id 0, then ends with ``k`` copies of the marker
id 1::

    0 7 0 0 4 0 9 0 0 0 | 1 1 1          (T = 13, k = 3)
                           7 4 9          <- the labels, one per marker read

Plain copying puts the data at fixed positions, so a fixed convolution kernel solves it; here
the spacing is random and the model must decide, token by token, what to store. Labels follow
the shifted contract (``labels[:, t]`` is predicted after reading ``inputs[:, :t+1]``) and sit
at the marker positions: label j, the j-th data token in order of position, is at position
``T - k + j``, i.e. it is predicted right after the (j+1)-th marker has been read. This is the
paper's layout (output j aligned with marker j), and every scored prediction comes after at
least one marker, so no label asks the model to know its absolute position. The region before
the markers is unlabelled. Requires ``T >= 2k`` (room for k distinct positions) and ``V >= 3``.

**Induction heads.** An example of length T is random data tokens from [2, V) in which the
trigger id 1 appears exactly twice: once at a random position ``p`` in [0, T - 3], followed by
a data token ``x`` at ``p + 1``, and again as the last input token. The only label, at position
T - 1, is ``x``: the model must find the earlier trigger and copy what followed it (the
"induction head" mechanism of Olsson et al., 2022). Id 0 is reserved and never appears.
Evaluating at ``test_lengths`` longer than the training length measures length extrapolation,
the paper's headline for this task. Requires ``T >= 3`` and ``V >= 3``.

Both are scored by accuracy at the labelled positions and generated vectorised from a seeded
``torch.Generator``: deterministic in (options, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archbench.tasks.base import IGNORE, Task, TaskData, TaskError, generator, register, split_seed

NOISE, MARKER = 0, 1  # selective copying: blank filler, "copy now" marker
TRIGGER = 1  # induction heads: the token whose successor must be recalled
FIRST_DATA = 2  # data ids are [2, vocab_size) in both tasks

_CHUNK = 1024  # selective copying: examples generated at a time (bounds the [m, T] random matrix)


def _positive_int(task: str, option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TaskError(f"{task}: {option} must be a positive integer (got {value!r})")
    return value


@register
@dataclass
class SelectiveCopy(Task):
    name = "selective_copy"
    metric = "accuracy"
    default_ffn = None

    seq_len: int = 256
    vocab_size: int = 16
    n_tokens: int = 16

    def __post_init__(self) -> None:
        check_selective_copy(self.seq_len, self.vocab_size, self.n_tokens)

    def sample(self, n: int, seed: int) -> TaskData:
        return selective_copy(n, self.seq_len, self.vocab_size, self.n_tokens, seed)


def check_selective_copy(seq_len: int, vocab_size: int, n_tokens: int) -> None:
    """The generator's preconditions, as one-line TaskErrors."""
    for option, value in (("seq_len", seq_len), ("vocab_size", vocab_size), ("n_tokens", n_tokens)):
        _positive_int("selective_copy", option, value)
    if seq_len < 2 * n_tokens:
        raise TaskError(
            f"selective_copy: need seq_len >= 2 * n_tokens (got T={seq_len}, n_tokens={n_tokens}); raise seq_len or lower n_tokens"
        )
    if vocab_size < 3:
        raise TaskError(f"selective_copy: need vocab_size >= 3 (ids 0 and 1 are noise and marker; got {vocab_size})")


def selective_copy(n: int, seq_len: int, vocab_size: int, n_tokens: int, seed: int) -> TaskData:
    """``n`` selective-copying examples, deterministic in all arguments (layout: module docstring)."""
    check_selective_copy(seq_len, vocab_size, n_tokens)
    g = generator(seed)
    k, region = n_tokens, seq_len - n_tokens
    inputs = torch.full((n, seq_len), NOISE, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    inputs[:, region:] = MARKER
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        data = torch.randint(FIRST_DATA, vocab_size, (m, k), generator=g)
        # k distinct positions of the region, uniformly: the top-k of i.i.d. uniforms, then in order
        pos = torch.rand(m, region, generator=g).topk(k, dim=1).indices.sort(dim=1).values
        inputs[lo : lo + m].scatter_(1, pos, data)
        labels[lo : lo + m, region:] = data  # after reading marker j, emit the j-th data token
    return TaskData(inputs, labels)


@register
@dataclass
class InductionHeads(Task):
    name = "induction"
    metric = "accuracy"
    default_ffn = None

    seq_len: int = 256
    vocab_size: int = 16
    test_lengths: tuple[int, ...] | None = None  # eval groups "T=<len>" (default: seq_len only)

    def __post_init__(self) -> None:
        if self.test_lengths is not None:
            if isinstance(self.test_lengths, (int, str)) or not len(self.test_lengths):
                raise TaskError(
                    f"induction: test_lengths must be a non-empty list of lengths (got {self.test_lengths!r})"
                )
            self.test_lengths = tuple(_positive_int("induction", "test_lengths", t) for t in self.test_lengths)
            if len(set(self.test_lengths)) != len(self.test_lengths):
                raise TaskError(
                    f"induction: test_lengths has repeats ({list(self.test_lengths)}); list each length once"
                )
        for length in (self.seq_len, *(self.test_lengths or ())):
            check_induction(length, self.vocab_size)

    def sample(self, n: int, seed: int) -> TaskData:
        return induction(n, self.seq_len, self.vocab_size, seed)

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        lengths = self.test_lengths or (self.seq_len,)
        return {f"T={t}": induction(n, t, self.vocab_size, split_seed(seed, "test", t)) for t in lengths}


def check_induction(seq_len: int, vocab_size: int) -> None:
    """The generator's preconditions, as one-line TaskErrors."""
    _positive_int("induction", "seq_len", seq_len)
    _positive_int("induction", "vocab_size", vocab_size)
    if seq_len < 3:
        raise TaskError(f"induction: need seq_len >= 3 (trigger, its successor, final trigger; got {seq_len})")
    if vocab_size < 3:
        raise TaskError(f"induction: need vocab_size >= 3 (id 0 is reserved and 1 is the trigger; got {vocab_size})")


def induction(n: int, seq_len: int, vocab_size: int, seed: int) -> TaskData:
    """``n`` induction-heads examples, deterministic in all arguments (layout: module docstring)."""
    check_induction(seq_len, vocab_size)
    g = generator(seed)
    rows = torch.arange(n)
    inputs = torch.randint(FIRST_DATA, vocab_size, (n, seq_len), generator=g)
    p = torch.randint(0, seq_len - 2, (n,), generator=g)  # first trigger in [0, T-3]; its successor stays data
    inputs[rows, p] = TRIGGER
    inputs[:, -1] = TRIGGER
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    labels[:, -1] = inputs[rows, p + 1]
    return TaskData(inputs, labels)
