"""The recipes' corpus through a teacher's own tokenizer, for teachers that are not byte-level.

A converted student must see the symbols its teacher was trained on. The embedded default
teacher reads bytes (``tasks.corpus.ByteLM``); a real checkpoint (Llama, Qwen2, ...) reads the
ids of its tokenizer. ``TokenizedLM`` takes the same corpus (the same files, the same
train/validation split, so numbers stay comparable across teachers), decodes each split as
UTF-8, encodes it once with the tokenizer, and serves windows of ``seq_len`` tokens exactly as
``ByteLM`` serves windows of bytes: random windows of the training split for ``sample``, evenly
spaced windows of the validation split for ``eval_sets``.

Scores stay in bits per *byte*, so a BPE teacher and a byte-level one can be read side by side:
a window's mean next-token cross-entropy in bits is multiplied by the validation split's tokens
per byte (``1 / bytes_per_token``), the usual conversion (the split's bytes over its tokens is
the average a scored token covers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from archbench.tasks.base import TaskData, TaskError, generator
from archbench.tasks.corpus import ByteLM, windows


def load_tokenizer(source: str):
    """The tokenizer saved with a transformers checkpoint (a local directory or a hub name)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TaskError(f"{source}: the teacher is not byte-level and no tokenizer loads from there "
                        f"({str(e).splitlines()[0]}); save its tokenizer next to the weights") from None  # fmt: skip


def _encode(tokenizer, data: torch.Tensor) -> torch.Tensor:
    text = bytes(data.tolist()).decode("utf-8", errors="replace")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@dataclass
class TokenizedLM:
    """``ByteLM``'s corpus in ``tokenizer`` ids: ``sample``, ``eval_sets``, ``describe`` like a task."""

    seq_len: int
    max_bytes: int
    tokenizer: Any = field(repr=False)
    name = "lm"
    metric = "bits_per_byte"

    def __post_init__(self) -> None:
        self.bytes = ByteLM(seq_len=2, max_bytes=self.max_bytes)  # the corpus and its split, in bytes
        corpus = self.bytes.corpus
        self.train, self.val = _encode(self.tokenizer, corpus.train), _encode(self.tokenizer, corpus.val)
        for split, ids in (("train", self.train), ("validation", self.val)):
            if ids.numel() < self.seq_len + 1:
                raise TaskError(f"lm: the {split} split has {ids.numel()} tokens, fewer than seq_len + 1 = "
                                f"{self.seq_len + 1}; lower seq_len or raise max_bytes")  # fmt: skip
        self.bytes_per_token = corpus.val.numel() / self.val.numel()
        self.vocab_size = len(self.tokenizer)

    def sample(self, n: int, seed: int) -> TaskData:
        starts = torch.randint(0, self.train.numel() - self.seq_len, (n,), generator=generator(seed))
        return windows(self.train, starts, self.seq_len)

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        starts = torch.linspace(0, self.val.numel() - self.seq_len - 1, n, dtype=torch.float64).round().long()
        return {"val": windows(self.val, starts, self.seq_len)}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "seq_len": self.seq_len, "max_bytes": self.max_bytes, "vocab_size": self.vocab_size,
                "tokenizer": type(self.tokenizer).__name__, "bytes_per_token": self.bytes_per_token,
                "train_tokens": self.train.numel(), "val_tokens": self.val.numel(),
                "corpus": self.bytes.corpus.facts}  # fmt: skip
