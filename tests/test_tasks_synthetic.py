"""Selective copying and induction heads: layout invariants, label placement, determinism,
option errors, the metric on oracle and constant predictions, and a short training run each."""

import math

import pytest
import torch

from archbench import registry
from archbench.mixers.base import MixerConfig
from archbench.models import LM, Stack
from archbench.tasks import IGNORE, TaskError, make_task
from archbench.tasks.base import split_seed
from archbench.tasks.cell import task_from_cell
from archbench.tasks.metrics import accuracy
from archbench.tasks.synthetic import InductionHeads, SelectiveCopy
from archbench.tasks.train import TrainSettings, train_run

# ---------------------------------------------------------------- selective copying


def test_selective_copy_layout_and_labels():
    T, V, k = 32, 10, 5
    region = T - k
    data = SelectiveCopy(seq_len=T, vocab_size=V, n_tokens=k).sample(3000, seed=1)
    x, y = data.inputs, data.labels
    assert x.shape == y.shape == (3000, T) and x.dtype == y.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < V
    # the marker region is all markers, and the marker appears nowhere else
    assert (x[:, region:] == 1).all()
    assert not (x[:, :region] == 1).any()
    # exactly k data tokens in the region, all from [2, V): k distinct positions, the rest noise
    body = x[:, :region]
    is_data = body != 0
    assert (is_data.sum(1) == k).all()
    assert (body[is_data] >= 2).all()
    # labels: exactly the marker positions, label j = j-th data token in position order
    assert (y[:, :region] == IGNORE).all()
    assert (y[:, region:] != IGNORE).all()
    assert torch.equal(y[:, region:], body[is_data].view(-1, k))  # boolean indexing is row-major: sorted order
    # positions spread over the whole region and tokens over the whole data range
    assert is_data.any(0).all()
    assert set(body[is_data].unique().tolist()) == set(range(2, V))


def test_selective_copy_tight_region_fills_every_slot():
    T, k = 8, 4  # region == n_tokens: every region position holds a data token
    x = SelectiveCopy(seq_len=T, vocab_size=3, n_tokens=k).sample(50, seed=0).inputs
    assert (x[:, :k] == 2).all() and (x[:, k:] == 1).all()


def test_selective_copy_generation_positions_are_uniform():
    # each region position holds a data token with probability k / region
    T, k = 24, 4
    x = SelectiveCopy(seq_len=T, vocab_size=6, n_tokens=k).sample(20_000, seed=3).inputs
    freq = (x[:, : T - k] != 0).double().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, k / (T - k)), atol=0.02)


def test_selective_copy_eval_set_is_the_test_stream():
    task = SelectiveCopy(seq_len=20, vocab_size=8, n_tokens=4)
    sets = task.eval_sets(64, seed=5)
    assert list(sets) == ["all"]
    assert torch.equal(sets["all"].inputs, task.sample(64, split_seed(5, "test")).inputs)
    assert not torch.equal(sets["all"].inputs, task.sample(64, split_seed(5, "train")).inputs)


def test_selective_copy_large_sample_is_fast():
    import time

    t0 = time.perf_counter()
    data = SelectiveCopy().sample(20_000, seed=0)
    assert time.perf_counter() - t0 < 2.0  # ~0.1 s here; the bound leaves room for a loaded machine
    assert data.inputs.shape == (20_000, 256)


# ---------------------------------------------------------------- induction heads


def test_induction_layout_and_label():
    T, V = 16, 7
    data = InductionHeads(seq_len=T, vocab_size=V).sample(4000, seed=2)
    x, y = data.inputs, data.labels
    assert x.shape == y.shape == (4000, T)
    assert int(x.min()) >= 1 and int(x.max()) < V  # id 0 never appears
    assert ((x == 1).sum(1) == 2).all()  # the trigger exactly twice
    assert (x[:, -1] == 1).all()
    p = (x[:, :-1] == 1).int().argmax(1)  # the first trigger
    assert int(p.min()) == 0 and int(p.max()) == T - 3  # the whole allowed range [0, T-3] is used
    rows = torch.arange(len(x))
    successor = x[rows, p + 1]
    assert (successor >= 2).all()
    assert (y[:, :-1] == IGNORE).all()
    assert torch.equal(y[:, -1], successor)
    assert set(y[:, -1].tolist()) == set(range(2, V))


def test_induction_minimal_length():
    x = InductionHeads(seq_len=3, vocab_size=3).sample(10, seed=0)
    assert (x.inputs == torch.tensor([1, 2, 1])).all() and (x.labels[:, -1] == 2).all()


