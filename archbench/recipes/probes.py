"""Zero-shot in-context recall probes for byte-level language models (teacher vs converted student).

The recipes turn a byte-level causal LM (vocabulary 256, token id = byte value) into cheaper students
(linear attention, recurrent mixers, hybrids). Bits per byte says how well the student models the corpus
on average; it says little about *recall*: the ability to fetch an exact string seen once earlier in the
context. Recall is where fixed-state mixers are known to fall behind attention (Arora et al., 2023,
"Zoology: Measuring and Improving Recall in Efficient Language Models"), and conversion can lose it
even when perplexity survives. The synthetic tasks in ``archbench.tasks`` (MQAR, passkey) train a fresh
model on a dedicated vocabulary; a converted LM was never trained on them. So the probes here are
written as ordinary Python source bytes, the kind of text a code LM has read, and scored zero-shot.

Three probes, each a batch of texts of exactly ``seq_len`` bytes:

* **Assignment recall** (MQAR in code form). As many ``key = value`` pairs as fit, then every key asked
  once, in a shuffled order::

      kdq = 4821
      zpa = 1377
      assert zpa == 1377
      assert kdq == 4821

  Keys are distinct 3-letter lowercase identifiers (Python keywords excluded), values distinct 4-digit
  numbers 1000-9999 (a leading 0 is a syntax error in Python 3). A pair costs 30 bytes, so the number of
  pairs is ``seq_len // 30`` (4 at 128 bytes, 34 at 1024). The answers are the 4 value digits of every
  assert line. The query context ``kdq == `` is not a verbatim copy of the definition context ``kdq = ``:
  the model has to find the key and read what followed it, which plain copying of the last few bytes
  cannot do (the test suite's verbatim induction oracle scores ~1/pairs on the first digit).
* **Passkey** (Mohtashami & Jaggi, 2023). A line ``pass_key = 48213`` (5 digits, 10000-99999) hidden at
  a depth in filler comments (one fixed sentence pattern, repeated and cut to length, so the filler
  carries no information), ending with ``assert pass_key == 48213``. Depth 0 puts the key line first,
  depth 1 right before the assert, other depths at the nearest line boundary. Examples cycle through
  ``depths`` and each records its own, so accuracy can be read per depth.
* **Copy**. ``s = '<random lowercase string>'`` then ``assert s == '<same string>'``, the string as long
  as fits (``(seq_len - 22) // 2`` letters). The answers are the whole second copy, its first letter
  included: predicting it after ``s == '`` is already recall (the string is random), and it is the
  letter that needs the lookup rather than copying the previous letter's successor.

Length policy: every text is exactly ``seq_len`` bytes, so a probe stacks into one ``[n, seq_len]``
tensor. Passkey fills the length with filler; assignment recall and copy left-pad with newlines (blank
lines, still valid Python) when the last pair or letter does not fit.

Scoring is teacher forced: the whole text is fed in one forward pass, and the prediction for answer byte
``j`` is the argmax of the logits at position ``j - 1``. ``score`` reports the fraction of answer bytes
right (``acc``), of answers whose first byte is right (``first_acc``: the byte that needs the lookup; later
bytes can lean on the earlier ones, which are in the input), of answers entirely right (``exact``), and
the number of answers (``n``). Chance: a model that knows a digit comes but not which one scores 0.1 per
digit (1/9 on the first digit of a value, which is never 0), and 1/26 per letter of the copy probe.

The generators use ``random.Random(seed)`` only, so a seed gives the same bytes on every machine and
torch version. ``recall_probes`` runs all three and returns flat ``probe_*`` keys for a results row; at
``seq_len`` 128 and ``n`` 64 that is 12 forward passes of batch 16.
"""

from __future__ import annotations

import keyword
import random
import string
from functools import lru_cache
from typing import Callable, NamedTuple, Sequence

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

FILLER = b"# the grass is green. the sky is blue. the sun is yellow.\n"
PAIR_BYTES = len(b"abc = 1234\n") + len(b"assert abc == 1234\n")  # 30
PASSKEY_BYTES = len(b"pass_key = 12345\n") + len(b"assert pass_key == 12345\n")  # 42
COPY_OVERHEAD = len(b"s = ''\nassert s == ''\n")  # 22
DEPTHS = (0.0, 0.5, 1.0)
CHANCE_DIGIT = 0.1
CHANCE_LETTER = 1 / 26


MIN_SEQ_LEN = 64  # recall_probes runs shorter windows at this length (two pairs, a 21-letter copy)


class Example(NamedTuple):
    """One probe text and the byte ranges ``[a, b)`` of its answers; ``depth`` is set by ``passkey`` only."""

    text: bytes
    spans: list[tuple[int, int]]
    depth: float | None = None


