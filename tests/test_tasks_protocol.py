"""The protocol in a task row and its comparable_to label; MQAR's filler; epoch-counted training;
the suite's per-length batch and short-conv switch, with existing cell keys unchanged."""

from __future__ import annotations

import textwrap

import pytest
import torch

from archbench.suite import SuiteError, load_suite
from archbench.tasks import IGNORE, TaskError, make_task
from archbench.tasks.mqar import generate
from archbench.tasks.protocol import FIG2_LRS, ZOOLOGY_FIG2, comparable_to, fig2_differences
from archbench.tasks.train import TrainSettings, train_run


def _fig2(**changes) -> dict:
    p = {
        "task": "mqar", "vocab_size": 8192, "seq_len": 128, "num_kv_pairs": 8, "power_a": 0.01, "filler": "zeros",
        "train_examples": 100_000, "test_examples": 3_000, "batch_size": 512, "budget_steps": 12_480,
        "budget_epochs": 64.0, "steps_seen": 900.0, "target": 0.99, "lr_grid": list(FIG2_LRS), "seeds": 3,
        "max_train_s": None, "out_of_time_runs": 0, "short_conv": None, "n_layers": 2, "ffn": "auto", "d_model": 256,
    }  # fmt: skip
    return {**p, **changes}


def test_comparable_to_needs_every_setting_of_figure_2():
    assert fig2_differences(_fig2()) == [] and comparable_to(_fig2()) == ZOOLOGY_FIG2
    assert comparable_to(_fig2(lr_grid=[1e-4, 4.6415888e-4, 2.1544347e-3, 1e-2])) == ZOOLOGY_FIG2, "rounded lrs match"
    for change, reason in [
        ({"vocab_size": 256}, "vocabulary 256, not 8192"),
        ({"filler": "random"}, "random filler"),
        ({"short_conv": 4}, "short_conv 4"),
        ({"lr_grid": [3e-3]}, "lr grid [0.003]"),
        ({"batch_size": 256}, "batch 256, not 512"),
        ({"num_kv_pairs": 4}, "(L, kv) = (128, 4)"),
        ({"train_examples": 20_000}, "20000 train / 3000 test"),
    ]:
        label = comparable_to(_fig2(**change))
        assert label.startswith("not comparable with Zoology Figure 2 (") and reason in label, (change, label)
    quick = comparable_to(_fig2(vocab_size=256, budget_epochs=2.0, out_of_time_runs=1))
    assert quick.startswith("quick check, not comparable with Zoology Figure 2 (") and "max_train_s stopped 1 run" in quick


def test_random_filler_keeps_pairs_queries_and_labels():
    zeros = generate(200, 64, 512, 4, seed=5)
    noisy = generate(200, 64, 512, 4, seed=5, filler="random")
    assert torch.equal(zeros.labels, noisy.labels), "the same pairs, queries and labels"
    q = zeros.labels != IGNORE
    assert torch.equal(noisy.inputs[q], zeros.inputs[q]) and torch.equal(noisy.inputs[:, :8], zeros.inputs[:, :8])
    filler = noisy.inputs[:, 8:][~q[:, 8:]]
    assert (filler >= 0).all() and (filler < 512).all() and filler.unique().numel() > 100, "ids drawn over the vocabulary"
    with pytest.raises(TaskError, match="filler must be one of zeros, random"):
        make_task("mqar", seq_len=64, vocab_size=512, filler="noise")


def test_epochs_count_passes_over_the_training_set():
    s = TrainSettings(steps=7, batch_size=16, train_examples=100, eval_every=3, epochs=4)
    assert s.schedule() == (24, 6)  # 100 // 16 = 6 steps an epoch
    task = make_task("mqar", seq_len=16, vocab_size=64, num_kv_pairs=2)
    seen = []
    r = train_run(lambda: _tiny_lm(), task, s, 0, on_progress=seen.append)
    assert r.steps == 24 and [p["step"] for p in seen] == [6, 12, 18, 24] and seen[0]["steps"] == 24


def _tiny_lm():
    from archbench import registry
    from archbench.mixers.base import MixerConfig
    from archbench.models import LM, Stack

    cfg = MixerConfig(d_model=8, n_heads=1)
    spec = registry.get("linear_attention")
    return LM(Stack(cfg, [spec.build(cfg, "chunked")], ffn=None), 64)


SUITE = """
name: proto
defaults:
  device: cpu
  task: mqar
  vocab_size: 512
  d_model: 16
  n_heads: 1
  train: {steps: 5, batch_size: BATCH, lr: 1e-3}
sweep:
  arch: [gla, softmax_attention]
  mode: [task, decode]
  num_kv_pairs: [4, 64]
  seq_len: [64, 256]
exclude:
  - {seq_len: 64, num_kv_pairs: 64}
  - {seq_len: 256, num_kv_pairs: 4}
"""


def _suite(tmp_path, batch="32", extra=""):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SUITE).replace("BATCH", batch) + extra)
    return load_suite(path)


def test_batch_per_length_and_excluded_shapes_are_not_checked(tmp_path):
    cells = _suite(tmp_path, "{64: 8, 256: 4}").cells()
    task = {(c.arch, c.seq_len): c for c in cells if c.mode == "task"}
    assert task[("gla", 64)].batch == task[("gla", 64)].train.batch_size == 8
    assert task[("gla", 256)].batch == 4, "batch follows the length; (64, kv=64) is excluded before MQAR checks it"
    with pytest.raises(SuiteError, match="names no batch for seq_len 256"):
        _suite(tmp_path, "{64: 8}").cells()


def test_short_conv_switch_is_in_key_and_row_only_when_set(tmp_path):
    plain = {c.label: c for c in _suite(tmp_path).cells()}
    assert all("short_conv" not in c.identity() for c in plain.values())
    raw = textwrap.dedent(SUITE).replace("BATCH", "32").replace("  n_heads: 1\n", "  n_heads: 1\n  short_conv: 4\n")
    (tmp_path / "sc.yaml").write_text(raw)
    switched = {c.label: c for c in load_suite(tmp_path / "sc.yaml").cells()}
    assert switched.keys() == plain.keys()
    for label, c in switched.items():
        assert c.identity()["short_conv"] == 4 and c.key != plain[label].key


def test_unset_new_train_fields_keep_the_old_task_key(tmp_path):
    """A task cell's key hashes its train settings: epochs (unset) must not change it."""
    import hashlib
    import json

    c = next(c for c in _suite(tmp_path).cells() if c.mode == "task")
    ident = c.identity()
    train = c.train.model_dump()
    for new in ("epochs", "max_train_s"):
        del train[new]
    ident["train"], ident["task_args"] = train, {}
    want = hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert c.key == want
