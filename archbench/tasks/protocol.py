"""The protocol a task row was trained under, and which published result it can be compared with.

An accuracy is a fact about a protocol as much as about an architecture: on MQAR at (L=64, kv=4,
d_model 64) attention reaches 0.99 with a 256-id vocabulary and 0.25 with Zoology's 8192 after
the same 1500 steps. So every task row carries ``protocol`` (vocabulary, data, how much training
it saw, the lr grid, seeds, filler, short convolution) and ``comparable_to``, computed from it:
``"Zoology Fig. 2"`` only when every setting below matches Arora et al. (2023), Figure 2 (checked
against the configs of github.com/HazyResearch/zoology, ``iclr24_zoology_figure2``):

- MQAR, vocabulary 8192, query placement power a = 0.01, zero filler (``random_non_queries=False``);
- (L, kv) one of (64, 4), (128, 8), (256, 16), (512, 64); d_model one of 64, 128, 256, 512;
  two layers of the mixer and no MLP;
- 100,000 training and 3,000 test examples, batch 512 at L <= 128, 256 at L = 256, 128 at L = 512;
- up to 64 epochs (early stop at 0.99 allowed), never cut by a wall-time cap;
- the best of the learning rates logspace(-4, -2, 4) (all four trained);
- each architecture as published (no suite-wide ``short_conv``).

Anything else gets ``"not comparable with Zoology Figure 2 (<what differs>)"``, prefixed with
``"quick check, "`` when the training budget is a small fraction of the paper's (under 10% of its
64 epochs) or a wall-time cap stopped a run. Optimiser details (archbench: AdamW with betas
(0.9, 0.98), weight decay 0.1, 10% warm-up; Zoology: AdamW defaults, no warm-up) and attention's
positions (rotary here, learned absolute in Zoology) are documented differences that the label
does not test (docs/tasks.md).
"""

from __future__ import annotations

import math
from typing import Any

ZOOLOGY_FIG2 = "Zoology Fig. 2"
NOT_FIG2 = "not comparable with Zoology Figure 2"
FIG2_GRID = ((64, 4), (128, 8), (256, 16), (512, 64))
FIG2_D_MODEL = (64, 128, 256, 512)
FIG2_VOCAB, FIG2_TRAIN, FIG2_TEST, FIG2_EPOCHS, FIG2_POWER_A = 8192, 100_000, 3_000, 64, 0.01
FIG2_LRS = tuple(10 ** (-4 + 2 * i / 3) for i in range(4))  # numpy.logspace(-4, -2, 4)
QUICK_FRACTION = 0.1  # under this share of the paper's training budget a run is a quick check


def fig2_batch(seq_len: int) -> int:
    """Zoology Figure 2's training batch at length ``seq_len``."""
    return 512 if seq_len <= 128 else (256 if seq_len <= 256 else 128)


