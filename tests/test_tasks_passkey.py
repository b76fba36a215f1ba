"""Passkey retrieval: layout, labels, depth groups, determinism, option errors, a training smoke run."""

import math

import pytest
import torch

from archbench.tasks import TaskError, make_task
from archbench.tasks.base import IGNORE, split_seed
from archbench.tasks.cell import task_from_cell
from archbench.tasks.passkey import KEY_END, KEY_START, PATTERN, QUERY, VOCAB, Passkey, generate


def key_starts(inputs: torch.Tensor) -> torch.Tensor:
    """Position of <key> in each row (exactly one per row)."""
    hits = (inputs == KEY_START).nonzero()
    assert hits.shape[0] == inputs.shape[0] and torch.equal(hits[:, 0], torch.arange(inputs.shape[0]))
    return hits[:, 1]


def check_example(inp: torch.Tensor, lab: torch.Tensor, n: int, start: int) -> None:
    """Every token of one example where the layout says it is."""
    T = inp.numel()
    digits = inp[start + 1 : start + 1 + n]
    assert int(inp[start]) == KEY_START and int(inp[start + n + 1]) == KEY_END
    assert bool(((digits >= 0) & (digits <= 9)).all())
    assert int(inp[T - n]) == QUERY
    assert torch.equal(inp[T - n + 1 :], digits[: n - 1])  # teacher forcing: the answer so far
    assert torch.equal(lab[T - n :], digits)  # <query> predicts d1, d1 predicts d2, ...
    assert bool((lab[: T - n] == IGNORE).all())
    # filler: the rest of the sequence is the pattern as one unbroken stream, no digits or markers
    filler = torch.cat([inp[:start], inp[start + n + 2 : T - n]])
    assert filler.numel() == T - 2 * n - 2
    expected = torch.tensor(PATTERN).repeat(T // len(PATTERN) + 1)[: filler.numel()]
    assert torch.equal(filler, expected)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0, 0.3])
def test_key_sits_at_the_stated_depth(depth):
    T, n = 100, 5
    data = generate(16, T, n, depth, seed=3)
    F = T - 2 * n - 2
    start = math.floor(depth * F + 0.5)
    assert torch.equal(key_starts(data.inputs), torch.full((16,), start))
    for inp, lab in zip(data.inputs, data.labels):
        check_example(inp, lab, n, start)
    if depth == 0.0:
        assert int(data.inputs[0, 0]) == KEY_START
    if depth == 1.0:  # right before the query
        assert int(data.inputs[0, T - n - 1]) == KEY_END


def test_training_depth_is_uniform_and_every_example_well_formed():
    T, n = 40, 3
    task = Passkey(seq_len=T, n_digits=n)
    data = task.sample(2000, seed=1)
    assert data.inputs.shape == (2000, T) and data.inputs.dtype == torch.long
    assert int(data.inputs.min()) >= 0 and int(data.inputs.max()) < VOCAB == task.vocab_size
    starts = key_starts(data.inputs)
    F = T - 2 * n - 2
    counts = torch.bincount(starts, minlength=F + 1)
    assert counts.numel() == F + 1 and bool((counts > 0).all())  # every depth 0..F occurs, nothing beyond
    for i in range(0, 2000, 97):
        check_example(data.inputs[i], data.labels[i], n, int(starts[i]))
    # the digits are random: all ten values occur in the answers
    assert set(data.labels[:, -n:].unique().tolist()) == set(range(10))


def test_eval_groups_cover_lengths_and_depths():
    task = make_task("passkey", seq_len=64, n_digits=4, test_lengths=[64, 128], test_depths=[0.0, 0.5, 1.0])
    sets = task.eval_sets(8, seed=0)
    assert list(sets) == [f"T={T} depth={d}" for T in (64, 128) for d in ("0.00", "0.50", "1.00")]
    for T in (64, 128):
        for d in (0.0, 0.5, 1.0):
            data = sets[f"T={T} depth={d:.2f}"]
            assert data.inputs.shape == (8, T)  # longer test lengths give longer sequences
            start = math.floor(d * (T - 10) + 0.5)
            for inp, lab in zip(data.inputs, data.labels):
                check_example(inp, lab, 4, start)
    assert list(Passkey(seq_len=48).eval_sets(2, 0)) == [
        f"T=48 depth={d}" for d in ("0.00", "0.25", "0.50", "0.75", "1.00")
    ]


