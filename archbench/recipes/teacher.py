"""Teachers for the recipes: a transformers causal LM, loaded from a local directory (or a hub
name where the machine has internet), or, by default, a tiny byte-level Llama pre-trained here
on the embedded standard-library corpus (``archbench.tasks.corpus``) and cached, so the CPU
recipes need no download.

A real teacher is any transformers causal LM the papers distil from: Qwen2 (RADLADS) and Llama
(RAD), with grouped-query attention, tied or untied embeddings and their own tokenizers (the
recipes then read the corpus through that tokenizer, ``recipes.tokenized``). It loads through
``archbench.checkpoint`` (the loader of ``level: checkpoint`` cells), so a missing directory, a
missing config, an unknown architecture or a hub id without a network is one line, and in
bfloat16 on a GPU (``teacher_dtype``).

The default teacher is a ``LlamaForCausalLM`` (RoPE, grouped-query softmax attention, SwiGLU
MLPs, RMSNorm, tied embeddings) over the 256 byte values. It is trained with the same loop as
the task cells (AdamW, warm-up + cosine, clipping) on random windows of the corpus' training
split; its bits per byte on the validation split is recorded next to the weights. The cache key
is a hash of everything that defines it (shape, steps, lr, seed, corpus facts), so a different
Python version's stdlib, or another shape, trains another teacher instead of reusing one.

Data helpers shared by the recipes live here too: ``lm_batches`` (training windows) and
``bits_per_byte`` (held-out quality of any model that maps ids to logits).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from archbench.distill import kl_divergence
from archbench.recipes import RecipeError
from archbench.tasks.corpus import ByteLM

CACHE_ENV = "ARCHBENCH_CACHE"  # where pre-trained teachers are kept (default ~/.cache/archbench)


class TeacherError(RecipeError):
    """A teacher that cannot be loaded; one line that says what to do."""


@dataclass(frozen=True)
class TeacherSpec:
    """The shape and training budget of the embedded default teacher."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    seq_len: int = 128
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    max_bytes: int = 2_000_000  # of the stdlib corpus

    def key(self, corpus_facts: dict) -> str:
        blob = json.dumps({"spec": asdict(self), "corpus": corpus_facts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_device(recipe: str, device: str) -> None:
    """One line if ``device`` is not "cpu" / "cuda[:N]", or names a CUDA device this machine lacks."""
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"{recipe}: device must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{recipe}: device {device!r} asked for, but torch {torch.__version__} sees no CUDA device; "
                         "use device=cpu")  # fmt: skip


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "archbench")


def corpus_task(seq_len: int, max_bytes: int, tokenizer=None):
    """The recipes' corpus in windows of ``seq_len`` bytes, or of ``tokenizer`` ids (``recipes.tokenized``)."""
    if tokenizer is None:
        return ByteLM(seq_len=seq_len, max_bytes=max_bytes)
    from archbench.recipes.tokenized import TokenizedLM

    return TokenizedLM(seq_len=seq_len, max_bytes=max_bytes, tokenizer=tokenizer)


def llama_config(spec: TeacherSpec, vocab_size: int = 256):
    from transformers import LlamaConfig

    hidden = max(8, int(round(spec.d_model * 4 * 2 / 3 / 8)) * 8)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.d_model, intermediate_size=hidden, num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads, max_position_embeddings=1 << 16,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip


