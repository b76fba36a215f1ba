"""MQAR generator invariants, determinism, metric, and the training loop's contract."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.tasks import IGNORE, TaskError, make_task
from archbench.tasks.base import split_seed
from archbench.tasks.metrics import accuracy, better, exact_match, passes, per_example_accuracy
from archbench.tasks.mqar import generate, query_probs


def _pairs(inputs, kv):
    return inputs[:, 0 : 2 * kv : 2], inputs[:, 1 : 2 * kv : 2]


@pytest.mark.parametrize("L,kv,V", [(64, 4, 8192), (128, 8, 256), (66, 16, 200), (16, 4, 17)])
def test_mqar_invariants(L, kv, V):
    d = generate(300, L, V, kv, seed=3)
    assert d.inputs.shape == d.labels.shape == (300, L)
    keys, values = _pairs(d.inputs, kv)
    assert ((keys >= 1) & (keys < V // 2)).all(), "keys from [1, V/2)"
    assert ((values >= V // 2) & (values < V)).all(), "values from [V/2, V)"
    for row in keys:
        assert len(set(row.tolist())) == kv, "no repeated key within an example"
    rest = d.inputs[:, 2 * kv :]
    labels_rest = d.labels[:, 2 * kv :]
    assert (d.labels[:, : 2 * kv] == IGNORE).all(), "nothing scored inside the context"
    q = labels_rest != IGNORE
    assert (q.sum(1) == kv).all(), "each key queried exactly once"
    offsets = torch.nonzero(q)[:, 1]
    assert (offsets % 2 == 0).all(), "queries at even offsets of the query region"
    assert (rest[~q] == 0).all(), "every non-query position holds the filler 0"
    for i in range(20):
        lookup = dict(zip(keys[i].tolist(), values[i].tolist()))
        pos = torch.nonzero(q[i]).flatten()
        assert sorted(rest[i, pos].tolist()) == sorted(lookup), "the queries are the example's keys"
        for p in pos.tolist():
            assert labels_rest[i, p].item() == lookup[rest[i, p].item()], "label = the queried key's value"


def test_mqar_queries_follow_the_power_law():
    p = query_probs(30, 0.01)
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    assert (p[:-1] > p[1:]).all(), "a*i^(a-1) decreases: near gaps are likelier"
    d = generate(4000, 128, 8192, 4, seed=0)
    gaps = torch.nonzero(d.labels[:, 8:] != IGNORE)[:, 1].float() / 2
    assert gaps.mean() < (120 / 2 - 1) / 2, "queries cluster nearer the context than uniform placement"


def test_mqar_is_deterministic_and_train_test_disjoint():
    a, b = generate(64, 64, 512, 4, seed=7), generate(64, 64, 512, 4, seed=7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    c = generate(64, 64, 512, 4, seed=8)
    assert not torch.equal(a.inputs, c.inputs)
    assert split_seed(0, "train") != split_seed(0, "test")
    task = make_task("mqar", seq_len=64, vocab_size=512, num_kv_pairs=4)
    train = task.sample(64, split_seed(0, "train"))
    test = task.eval_sets(64, 0)["kv=4"]
    assert not torch.equal(train.inputs, test.inputs)


def test_mqar_eval_groups_per_kv():
    task = make_task("mqar", seq_len=128, vocab_size=1024, num_kv_pairs=8, test_kv_pairs=[4, 8, 16])
    sets = task.eval_sets(10, 0)
    assert list(sets) == ["kv=4", "kv=8", "kv=16"]
    assert [(s.labels != IGNORE).sum(1).max().item() for s in sets.values()] == [4, 8, 16]


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"seq_len": 63}, "even"),
        ({"seq_len": 64, "num_kv_pairs": 17}, "4 \\* num_kv_pairs <= seq_len"),
        ({"seq_len": 64, "vocab_size": 64}, "vocab_size > seq_len"),
        ({"seq_len": 64, "num_kv_pairs": 0}, ">= 1"),
        ({"seq_len": 64, "power_a": 0}, "power_a"),
        ({"seq_len": 64, "test_kv_pairs": [32]}, "4 \\* num_kv_pairs"),
        ({"seq_len": 64, "colour": 3}, "no option 'colour'"),
    ],
)
def test_mqar_refuses_impossible_options(opts, match):
    with pytest.raises(TaskError, match=match) as e:
        make_task("mqar", **opts)
    assert "\n" not in str(e.value)


def test_unknown_task_lists_known():
    with pytest.raises(TaskError, match="known tasks: .*mqar"):
        make_task("sudoku")


def test_metrics_on_hand_made_predictions():
    labels = torch.tensor([[IGNORE, 5, IGNORE, 6], [7, IGNORE, IGNORE, IGNORE], [IGNORE] * 4])
    preds = torch.tensor([[0, 5, 0, 0], [7, 1, 1, 1], [1, 1, 1, 1]])
    per = per_example_accuracy(preds, labels)
    assert per[0] == 0.5 and per[1] == 1.0 and math.isnan(per[2])
    assert accuracy(preds, labels) == pytest.approx(0.75), "mean over examples, not over positions"
    assert exact_match(preds, labels) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no labelled"):
        accuracy(preds[2:], labels[2:])
    assert better("accuracy", 0.9, 0.8) and not better("accuracy", 0.8, 0.9)
    assert better("bits_per_byte", 1.5, 2.0) and better("accuracy", 0.1, None) and not better("accuracy", float("nan"), 0.1)
    assert passes("accuracy", 0.95, 0.95) and not passes("accuracy", 0.94, 0.95) and not passes("accuracy", 1.0, None)
    assert passes("bits_per_byte", 1.9, 2.0)