def test_deterministic_and_streams_differ():
    task = Passkey(seq_len=64, n_digits=5)
    a, b = task.sample(64, 7), task.sample(64, 7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(task.sample(64, 8).labels, a.labels)
    train = task.sample(64, split_seed(7, "train"))
    e1, e2 = task.eval_sets(64, 7), task.eval_sets(64, 7)
    assert all(torch.equal(e1[k].inputs, e2[k].inputs) for k in e1)
    assert not torch.equal(e1["T=64 depth=0.50"].labels[:, -5:], train.labels[:, -5:])
    # each group has its own stream: the same depth at another length draws other digits
    two = Passkey(seq_len=64, n_digits=5, test_lengths=(64, 96)).eval_sets(64, 7)
    assert torch.equal(two["T=64 depth=0.50"].inputs, e1["T=64 depth=0.50"].inputs)
    assert not torch.equal(two["T=96 depth=0.50"].labels[:, -5:], two["T=64 depth=0.50"].labels[:, -5:])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"seq_len": 11, "n_digits": 5}, ">= 12"),
        ({"seq_len": 64, "n_digits": 0}, "n_digits"),
        ({"seq_len": 64, "depth": 1.5}, "depth"),
        ({"seq_len": 64, "depth": "deep"}, "depth"),
        ({"seq_len": 64, "test_depths": (0.0, -0.1)}, "test_depths"),
        ({"seq_len": 64, "test_depths": ()}, "test_depths"),
        ({"seq_len": 64, "test_depths": (0.251, 0.249)}, "0.01 apart"),
        ({"seq_len": 64, "test_lengths": (64, 8)}, "length 8"),
        ({"seq_len": 64, "test_lengths": ()}, "test_lengths"),
        ({"seq_len": 64, "digits": 5}, "no option"),
    ],
)
def test_impossible_options_are_one_line_errors(options, words):
    with pytest.raises(TaskError) as e:
        make_task("passkey", **options)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_cell_options_and_description():
    cell = {"task": "passkey", "seq_len": 64, "vocab_size": 8192, "task_args": {"passkey": {"n_digits": 3, "depth": 0.5}}}
    task = task_from_cell(cell)  # vocab_size is fixed by the task, not taken from the cell
    assert task.vocab_size == VOCAB and task.seq_len == 64 and task.depth == 0.5
    assert task.metric == "accuracy" and task.default_ffn == "swiglu"
    info = task.describe()
    assert info["task"] == "passkey" and info["vocab_size"] == VOCAB and info["n_digits"] == 3


def test_training_smoke():
    from archbench import registry
    from archbench.mixers.base import MixerConfig
    from archbench.models import LM, Stack
    from archbench.tasks.train import TrainSettings, train_run

    task = Passkey(seq_len=32, n_digits=3, test_lengths=(32, 48), test_depths=(0.0, 1.0))
    config = MixerConfig(d_model=32, n_heads=2)
    spec = registry.get("softmax_attention")

    def build():
        return LM(Stack(config, [spec.build(config, "sdpa")], ffn=task.default_ffn), task.vocab_size)

    settings = TrainSettings(steps=20, batch_size=16, lr=3e-3, eval_every=10, train_examples=320, test_examples=32)
    result = train_run(build, task, settings, seed=0)
    assert result.steps == 20 and not result.diverged and math.isfinite(result.final_loss)
    assert 0.0 <= result.score <= 1.0 and 0.0 <= result.exact <= result.score
    assert set(result.by_group) == {f"T={T} depth={d}" for T in (32, 48) for d in ("0.00", "1.00")}