@lru_cache(maxsize=1)
def _keys() -> tuple[str, ...]:
    """All 3-letter lowercase identifiers that are not Python keywords, in a fixed order."""
    letters = string.ascii_lowercase
    return tuple(k for k in (a + b + c for a in letters for b in letters for c in letters) if not keyword.iskeyword(k))


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of examples), got {n!r}")


def assignment_recall(n: int, seq_len: int, seed: int = 0) -> list[Example]:
    """``n`` texts of ``seq_len`` bytes: ``seq_len // 30`` lines ``key = value``, then ``assert key == value``
    for the same keys in a shuffled order; the answers are the 4 value digits of each assert line."""
    _check_n(n)
    if seq_len < PAIR_BYTES:
        raise ValueError(
            f"assignment_recall needs seq_len >= {PAIR_BYTES} (one key = value pair and its assert), got {seq_len}"
        )
    keys = _keys()
    pairs = min(seq_len // PAIR_BYTES, len(keys), 9000)
    pad = seq_len - pairs * PAIR_BYTES
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        names = rng.sample(keys, pairs)
        values = [str(v) for v in rng.sample(range(1000, 10000), pairs)]
        order = list(range(pairs))
        rng.shuffle(order)
        text = "\n" * pad + "".join(f"{k} = {v}\n" for k, v in zip(names, values))
        spans = []
        for i in order:
            line = f"assert {names[i]} == "
            start = len(text) + len(line)
            spans.append((start, start + 4))
            text += f"{line}{values[i]}\n"
        out.append(Example(text.encode(), spans))
    return out


def passkey(n: int, seq_len: int, seed: int = 0, depths: Sequence[float] = DEPTHS) -> list[Example]:
    """``n`` texts of ``seq_len`` bytes: ``pass_key = ddddd`` at a depth in filler comment lines, then
    ``assert pass_key == ddddd``; the answer is the 5 digits at the end. Example ``i`` has depth
    ``depths[i % len(depths)]`` (recorded in ``Example.depth``)."""
    _check_n(n)
    if seq_len < PASSKEY_BYTES:
        raise ValueError(f"passkey needs seq_len >= {PASSKEY_BYTES} (the key line and the assert line), got {seq_len}")
    depths = tuple(float(d) for d in depths)
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"passkey depths must be a non-empty list of numbers in [0, 1], got {depths!r}")
    budget = seq_len - PASSKEY_BYTES
    filler = (FILLER * (budget // len(FILLER) + 1))[:budget]
    if filler and not filler.endswith(b"\n"):
        filler = filler[:-1] + b"\n"  # the cut line ends cleanly: a shorter comment
    lines = filler.splitlines(keepends=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        depth = depths[i % len(depths)]
        digits = str(rng.randrange(10_000, 100_000)).encode()
        at = round(depth * len(lines))
        body = b"".join(lines[:at]) + b"pass_key = " + digits + b"\n" + b"".join(lines[at:])
        text = body + b"assert pass_key == " + digits + b"\n"
        start = len(text) - 6
        out.append(Example(text, [(start, start + 5)], depth))
    return out


def copy(n: int, seq_len: int, seed: int = 0) -> list[Example]:
    """``n`` texts of ``seq_len`` bytes: ``s = '<letters>'`` then ``assert s == '<letters>'`` with
    ``(seq_len - 22) // 2`` random lowercase letters; the answer is the whole second copy."""
    _check_n(n)
    if seq_len < COPY_OVERHEAD + 2:
        raise ValueError(f"copy needs seq_len >= {COPY_OVERHEAD + 2} (two copies of a 1-letter string), got {seq_len}")
    length = (seq_len - COPY_OVERHEAD) // 2
    pad = seq_len - COPY_OVERHEAD - 2 * length
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        head = "\n" * pad + f"s = '{s}'\nassert s == '"
        out.append(Example(f"{head}{s}'\n".encode(), [(len(head), len(head) + length)]))
    return out


@torch.no_grad()
def span_hits(
    logits_fn: LogitsFn, examples: Sequence[Example | tuple], batch_size: int = 16, device=None
) -> list[list[torch.Tensor]]:
    """Per example, per answer span, a bool tensor: was each answer byte the argmax of the logits one position
    earlier? Examples of different lengths are batched by length; ``device`` is where the ids go (default CPU)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_len: dict[int, list[int]] = {}
    texts, all_spans = [], []
    for k, ex in enumerate(examples):
        text, spans = bytes(ex[0]), [(int(a), int(b)) for a, b in ex[1]]
        for a, b in spans:
            if not 1 <= a < b <= len(text):
                raise ValueError(f"answer span {(a, b)} must satisfy 1 <= a < b <= len(text) = {len(text)}")
        texts.append(text)
        all_spans.append(spans)
        by_len.setdefault(len(text), []).append(k)
    out: list[list[torch.Tensor]] = [[] for _ in texts]
    for group in by_len.values():
        for lo in range(0, len(group), batch_size):
            batch = group[lo : lo + batch_size]
            ids = torch.tensor([list(texts[k]) for k in batch], dtype=torch.long, device=device)
            logits = logits_fn(ids)
            if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
                raise ValueError(
                    f"logits_fn must return [B, T, vocab] logits for ids {tuple(ids.shape)}, got {tuple(logits.shape)}"
                )
            hit = (logits[:, :-1].argmax(-1) == ids[:, 1:]).cpu()  # hit[i, j - 1]: byte j predicted right
            for i, k in enumerate(batch):
                out[k] = [hit[i, a - 1 : b - 1] for a, b in all_spans[k]]
    return out


def _summary(hits: Sequence[Sequence[torch.Tensor]]) -> dict:
    spans = [h for per_example in hits for h in per_example]
    if not spans:
        raise ValueError("score needs at least one example with an answer span")
    right = sum(int(h.sum()) for h in spans)
    total = sum(len(h) for h in spans)
    return {"acc": right / total, "first_acc": sum(int(h[0]) for h in spans) / len(spans),
            "exact": sum(int(h.all()) for h in spans) / len(spans), "n": len(spans)}  # fmt: skip


def score(logits_fn: LogitsFn, examples: Sequence[Example | tuple], batch_size: int = 16, device=None) -> dict:
    """Teacher-forced recall of ``examples`` (``(text, spans)`` pairs) by ``logits_fn(ids[B, T]) -> [B, T, V]``
    (run under ``torch.no_grad``): ``acc`` (answer bytes right), ``first_acc`` (answers whose first byte is right),
    ``exact`` (answers entirely right) and ``n`` (answers). Byte ``j`` is predicted by the argmax of the logits at
    ``j - 1``."""
    return _summary(span_hits(logits_fn, examples, batch_size, device))


def _depth_name(depth: float) -> str:
    return str(round(float(depth), 3))


def recall_probes(
    logits_fn: LogitsFn,
    seq_len: int,
    n: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    depths: Sequence[float] = DEPTHS,
    device=None,
) -> dict:
    """All three probes at ``seq_len`` (at least ``MIN_SEQ_LEN``, the passkey's shortest text, rounded up)
    with ``n`` examples each (one forward pass per batch), as flat ``probe_*``
    keys: ``acc``, ``first_acc`` and ``exact`` per probe, passkey ``acc`` per depth
    (``probe_passkey_acc_depth_0.5``), the chance levels, and the probe sizes (``probe_seq_len``, ``probe_n``,
    ``probe_mqar_pairs``, ``probe_copy_chars``)."""
    depths = tuple(dict.fromkeys(float(d) for d in depths))
    seq_len = max(int(seq_len), MIN_SEQ_LEN)
    if n < len(depths):
        raise ValueError(f"recall_probes needs n >= the number of passkey depths ({len(depths)}), got n={n}")
    mqar = assignment_recall(n, seq_len, seed)
    keys = passkey(n, seq_len, seed, depths)
    copies = copy(n, seq_len, seed)
    out: dict = {}
    for name, examples in (("mqar", mqar), ("passkey", keys), ("copy", copies)):
        hits = span_hits(logits_fn, examples, batch_size, device)
        r = _summary(hits)
        out.update(
            {
                f"probe_{name}_acc": r["acc"],
                f"probe_{name}_first_acc": r["first_acc"],
                f"probe_{name}_exact": r["exact"],
            }
        )
        if name == "passkey":
            for depth in depths:
                at = [h for ex, h in zip(examples, hits) if ex.depth == depth]
                out[f"probe_passkey_acc_depth_{_depth_name(depth)}"] = _summary(at)["acc"]
    out.update({"probe_chance_digit": CHANCE_DIGIT, "probe_chance_letter": CHANCE_LETTER, "probe_seq_len": seq_len, "probe_n": n,
                "probe_mqar_pairs": len(mqar[0].spans), "probe_copy_chars": copies[0].spans[0][1] - copies[0].spans[0][0]})  # fmt: skip
    return out


def task_probes(logits_fn: LogitsFn, task, n: int, seed: int = 0, device=None) -> dict:
    """``recall_probes`` at ``task.seq_len`` for a recipe row: nothing when ``n`` is 0, and only
    ``probe_skipped`` when the task is tokenised (the probes are byte strings)."""
    if not n:
        return {}
    if getattr(task, "vocab_size", 256) != 256:
        return {"probe_skipped": "the recall probes are byte-level; the teacher is tokenised"}
    return recall_probes(logits_fn, task.seq_len, n, seed, device=device)