def protocol(cell: dict, task_config: dict, summary: dict) -> dict[str, Any]:
    """The protocol fields of a task row: what the data was, what training saw, what was swept."""
    train = dict(cell.get("train") or {})
    lrs = train["lr"] if isinstance(train.get("lr"), list) else [train.get("lr")]
    batch = int(train.get("batch_size") or cell.get("batch") or 0)
    examples = int(train.get("train_examples") or 0)
    steps_seen = float(summary.get("train_steps") or 0.0)
    epochs = train.get("epochs")
    budget_steps = int(epochs) * max(1, examples // max(1, batch)) if epochs else int(train.get("steps") or 0)
    return {
        "task": task_config.get("task"),
        "vocab_size": task_config.get("vocab_size"),
        "seq_len": task_config.get("seq_len"),
        "num_kv_pairs": task_config.get("num_kv_pairs"),
        "power_a": task_config.get("power_a"),
        "filler": task_config.get("filler"),
        "train_examples": examples,
        "test_examples": int(train.get("test_examples") or 0),
        "batch_size": batch,
        "budget_steps": budget_steps,
        "budget_epochs": budget_steps * batch / examples if examples else None,
        "steps_seen": steps_seen,  # best lr, mean over seeds (early stop makes it smaller than the budget)
        "epochs_seen": steps_seen * batch / examples if examples else None,
        "target": train.get("target"),
        "lr_grid": [float(x) for x in lrs],
        "seeds": int(summary.get("n_seeds") or train.get("seeds") or 1),
        "max_train_s": train.get("max_train_s"),
        "out_of_time_runs": int(summary.get("out_of_time") or 0),
        "short_conv": cell.get("short_conv"),  # None: each family as published
        "n_layers": cell.get("n_layers"),
        "ffn": train.get("ffn", "auto"),
        "d_model": cell.get("d_model"),
    }


def fig2_differences(p: dict) -> list[str]:
    """What keeps a row's protocol from Zoology Figure 2's (empty when it matches)."""
    out = []
    if p.get("task") != "mqar":
        return [f"task {p.get('task')}, not mqar"]
    if p.get("vocab_size") != FIG2_VOCAB:
        out.append(f"vocabulary {p.get('vocab_size')}, not {FIG2_VOCAB}")
    if (p.get("seq_len"), p.get("num_kv_pairs")) not in FIG2_GRID:
        out.append(f"(L, kv) = ({p.get('seq_len')}, {p.get('num_kv_pairs')}) is not on the figure's grid")
    if p.get("d_model") not in FIG2_D_MODEL:
        out.append(f"d_model {p.get('d_model')} is not on the figure's grid")
    if not _close(p.get("power_a"), FIG2_POWER_A):
        out.append(f"power_a {p.get('power_a')}, not {FIG2_POWER_A}")
    if p.get("filler") not in (None, "zeros"):
        out.append(f"{p.get('filler')} filler, not zeros")
    if p.get("n_layers") != 2 or p.get("ffn") not in ("auto", "none"):
        out.append(f"{p.get('n_layers')} layers with ffn {p.get('ffn')}, not 2 mixer-only layers")
    if p.get("train_examples") != FIG2_TRAIN or p.get("test_examples") != FIG2_TEST:
        out.append(f"{p.get('train_examples')} train / {p.get('test_examples')} test examples, not {FIG2_TRAIN} / {FIG2_TEST}")
    if isinstance(p.get("seq_len"), int) and p.get("batch_size") != fig2_batch(p["seq_len"]):
        out.append(f"batch {p.get('batch_size')}, not {fig2_batch(p['seq_len'])}")
    epochs = p.get("budget_epochs") or 0.0
    if epochs < FIG2_EPOCHS - 1e-9:
        out.append(f"{epochs:.3g} epochs of training budget, not {FIG2_EPOCHS}")
    if p.get("target") is not None and p["target"] < 0.99:
        out.append(f"early stop at {p['target']}, not 0.99")
    if p.get("out_of_time_runs"):
        out.append(f"max_train_s stopped {p['out_of_time_runs']} run(s)")
    missing = [lr for lr in FIG2_LRS if not any(_close(lr, x) for x in p.get("lr_grid") or [])]
    if missing:
        out.append(f"lr grid {_lrs(p.get('lr_grid'))}, not the best of {_lrs(FIG2_LRS)}")
    if p.get("short_conv") is not None:
        out.append(f"short_conv {p['short_conv']} on every recurrent mixer (the figure builds each as published)")
    return out


def comparable_to(p: dict) -> str:
    """``"Zoology Fig. 2"``, or why not (module docstring)."""
    diffs = fig2_differences(p)
    if not diffs:
        return ZOOLOGY_FIG2
    quick = p.get("out_of_time_runs") or (p.get("budget_epochs") or 0.0) < QUICK_FRACTION * FIG2_EPOCHS
    return f"{'quick check, ' if quick else ''}{NOT_FIG2} ({'; '.join(diffs)})"


def _close(a, b, rel: float = 0.02) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=rel)
    except (TypeError, ValueError):
        return False


def _lrs(values) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in (values or [])) + "]"