def build_teacher(spec: TeacherSpec, vocab_size: int = 256):
    """An untrained default teacher (random weights from ``spec.seed``); ``vocab_size`` 256 reads
    bytes, another size a tokenizer's ids (the bridge's small model of a tokenised teacher)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(llama_config(spec, vocab_size))


def default_teacher(spec: TeacherSpec = TeacherSpec(), progress=None, device: str = "cpu") -> tuple[object, dict]:
    """The cached pre-trained default teacher (trained now, on ``device``, if missing) and its facts,
    on ``device``. The cache key does not include the device: a teacher trained on a GPU serves a CPU too."""
    from transformers import LlamaForCausalLM

    task = corpus_task(spec.seq_len, spec.max_bytes)
    facts = task.describe()["corpus"]
    path = cache_dir() / "teachers" / spec.key(facts)
    meta_path = path / "archbench-teacher.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent / f"{path.name}.lock"):  # one process trains; the others wait, then load
        if meta_path.is_file():
            model = LlamaForCausalLM.from_pretrained(path).eval()
            return model.to(device), json.loads(meta_path.read_text())
        model, meta = pretrain(spec, task, progress, device)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        meta_path.write_text(json.dumps(meta, indent=2))  # last: its presence means the cache is complete
    return model, meta


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (POSIX ``flock``; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pretrain(spec: TeacherSpec, task: ByteLM | None = None, progress=None, device: str = "cpu") -> tuple[object, dict]:
    """Train a default teacher from scratch; returns (model, facts incl. validation bits per byte)."""
    from archbench.hf import HFCausalLM
    from archbench.tasks.train import TrainSettings, train_run

    task = task or corpus_task(spec.seq_len, spec.max_bytes)
    settings = TrainSettings(
        steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, eval_every=max(1, spec.steps // 5),
        train_examples=max(spec.batch_size, min(20_000, spec.steps * spec.batch_size)), test_examples=256,
    )  # fmt: skip
    result = train_run(lambda: HFCausalLM(build_teacher(spec), lambda *a: 0), task, settings, spec.seed,
                       device=str(device), on_progress=progress, keep_model=True)  # fmt: skip
    meta = {"spec": asdict(spec), "corpus": task.describe()["corpus"], "val_bits_per_byte": result.score,
            "steps": result.steps, "tokens_seen": result.tokens_seen, "wall_s": result.wall_s,
            "trained_on": str(device)}  # fmt: skip
    return result.model.model, meta


def teacher_dtype(device: str | torch.device | None) -> str:
    """The dtype a real teacher is loaded in: bfloat16 on a GPU (as the papers run their teachers:
    half the memory, tensor-core matmuls), float32 on a CPU (where bfloat16 matmuls are slow)."""
    return "bfloat16" if device is not None and str(device).startswith("cuda") else "float32"


def load_teacher(source: str, device: str | None = None, dtype: str | None = None):
    """A transformers causal LM (Llama, Qwen2, ... with GQA and tied embeddings as saved) from a
    local directory, or a hub id where the machine has a network, in eval mode; on ``device`` in
    ``dtype`` (default ``teacher_dtype(device)``) when a device is given. Every way it can fail (no
    such directory, no config.json, an architecture transformers does not know, a hub id without
    a network) is a ``TeacherError`` of one line that says what to do (the CLI exits 2)."""
    from archbench.checkpoint import CheckpointError, load_model

    try:
        model, _facts = load_model(source, device or "cpu", dtype or teacher_dtype(device))
    except CheckpointError as e:
        raise TeacherError(f"teacher: {e}") from None
    return model.eval()


def recipe_teacher(source: str, spec: TeacherSpec, device: str = "cpu", progress=None) -> tuple[Any, dict, Any]:
    """A recipe's teacher in eval mode on ``device``, its facts, and its tokenizer (None when it
    reads bytes): for ``"default"`` the cached default teacher of ``spec`` (facts: its
    pre-training; pre-trained now, reporting to ``progress``, if missing), else ``load_teacher``
    of ``source`` (facts: ``{"source": source}``)."""
    if source == "default":
        model, facts = default_teacher(spec, progress, device=device)
        return model.eval(), facts, None
    model = load_teacher(source).to(device)
    return model.eval(), {"source": source}, teacher_tokenizer(model, source)


def teacher_tokenizer(teacher, source: str):
    """None for a byte-level teacher (vocabulary 256: the corpus' bytes are its ids), else the
    tokenizer saved with it, through which the recipes tokenise the corpus."""
    if int(teacher.config.vocab_size) == 256:
        return None
    from archbench.recipes.tokenized import load_tokenizer

    return load_tokenizer(source)


def lm_batches(task: ByteLM, batch_size: int, seed: int, n_examples: int = 20_000,
               device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Endless shuffled batches (inputs, labels) of training windows on ``device``, deterministic in ``seed``."""
    from archbench.tasks.base import generator, split_seed

    data = task.sample(n_examples, split_seed(seed, "train"))
    g = generator(split_seed(seed, "train", 7))
    while True:
        order = torch.randperm(len(data), generator=g)
        for lo in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[lo : lo + batch_size]
            yield data.inputs[idx].to(device), data.labels[idx].to(device)


@torch.no_grad()
def bits_per_byte(logits_fn, task: ByteLM, n_windows: int = 128, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> float:  # fmt: skip
    """Mean next-byte cross-entropy in bits on the validation split of ``task``;
    ``logits_fn(ids[B, T]) -> logits[B, T, V]``. For a tokenized corpus the bits per token are
    converted with the validation split's bytes per token."""
    data = task.eval_sets(n_windows, 0)["val"]
    nats, n = 0.0, 0
    for lo in range(0, len(data), batch_size):
        inp, lab = data.inputs[lo : lo + batch_size], data.labels[lo : lo + batch_size]
        logits = logits_fn(inp.to(device)).float()
        nats += float(F.cross_entropy(logits.flatten(0, 1), lab.to(logits.device).flatten(), reduction="sum"))
        n += lab.numel()
    return nats / n / float(torch.log(torch.tensor(2.0))) / getattr(task, "bytes_per_token", 1.0)


@torch.no_grad()
def agreement(student_fn, teacher_fn, inputs: torch.Tensor, batch_size: int = 16, device=None,
              per_position: bool = False) -> dict:  # fmt: skip
    """Teacher-student top-1 agreement and mean KL(teacher || student) per token (``per_position``:
    see ``distill.kl_divergence``) on windows ``inputs`` [N, T]; both functions map ids to logits."""
    agree, kl, n = 0, 0.0, 0
    for lo in range(0, len(inputs), batch_size):
        ids = inputs[lo : lo + batch_size].to(device)
        t, s = teacher_fn(ids).float(), student_fn(ids).float()
        agree += int((t.argmax(-1) == s.argmax(-1)).sum())
        kl += float(kl_divergence(s, t, per_position=per_position)) * ids.numel()
        n += ids.numel()
    return {"top1_agreement": agree / n, "kl": kl / n}


def teacher_kv_bytes(teacher, batch: int, seq_len: int) -> int:
    """Analytic KV-cache bytes of a softmax teacher: K and V per layer, per kv head, per token."""
    c = teacher.config
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    elem = next(teacher.parameters()).element_size()
    return 2 * int(c.num_hidden_layers) * batch * seq_len * kv * hd * elem


def cache_nbytes(cache: Any) -> int:
    """Bytes of the K/V tensors of a transformers cache (5.x ``layers``, 4.x ``key_cache``, or legacy tuples)."""
    if hasattr(cache, "layers"):
        pairs = [(getattr(lay, "keys", None), getattr(lay, "values", None)) for lay in cache.layers]
    elif hasattr(cache, "key_cache"):
        pairs = list(zip(cache.key_cache, cache.value_cache))
    else:
        pairs = [tuple(p[:2]) for p in cache]
    return sum(t.numel() * t.element_size() for p in pairs for t in p if isinstance(t, torch.Tensor))


def cache_of(out) -> Any:
    """The KV cache of a transformers model output (``cache`` or ``past_key_values``), or None."""
    for name in ("cache", "past_key_values"):
        c = getattr(out, name, None) if not isinstance(out, dict) else out.get(name)
        if c is not None:
            return c
    return None
