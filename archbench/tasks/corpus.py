"""Byte-level language modelling on an embedded corpus (task ``lm``).

The model reads raw bytes (vocabulary 256, no tokenizer) and predicts the next one at every
position; the score is the mean cross-entropy in bits per byte on held-out text, lower is
better (8 bits is a uniform guess). Bytes make the task independent of any tokenizer and
every architecture sees exactly the same symbols.

The default corpus needs no download: it is the Python standard library's own ``.py``
source, found with ``sysconfig.get_paths()["stdlib"]``. Files are taken in a fixed order (a
hash of their relative paths, so a byte budget samples the whole library), skipping
``site-packages`` and the ``test``/``tests``/``idlelib``/``lib2to3``/``__pycache__``/
``encodings`` (generated codec tables) directories, until ``max_bytes`` are gathered (the last file is
cut to fit). Each file goes to validation when a hash of its relative path falls below
``val_frac`` (about 5% of files), so the split is fixed by the file names alone and the two
splits never share a file; at least one file lands on each side. The stdlib differs between
Python versions, so ``describe()`` records the file count, the byte counts and short sha256
digests of the selected file list and of the bytes themselves.

``source`` may also be the path of a text file (its last ``val_frac`` of bytes is the
validation split) or ``hf:DATASET[:CONFIG][:SPLIT]``, a Hugging Face dataset loaded with the
optional ``datasets`` package (documents joined by newlines, then split like a text file).

Training examples are random windows of ``seq_len + 1`` bytes from the train split (input:
the first ``seq_len``, labels: the last ``seq_len``); the evaluation set is windows of the
validation split at evenly spaced offsets, the same for every seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from archbench.tasks.base import Task, TaskData, TaskError, generator, register

SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "encodings"})


@dataclass(frozen=True)
class Corpus:
    """The two splits as uint8 tensors, the documents in each, and the facts that identify them."""

    train: torch.Tensor
    val: torch.Tensor
    facts: dict[str, Any]
    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()


@register
@dataclass
class ByteLM(Task):
    name = "lm"
    metric = "bits_per_byte"
    default_ffn = "swiglu"
    vocab_size: ClassVar[int] = 256

    seq_len: int = 256
    source: str = "stdlib"  # "stdlib", a text file path, or "hf:DATASET[:CONFIG][:SPLIT]"
    max_bytes: int = 4_000_000
    val_frac: float = 0.05

    def __post_init__(self) -> None:
        self.seq_len, self.max_bytes, self.val_frac = int(self.seq_len), int(self.max_bytes), float(self.val_frac)
        if self.seq_len < 1:
            raise TaskError(f"lm: seq_len must be >= 1 (got {self.seq_len})")
        if self.max_bytes < 2:
            raise TaskError(f"lm: max_bytes must be >= 2 (got {self.max_bytes})")
        if not isinstance(self.source, str) or not self.source:
            raise TaskError(f"lm: source must be 'stdlib', a text file path or 'hf:DATASET' (got {self.source!r})")
        if not 0.0 < self.val_frac < 1.0:
            raise TaskError(f"lm: val_frac must be in (0, 1) (got {self.val_frac})")
        corpus = self.corpus
        for split, data in (("train", corpus.train), ("validation", corpus.val)):
            if data.numel() < self.seq_len + 1:
                raise TaskError(
                    f"lm: the {split} split of {self.source!r} has {data.numel()} bytes, fewer than seq_len + 1 = "
                    f"{self.seq_len + 1}; lower seq_len or raise max_bytes / val_frac"
                )

    @property
    def corpus(self) -> Corpus:
        return load_corpus(self.source, self.max_bytes, self.val_frac)

    def sample(self, n: int, seed: int) -> TaskData:
        train = self.corpus.train
        starts = torch.randint(0, train.numel() - self.seq_len, (n,), generator=generator(seed))
        return windows(train, starts, self.seq_len)

    def eval_sets(self, n: int, seed: int) -> dict[str, TaskData]:
        """One group, ``"val"``: ``n`` windows at evenly spaced offsets (independent of ``seed``)."""
        val = self.corpus.val
        starts = torch.linspace(0, val.numel() - self.seq_len - 1, n, dtype=torch.float64).round().long()
        return {"val": windows(val, starts, self.seq_len)}

    def describe(self) -> dict[str, Any]:
        """The options, the vocabulary and ``corpus``: source, file count, byte counts, digests."""
        return {
            "task": self.name,
            **dataclasses.asdict(self),
            "vocab_size": self.vocab_size,
            "corpus": self.corpus.facts,
        }


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> TaskData:
    """Windows of ``seq_len + 1`` bytes at ``starts``: inputs the first seq_len, labels the next byte of each."""
    w = data[starts.unsqueeze(1) + torch.arange(seq_len + 1)].long()
    return TaskData(w[:, :-1].contiguous(), w[:, 1:].contiguous())


def load_corpus(source: str, max_bytes: int = 4_000_000, val_frac: float = 0.05) -> Corpus:
    """The corpus a ``source`` names, cached per process (a text file is re-read when it changes)."""
    stamp = None
    if source != "stdlib" and not source.startswith("hf:"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise TaskError(
                f"lm: source {source!r} is not a file; use 'stdlib', a text file path or 'hf:DATASET[:CONFIG][:SPLIT]'"
            )
        st = path.stat()
        stamp = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    return _load(source, int(max_bytes), float(val_frac), stamp)


@functools.lru_cache(maxsize=8)
def _load(source: str, max_bytes: int, val_frac: float, stamp: tuple | None) -> Corpus:
    if source == "stdlib":
        return stdlib_corpus(max_bytes, val_frac)
    if source.startswith("hf:"):
        return hf_corpus(source, max_bytes, val_frac)
    data = Path(stamp[0]).read_bytes()[:max_bytes]
    return tail_split(data, val_frac, {"source": source, "files": 1})


def stdlib_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the stdlib's ``.py`` files, skipping tests, tools, caches and
    generated codec tables, in a deterministic hash order: a byte budget then samples the whole
    library rather than its alphabetical start."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]  # prune: never walk into skipped trees
        for f in filenames:
            path = Path(dirpath, f)
            if f.endswith(".py") and path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found, key=lambda item: (path_hash(item[0] + "#order"), item[0]))


def to_validation(rel: str, val_frac: float) -> bool:
    """Does this file belong to the validation split? (a hash of its relative path, uniform in [0, 1))"""
    return path_hash(rel) < val_frac


def path_hash(rel: str) -> float:
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2**64


def stdlib_corpus(max_bytes: int, val_frac: float, root: Path | None = None) -> Corpus:
    """The first ``max_bytes`` of the stdlib's ``.py`` files in hash order, split by file."""
    chosen: list[tuple[str, bytes]] = []
    total = 0
    for rel, path in stdlib_files(root):
        if total >= max_bytes:
            break
        text = path.read_bytes()[: max_bytes - total]
        if text:
            chosen.append((rel, text))
            total += len(text)
    if len(chosen) < 2:
        raise TaskError(
            f"lm: max_bytes={max_bytes} selects {len(chosen)} stdlib file(s); raise it so each split gets a file"
        )
    is_val = [to_validation(rel, val_frac) for rel, _ in chosen]
    hashes = [path_hash(rel) for rel, _ in chosen]
    if not any(is_val):  # the file whose hash is nearest the threshold moves across
        is_val[min(range(len(chosen)), key=hashes.__getitem__)] = True
    if all(is_val):
        is_val[max(range(len(chosen)), key=hashes.__getitem__)] = False
    train = b"".join(text for (_, text), v in zip(chosen, is_val) if not v)
    val = b"".join(text for (_, text), v in zip(chosen, is_val) if v)
    listing = "\n".join(f"{rel}\t{len(text)}" for rel, text in chosen)
    facts = {
        "source": "stdlib",
        "python": platform.python_version(),
        "files": len(chosen),
        "train_files": is_val.count(False),
        "val_files": is_val.count(True),
        "train_bytes": len(train),
        "val_bytes": len(val),
        "files_sha256": hashlib.sha256(listing.encode()).hexdigest()[:16],
        "content_sha256": hashlib.sha256(train + val).hexdigest()[:16],
    }
    train_files = tuple(rel for (rel, _), v in zip(chosen, is_val) if not v)
    val_files = tuple(rel for (rel, _), v in zip(chosen, is_val) if v)
    return Corpus(_bytes(train), _bytes(val), facts, train_files, val_files)


