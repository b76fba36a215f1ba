"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models").

An example of length L over a vocabulary of V ids starts with ``kv`` key-value pairs::

    k1 v1 k2 v2 ... k_kv v_kv | 0 0 k3 0 0 0 k1 0 ... 0

keys drawn from [1, V/2) and values from [V/2, V), no key repeated within an example. Each key
is then queried once, in the rest of the sequence, at an even offset ``2*g`` where the gaps
``g`` are drawn without replacement with probability proportional to ``a * i**(a-1)``
(i = 1..(L - 2kv)/2, ``power_a`` = a = 0.01 by default: queries cluster near the context, with
a long tail). At a query the label is the key's value; every other label is ignored, and
every non-query position holds the filler. The model must store all pairs and look one up
per query, which is exactly what a fixed-size recurrent state finds hard.

``filler`` chooses what the non-query positions of the query region hold: ``zeros`` (the id 0,
Zoology Figure 2's setting, ``random_non_queries=False``) or ``random`` (ids drawn uniformly
from [0, V), the Based paper's setting, ``random_non_queries=True``): random filler can repeat a
key or a value, so the model must tell a query from noise by position as well as by identity.

Requires V > L, 4 * kv <= L and L even (as Zoology does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archbench.tasks.base import IGNORE, Task, TaskData, TaskError, generator, register, split_seed

_CHUNK = 1024  # examples generated at a time (bounds the [n, V/2] random matrix)
FILLERS = ("zeros", "random")


@register
@dataclass
class MQAR(Task):
    name = "mqar"
    metric = "accuracy"
    default_ffn = None  # Zoology's MQAR models are mixers only

    seq_len: int = 64
    vocab_size: int = 8192
    num_kv_pairs: int = 4
    power_a: float = 0.01
    test_kv_pairs: tuple[int, ...] | None = None  # eval groups (default: num_kv_pairs only)
    filler: str = "zeros"  # non-query positions: zeros (Zoology Fig. 2) or random ids (Based paper)

    def __post_init__(self) -> None:
        if self.test_kv_pairs is not None:
            self.test_kv_pairs = tuple(int(k) for k in self.test_kv_pairs)
        for kv in (self.num_kv_pairs, *(self.test_kv_pairs or ())):
            check(self.seq_len, self.vocab_size, kv)
        if not self.power_a > 0:
            raise TaskError(f"mqar: power_a must be > 0 (got {self.power_a})")
        if self.filler not in FILLERS:
            raise TaskError(f"mqar: filler must be one of {', '.join(FILLERS)} (got {self.filler!r})")

    def sample(self, n: int, seed: int) -> TaskData:
        return generate(n, self.seq_len, self.vocab_size, self.num_kv_pairs, seed, self.power_a, self.filler)

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        kvs = self.test_kv_pairs or (self.num_kv_pairs,)
        return {
            f"kv={kv}": generate(n, self.seq_len, self.vocab_size, kv, split_seed(seed, "test", kv), self.power_a, self.filler)
            for kv in kvs
        }


def check(seq_len: int, vocab_size: int, num_kv_pairs: int) -> None:
    """The generator's preconditions, as one-line TaskErrors."""
    if num_kv_pairs < 1:
        raise TaskError(f"mqar: num_kv_pairs must be >= 1 (got {num_kv_pairs})")
    if seq_len % 2:
        raise TaskError(f"mqar: seq_len must be even (got {seq_len})")
    if 4 * num_kv_pairs > seq_len:
        raise TaskError(f"mqar: need 4 * num_kv_pairs <= seq_len (got kv={num_kv_pairs}, L={seq_len}); lower kv or raise L")
    if vocab_size <= seq_len:
        raise TaskError(f"mqar: need vocab_size > seq_len (got V={vocab_size}, L={seq_len})")
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise TaskError(f"mqar: vocab_size {vocab_size} has too few keys for {num_kv_pairs} distinct pairs")


def query_probs(space: int, power_a: float) -> torch.Tensor:
    """P(gap = i-1) proportional to a * i**(a-1), i = 1..space (float64, sums to 1)."""
    i = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * i ** (power_a - 1)
    return p / p.sum()


def generate(
    n: int, seq_len: int, vocab_size: int, num_kv_pairs: int, seed: int, power_a: float = 0.01, filler: str = "zeros"
) -> TaskData:
    """``n`` MQAR examples, deterministic in all arguments."""
    check(seq_len, vocab_size, num_kv_pairs)
    if filler not in FILLERS:
        raise TaskError(f"mqar: filler must be one of {', '.join(FILLERS)} (got {filler!r})")
    g = generator(seed)
    kv, half = num_kv_pairs, vocab_size // 2
    context = 2 * kv
    space = (seq_len - context) // 2
    probs = query_probs(space, power_a).float()
    inputs = torch.zeros(n, seq_len, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        # distinct keys / values per example: the first kv of a random permutation
        keys = 1 + torch.rand(m, half - 1, generator=g).argsort(dim=1)[:, :kv]
        values = half + torch.rand(m, vocab_size - half, generator=g).argsort(dim=1)[:, :kv]
        block = torch.zeros(m, seq_len, dtype=torch.long)
        block[:, 0:context:2] = keys
        block[:, 1:context:2] = values
        gaps = torch.multinomial(probs.expand(m, space), kv, replacement=False, generator=g)
        pos = context + 2 * gaps  # query positions (even offsets in the query region)
        block.scatter_(1, pos, keys)
        lab = torch.full((m, seq_len), IGNORE, dtype=torch.long)
        lab.scatter_(1, pos, values)  # after reading the key at pos, predict its value
        if filler == "random":  # drawn after the pairs and queries: a zeros set's layout is unchanged
            noise = torch.randint(0, vocab_size, (m, seq_len - context), generator=g)
            rest = block[:, context:]
            block[:, context:] = torch.where(lab[:, context:] == IGNORE, noise, rest)
        inputs[lo : lo + m], labels[lo : lo + m] = block, lab
    return TaskData(inputs, labels)