def test_induction_eval_groups_per_test_length():
    task = InductionHeads(seq_len=16, vocab_size=8, test_lengths=[16, 64])
    assert task.test_lengths == (16, 64)
    sets = task.eval_sets(32, seed=4)
    assert list(sets) == ["T=16", "T=64"]
    assert sets["T=16"].inputs.shape == (32, 16) and sets["T=64"].inputs.shape == (32, 64)
    assert ((sets["T=64"].inputs == 1).sum(1) == 2).all()
    assert torch.equal(sets["T=16"].inputs, task.sample(32, split_seed(4, "test", 16)).inputs)
    assert not torch.equal(sets["T=16"].inputs, task.sample(32, split_seed(4, "train")).inputs)
    # groups come from disjoint streams: the T=64 set is not the T=16 stream at another length
    assert not torch.equal(sets["T=64"].inputs[:, :16], task.sample(32, split_seed(4, "test", 16)).inputs)
    assert list(InductionHeads(seq_len=16).eval_sets(4, seed=0)) == ["T=16"]


def test_induction_from_a_suite_cell():
    cell = {"task": "induction", "seq_len": 32, "vocab_size": 8, "task_args": {"induction": {"test_lengths": [32, 128]}}}
    task = task_from_cell(cell)
    assert isinstance(task, InductionHeads) and task.test_lengths == (32, 128)
    assert task.describe() == {"task": "induction", "seq_len": 32, "vocab_size": 8, "test_lengths": (32, 128)}


# ---------------------------------------------------------------- both


@pytest.mark.parametrize("name", ["selective_copy", "induction"])
def test_deterministic_in_seed(name):
    task = make_task(name, seq_len=40, vocab_size=9)
    a, b, c = task.sample(200, 7), task.sample(200, 7), task.sample(200, 8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize("name", ["selective_copy", "induction"])
def test_oracle_scores_one_and_constants_score_near_zero(name):
    V = 12
    task = make_task(name, seq_len=48, vocab_size=V)
    data = task.sample(2000, 0)
    assert accuracy(data.labels.clone(), data.labels) == 1.0
    assert accuracy(torch.ones_like(data.labels), data.labels) == 0.0  # the marker / trigger is never a label
    chance = accuracy(torch.full_like(data.labels, 2), data.labels)
    assert abs(chance - 1 / (V - 2)) < 0.03
    # one wrong position in every example costs exactly 1 / (labels per example)
    k = int((data.labels[0] != IGNORE).sum())
    wrong = data.labels.clone()
    last = data.labels.shape[1] - 1
    wrong[:, last] = torch.where(wrong[:, last] == 2, 3, 2)
    assert accuracy(wrong, data.labels) == pytest.approx(1 - 1 / k)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("selective_copy", {"seq_len": 10, "n_tokens": 6}, r"need seq_len >= 2 \* n_tokens"),
        ("selective_copy", {"vocab_size": 2}, "need vocab_size >= 3"),
        ("selective_copy", {"n_tokens": 0}, "n_tokens must be a positive integer"),
        ("selective_copy", {"seq_len": 32.0}, "seq_len must be a positive integer"),
        ("induction", {"seq_len": 2}, "need seq_len >= 3"),
        ("induction", {"vocab_size": 2}, "need vocab_size >= 3"),
        ("induction", {"test_lengths": [256, 2]}, "need seq_len >= 3"),
        ("induction", {"test_lengths": []}, "test_lengths must be a non-empty list"),
        ("induction", {"test_lengths": 512}, "test_lengths must be a non-empty list"),
        ("induction", {"test_lengths": [256, 256]}, "test_lengths has repeats"),
        ("induction", {"test_lengths": [256, True]}, "test_lengths must be a positive integer"),
        ("induction", {"n_tokens": 4}, "has no option 'n_tokens'"),
    ],
)
def test_impossible_options_fail_in_one_line(name, options, message):
    with pytest.raises(TaskError, match=message) as err:
        make_task(name, **options)
    assert "\n" not in str(err.value) and str(err.value).startswith(("selective_copy:", "induction:", "task "))


@pytest.mark.parametrize("name", ["selective_copy", "induction"])
def test_short_training_run(name):
    extra = {"test_lengths": [24, 48]} if name == "induction" else {"n_tokens": 4}
    task = make_task(name, seq_len=24, vocab_size=8, **extra)
    spec = registry.get("softmax_attention")
    config = MixerConfig(d_model=32, n_heads=2)

    def build():
        return LM(Stack(config, [spec.build(config, "sdpa")], ffn=task.default_ffn), task.vocab_size)

    settings = TrainSettings(steps=30, batch_size=16, lr=3e-3, eval_every=15, train_examples=512, test_examples=64)
    result = train_run(build, task, settings, seed=0)
    assert result.steps == 30 and not result.diverged
    assert math.isfinite(result.final_loss) and result.final_loss > 0
    assert 0.0 <= result.score <= 1.0
    assert set(result.by_group) == ({"T=24", "T=48"} if name == "induction" else {"all"})
    assert [h["step"] for h in result.history] == [15, 30]