def tail_split(data: bytes, val_frac: float, facts: dict[str, Any]) -> Corpus:
    """Train: the first bytes; validation: the last ``val_frac`` of them (at least one byte each)."""
    if len(data) < 2:
        raise TaskError(f"lm: source {facts['source']!r} has {len(data)} byte(s); train and validation need one each")
    n_val = min(len(data) - 1, max(1, round(val_frac * len(data))))
    train, val = data[:-n_val], data[-n_val:]
    facts = {
        **facts,
        "train_bytes": len(train),
        "val_bytes": len(val),
        "content_sha256": hashlib.sha256(data).hexdigest()[:16],
    }
    return Corpus(_bytes(train), _bytes(val), facts)


def hf_corpus(source: str, max_bytes: int, val_frac: float) -> Corpus:
    """``hf:DATASET[:CONFIG][:SPLIT]``: the dataset's text column, documents joined by newlines."""
    parts = source[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise TaskError(f"lm: bad Hugging Face source {source!r}; write hf:DATASET[:CONFIG][:SPLIT]")
    parts += [""] * (3 - len(parts))
    name, config, split = parts[0], parts[1] or None, parts[2] or "train"
    try:
        import datasets
    except ImportError:
        raise TaskError(
            f"lm: source {source!r} needs the optional 'datasets' package; install it or use a text file path as source"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
        column = "text" if "text" in ds.column_names else None
        docs, total = [], 0
        for row in ds:
            if column is None:
                column = next((k for k, v in row.items() if isinstance(v, str)), None)
                if column is None:
                    raise TaskError(f"lm: dataset {name!r} has no text column; pass a text file path as source")
            doc = row[column].encode("utf-8") + b"\n"
            docs.append(doc[: max_bytes - total])
            total += len(docs[-1])
            if total >= max_bytes:
                break
    except TaskError:
        raise
    except Exception as e:  # noqa: BLE001 - no network, unknown dataset, bad config or split: all end here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskError(
            f"lm: cannot load Hugging Face dataset {source!r} ({reason}); offline, use a text file path as source"
        ) from None
    return tail_split(b"".join(docs), val_frac, {"source": source, "files": len(docs)})


def _bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
