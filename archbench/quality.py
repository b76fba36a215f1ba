"""Quality of a real checkpoint: bits per byte on a text, and lm-evaluation-harness tasks.

Speed alone does not choose a model; a checkpoint row can be read next to its quality only if
both are measured on the same loaded model. Two modes of a ``level: checkpoint`` cell do it:

``bpb``
    The mean next-token cross-entropy on a text, in bits per *byte*, so models with different
    tokenizers compare. The text is ``quality.text``: ``stdlib`` (the default, no download) is the
    validation split of the Python standard library corpus the recipes use
    (``archbench.tasks.corpus``: the same held-out files for every model), or the path of a
    UTF-8 text file (its first ``max_bytes``). The text is tokenised once with the checkpoint's
    tokenizer (no special tokens) into ``N`` tokens; windows of ``seq_len + 1`` tokens step by
    ``seq_len``, so every token after the first is predicted once, from at most ``seq_len``
    tokens of context (at most ``max_windows`` windows, evenly spaced, when the text is longer).
    With ``S`` tokens scored and ``L`` nats summed over them::

        bits_per_token = L / (S ln 2)
        bytes_per_token = bytes(text) / N            (the text's own average)
        bits_per_byte  = bits_per_token / bytes_per_token
        perplexity     = exp(L / S)                   (per token: tokenizer-dependent)

    A byte-level checkpoint (vocabulary 256, saved without a tokenizer) reads the bytes as ids
    (``bytes_per_token = 1``), as the recipes' default teacher does.

``lm_eval``
    One lm-evaluation-harness task (``eval_task``) on the loaded model object, through the
    optional ``eval`` extra: ``lm_eval.simple_evaluate(model=HFLM(pretrained=model,
    tokenizer=tok), tasks=[task], limit=..., num_fewshot=...)``. Local tasks (a task YAML and its
    data) are found through ``quality.include_path``; nothing is downloaded for them. The row
    keeps the task, its primary metric and stderr, every metric it reported, the limit and the
    number of documents scored.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archbench.spec import Unsupported

# lm-eval's metrics, in the order one is taken as the row's headline score
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu", "word_perplexity", "perplexity")


def eval_text(source: str = "stdlib", max_bytes: int = 2_000_000) -> tuple[bytes, dict]:
    """The bytes ``bpb`` scores and the facts that identify them (source, byte count, digest)."""
    import hashlib

    from archbench.tasks.corpus import load_corpus

    if source == "stdlib":
        corpus = load_corpus("stdlib", max_bytes)
        data = bytes(corpus.val.tolist())
        facts = {"text": "stdlib", "text_split": "validation", **{k: corpus.facts[k] for k in ("python", "files_sha256")}}
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise Unsupported(f"quality.text {source!r} is not a file; use 'stdlib' or the path of a UTF-8 text file")
        data = path.read_bytes()[:max_bytes]
        facts = {"text": str(source)}
    if len(data) < 2:
        raise Unsupported(f"quality.text {source!r} has {len(data)} byte(s); bits per byte needs at least 2")
    facts.update(text_bytes=len(data), text_sha256=hashlib.sha256(data).hexdigest()[:16])
    return data, facts


def token_ids(data: bytes, tokenizer) -> torch.Tensor:
    """The text as the checkpoint's ids (no special tokens), or its bytes for a byte-level model."""
    if tokenizer is None:
        return torch.tensor(list(data), dtype=torch.long)
    text = data.decode("utf-8", errors="replace")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def bits_per_byte(logits_fn, ids: torch.Tensor, n_bytes: int, seq_len: int, batch_size: int = 8,
                  max_windows: int | None = None, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Score ``ids`` (the tokens of ``n_bytes`` bytes of text) in windows of ``seq_len + 1``
    stepping by ``seq_len``; ``logits_fn(ids[B, T]) -> logits[B, T, V]``. See the module docstring."""
    n = ids.numel()
    if n < 2:
        raise Unsupported(f"the text is {n} token(s) long; bits per byte needs at least 2")
    seq_len = min(seq_len, n - 1)
    starts = list(range(0, n - 1, seq_len))
    if max_windows is not None and len(starts) > max_windows:
        pick = torch.linspace(0, len(starts) - 1, max_windows, dtype=torch.float64).round().long().tolist()
        starts = [starts[i] for i in dict.fromkeys(pick)]
    nats, scored = 0.0, 0
    for lo in range(0, len(starts), batch_size):
        group = starts[lo : lo + batch_size]
        width = max(min(s + seq_len + 1, n) - s for s in group)
        batch = torch.zeros(len(group), width, dtype=torch.long)
        labels = torch.full((len(group), width - 1), -100, dtype=torch.long)  # right padding is not scored
        for i, s in enumerate(group):
            w = ids[s : s + seq_len + 1]
            batch[i, : w.numel()] = w
            labels[i, : w.numel() - 1] = w[1:]
        logits = logits_fn(batch[:, :-1].to(device)).float()
        labels = labels.to(logits.device)
        nats += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"))
        scored += int((labels != -100).sum())
    bytes_per_token = n_bytes / n
    bits_per_token = nats / scored / math.log(2)
    return {
        "bits_per_byte": bits_per_token / bytes_per_token,
        "bits_per_token": bits_per_token,
        "perplexity": math.exp(nats / scored),
        "bytes_per_token": bytes_per_token,
        "tokens_scored": scored,
        "text_tokens": n,
        "windows": len(starts),
    }


def lm_eval_task(lm, tokenizer, task: str, limit: int | float | None = None, num_fewshot: int | None = None,
                 include_path: str | None = None, batch_size: int = 8, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """One lm-evaluation-harness task on a loaded model; the row's fields (see the module docstring)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise Unsupported(f"mode lm_eval needs the optional eval extra ({e}); pip install 'archbench[eval]'") from None
    if tokenizer is None:
        raise Unsupported("mode lm_eval needs the checkpoint's tokenizer; save it with tokenizer.save_pretrained(DIR)")
    if include_path is not None and not Path(include_path).is_dir():
        raise Unsupported(f"quality.include_path {include_path!r} is not a directory of lm-eval task YAMLs")
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    if task not in manager.all_tasks:
        hint = f" under {include_path}" if include_path else ""
        raise Unsupported(f"lm-eval has no task {task!r}{hint}; `lm_eval ls tasks` lists them, or name a directory "
                          "of task YAMLs in quality.include_path")  # fmt: skip
    model = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=batch_size, device=device)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=model, tasks=[task], limit=limit, num_fewshot=num_fewshot,
                                  task_manager=manager, log_samples=False, bootstrap_iters=1000)  # fmt: skip
    wall = time.perf_counter() - t0
    results = (out or {}).get("results", {}).get(task)
    if not results:
        raise Unsupported(f"lm-eval returned no results for task {task!r} (a group of tasks? name one of its tasks)")
    metrics: dict[str, float] = {}
    stderrs: dict[str, float] = {}
    for name, value in results.items():
        if not isinstance(value, (int, float)) or "," not in name:
            continue
        metric, _filter = name.split(",", 1)
        if metric.endswith("_stderr"):
            stderrs[metric.removesuffix("_stderr")] = float(value)
        else:
            metrics[metric] = float(value)
    if not metrics:
        raise Unsupported(f"lm-eval task {task!r} reported no numeric metric")
    primary = next((m for m in PRIMARY_METRICS if m in metrics), next(iter(metrics)))
    n_samples = (out.get("n-samples") or {}).get(task, {})
    row = {
        "eval_task": task,
        "eval_metric": primary,
        "eval_score": metrics[primary],
        "eval_stderr": stderrs.get(primary),
        "eval_metrics": metrics,
        "eval_stderrs": stderrs,
        "eval_limit": limit,
        "eval_num_fewshot": num_fewshot,
        "eval_n_samples": n_samples.get("effective"),
        "eval_wall_s": wall,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    if primary in ("acc", "acc_norm", "exact_match"):
        row.update(accuracy=metrics[primary], accuracy_stderr=stderrs.get(primary))
    return row


def run_quality(cell: dict) -> dict:
    """A checkpoint cell in mode ``bpb`` or ``lm_eval``: load the model and its tokenizer, score it."""
    from archbench import checkpoint

    q = dict(cell.get("quality") or {})
    t0 = time.perf_counter()
    torch.manual_seed(cell["seed"])
    lm, facts = checkpoint.load_model(cell["model"], cell["device"], cell["dtype"], bool(cell.get("trust_remote_code")),
                                      checkpoint.ATTN_BACKENDS.get(cell["backend"]))  # fmt: skip
    tokenizer = checkpoint.load_tokenizer(cell["model"], facts["model_vocab_size"])
    row: dict[str, Any] = {**facts, "implementations": checkpoint.implementations(lm, cell["device"])}
    row["implementation"] = checkpoint.summary(row["implementations"])
    row["build_s"] = time.perf_counter() - t0
    if cell["mode"] == "bpb":
        data, text_facts = eval_text(q.get("text", "stdlib"), int(q.get("max_bytes", 2_000_000)))
        ids = token_ids(data, tokenizer)
        t1 = time.perf_counter()
        scores = bits_per_byte(lambda x: lm(input_ids=x, use_cache=False).logits, ids, len(data), int(cell["seq_len"]),
                               int(cell["batch"]), q.get("max_windows"), cell["device"])  # fmt: skip
        row.update(text_facts, **scores, quality_wall_s=time.perf_counter() - t1)
    elif cell["mode"] == "lm_eval":
        row.update(lm_eval_task(lm, tokenizer, cell["eval_task"], q.get("limit"), q.get("num_fewshot"),
                                q.get("include_path"), int(cell["batch"]), cell["device"]))  # fmt: skip
    else:
        raise Unsupported(f"mode {cell['mode']!r} is not a quality mode (bpb, lm_eval)")
    row["threads_used"] = torch.get_num_threads()
    return row
