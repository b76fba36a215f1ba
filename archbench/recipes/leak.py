"""Teacher-forced vs prefix-only scores, and free generation scored by a teacher: how much of a
model's next-token score came from seeing later tokens (``archbench.recipes.bridge``).

Teacher-forced: one pass over the full window, every position scored (``tf_bpb``, ``tf_acc``).
Prefix-only: for each position t the model is re-run on tokens 0..t alone and only its last
position is scored (``prefix_bpb``, ``prefix_acc``), which is what it has at generation time.
For a causal model the two agree to float rounding; ``gap_bpb = prefix_bpb - tf_bpb`` is the part
of the teacher-forced score that came from the future. Scores are per token; a caller with a
tokenised corpus converts them to bits per byte.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


@torch.no_grad()
def leak_scores(logits_fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor,
                batch_size: int = 32) -> dict[str, float]:  # fmt: skip
    """Teacher-forced vs prefix-only next-byte scores on the same windows (see the module text):
    ``tf_bpb``, ``tf_acc``, ``prefix_bpb``, ``prefix_acc`` and ``gap_bpb = prefix_bpb - tf_bpb``."""
    tf_nats = pre_nats = tf_hit = pre_hit = 0.0
    for lo in range(0, len(inputs), batch_size):
        inp, lab = inputs[lo : lo + batch_size], labels[lo : lo + batch_size]
        logits = logits_fn(inp).float()
        tf_nats += float(F.cross_entropy(logits.flatten(0, 1), lab.flatten(), reduction="sum"))
        tf_hit += float((logits.argmax(-1) == lab).sum())
        for t in range(inp.shape[1]):  # position t sees bytes 0..t only
            last = logits_fn(inp[:, : t + 1])[:, -1].float()
            pre_nats += float(F.cross_entropy(last, lab[:, t], reduction="sum"))
            pre_hit += float((last.argmax(-1) == lab[:, t]).sum())
    n = labels.numel()
    tf_bpb, prefix_bpb = tf_nats / n / LN2, pre_nats / n / LN2
    return {"tf_bpb": tf_bpb, "tf_acc": tf_hit / n, "prefix_bpb": prefix_bpb, "prefix_acc": pre_hit / n,
            "gap_bpb": prefix_bpb - tf_bpb}  # fmt: skip


@torch.no_grad()
def greedy_generate(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], prompts: torch.Tensor, n_new: int
) -> torch.Tensor:
    """Greedy continuation, re-running the whole model on the prefix at every step (no cache: the
    non-causal bridge changes earlier positions' outputs as the prefix grows)."""
    ids = prompts
    for _ in range(n_new):
        ids = torch.cat([ids, logits_fn(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@torch.no_grad()
def continuation_bpb(teacher_fn: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, prompt_len: int) -> float:
    """Bits per byte of ``ids[:, prompt_len:]`` under ``teacher_fn`` given everything before it."""
    logits = teacher_fn(ids[:, :-1]).float()[:, prompt_len - 1 :]
    target = ids[:, prompt_len:]
    return float(F.cross_entropy(logits.flatten(0, 1), target.flatten())) / LN2
