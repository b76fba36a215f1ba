"""Byte-level LM task: the stdlib corpus (selection, split, facts), text-file and hf sources,
windows and labels, determinism, one-line errors, a training smoke run."""

import math
import sys
import types

import pytest
import torch

from archbench.tasks import TaskError, make_task
from archbench.tasks.base import split_seed
from archbench.tasks.cell import task_from_cell
from archbench.tasks.corpus import SKIP_DIRS, ByteLM, _load, load_corpus, stdlib_corpus, stdlib_files, to_validation

SMALL = 300_000  # bytes of stdlib: enough for a few validation files, fast to load


def test_stdlib_selection_split_and_facts():
    task = make_task("lm", seq_len=32, max_bytes=SMALL)
    corpus = task.corpus
    files = [rel for rel, _ in stdlib_files()]
    assert len(set(files)) == len(files) and all(f.endswith(".py") for f in files)
    assert files != sorted(files), "hash order spreads a byte budget over the whole library"
    assert not any(f.startswith("encodings/") for f in files), "generated codec tables are skipped"
    assert not any(SKIP_DIRS.intersection(f.split("/")[:-1]) for f in files)
    chosen = set(corpus.train_files) | set(corpus.val_files)
    assert not set(corpus.train_files) & set(corpus.val_files) and corpus.train_files and corpus.val_files
    assert chosen == set(files[: len(chosen)])  # a prefix of the hash-ordered list
    hashed = {f for f in chosen if to_validation(f, 0.05)}  # the split rule; one file moves when none hash there
    assert set(corpus.val_files) == hashed if hashed else (len(corpus.val_files) == 1)
    facts = task.describe()["corpus"]
    assert facts["source"] == "stdlib" and facts["files"] == len(chosen)
    assert (facts["train_files"], facts["val_files"]) == (len(corpus.train_files), len(corpus.val_files))
    assert facts["train_bytes"] == corpus.train.numel() and facts["val_bytes"] == corpus.val.numel()
    assert facts["train_bytes"] + facts["val_bytes"] == SMALL  # the last file is cut to fit
    assert len(facts["files_sha256"]) == 16 and len(facts["content_sha256"]) == 16
    # the same files and bytes again on a fresh load; another size selects another list
    _load.cache_clear()
    again = load_corpus("stdlib", SMALL, 0.05)
    assert again is not corpus and again.facts == corpus.facts and again.val_files == corpus.val_files
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)
    assert load_corpus("stdlib", SMALL // 2, 0.05).facts["files_sha256"] != facts["files_sha256"]


def test_skipped_directories_and_at_least_one_file_per_split(tmp_path):
    for rel in ["a.py", "b.py", "notes.txt", "pkg/c.py", "test/t.py", "pkg/tests/u.py", "site-packages/s.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\nx = 1\n")
    assert sorted(rel for rel, _ in stdlib_files(tmp_path)) == ["a.py", "b.py", "pkg/c.py"]
    for frac in (1e-12, 1 - 1e-12):  # no file / every file hashes to validation: one is moved across
        corpus = stdlib_corpus(10_000, frac, root=tmp_path)
        assert len(corpus.train_files) >= 1 and len(corpus.val_files) >= 1
        assert sorted(corpus.train_files + corpus.val_files) == ["a.py", "b.py", "pkg/c.py"]
    assert len(stdlib_corpus(10_000, 1e-12, root=tmp_path).val_files) == 1
    for i in range(200):
        (tmp_path / "many" / f"m{i:03d}.py").parent.mkdir(exist_ok=True)
        (tmp_path / "many" / f"m{i:03d}.py").write_text(f"y = {i}\n")
    corpus = stdlib_corpus(100_000, 0.05, root=tmp_path)
    names = [rel for rel, _ in stdlib_files(tmp_path)]
    assert set(corpus.val_files) == {f for f in names if to_validation(f, 0.05)}
    assert 2 <= len(corpus.val_files) <= 25 and len(corpus.train_files) == len(names) - len(corpus.val_files)
    with pytest.raises(TaskError, match="raise it"):
        stdlib_corpus(5, 0.05, root=tmp_path)  # one (cut) file cannot make two splits


def test_windows_labels_and_determinism():
    T = 48
    task = ByteLM(seq_len=T, max_bytes=SMALL)
    train_bytes = bytes(task.corpus.train.tolist())
    data = task.sample(50, seed=5)
    assert data.inputs.shape == (50, T) and data.inputs.dtype == torch.long
    assert torch.equal(data.labels[:, :-1], data.inputs[:, 1:])  # every position labelled with the next byte
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < 256 == task.vocab_size
    for inp, lab in zip(data.inputs[:10], data.labels[:10]):
        assert bytes(inp.tolist() + lab[-1:].tolist()) in train_bytes  # a window of seq_len + 1 train bytes
    again = task.sample(50, seed=5)
    assert torch.equal(again.inputs, data.inputs) and torch.equal(again.labels, data.labels)
    assert not torch.equal(task.sample(50, seed=6).inputs, data.inputs)
    assert not torch.equal(task.sample(50, split_seed(5, "train")).inputs, data.inputs)


def test_eval_windows_are_evenly_spaced_and_fixed():
    T = 32
    task = ByteLM(seq_len=T, max_bytes=SMALL)
    val = task.corpus.val
    sets = task.eval_sets(5, seed=0)
    assert list(sets) == ["val"]
    got = sets["val"]
    step = (val.numel() - T - 1) / 4
    for i in range(5):
        lo = round(i * step)
        assert torch.equal(got.inputs[i], val[lo : lo + T].long()) and torch.equal(
            got.labels[i], val[lo + 1 : lo + T + 1].long()
        )
    assert torch.equal(got.labels[-1], val[-T:].long())  # the last window ends at the split's end
    assert torch.equal(task.eval_sets(5, seed=9)["val"].inputs, got.inputs)  # not random


def test_text_file_source(tmp_path):
    path = tmp_path / "corpus.txt"
    text = bytes(range(256)) * 8  # 2048 bytes
    path.write_bytes(text)
    task = make_task("lm", seq_len=16, source=str(path), val_frac=0.25)
    corpus = task.corpus
    assert bytes(corpus.train.tolist()) == text[:1536] and bytes(corpus.val.tolist()) == text[1536:]
    facts = task.describe()["corpus"]
    assert facts["source"] == str(path) and facts["files"] == 1
    assert (facts["train_bytes"], facts["val_bytes"]) == (1536, 512)
    data = task.sample(20, 0)
    assert bool(((data.labels - data.inputs) % 256 == 1).all())  # this text's next byte is always +1
    path.write_bytes(text[:1000])  # a changed file is read again
    assert make_task("lm", seq_len=16, source=str(path), val_frac=0.25).describe()["corpus"]["val_bytes"] == 250
    assert make_task("lm", seq_len=16, source=str(path), max_bytes=400).describe()["corpus"]["train_bytes"] == 380


def test_short_validation_split_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"x" * 400)
    with pytest.raises(TaskError) as e:
        make_task("lm", seq_len=64, source=str(path))  # validation: 20 bytes < 65
    assert "validation split" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 16, "val_frac": 0.0}, "val_frac"),
        ({"seq_len": 16, "max_bytes": 1}, "max_bytes"),
        ({"seq_len": 16, "source": "/no/such/corpus.txt"}, "is not a file"),
        ({"seq_len": 16, "source": "hf:"}, "hf:DATASET"),
        ({"seq_len": 16, "source": 3}, "source must be"),
        ({"seq_len": 16, "source": "hf:a:b:c:d"}, "hf:DATASET"),
        ({"seq_len": 16, "vocab_size": 256}, "no option"),
    ],
)
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(TaskError) as e:
        make_task("lm", **options)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_hf_source_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    _load.cache_clear()
    with pytest.raises(TaskError) as e:
        make_task("lm", seq_len=16, source="hf:wikitext:wikitext-2-raw-v1")
    assert "'datasets' package" in str(e.value) and "text file" in str(e.value) and "\n" not in str(e.value)


class FakeDataset:
    """What the task uses of a ``datasets.Dataset``: column names and iteration over row dicts."""

    def __init__(self, rows):
        self.rows, self.column_names = rows, list(rows[0])

    def __iter__(self):
        return iter(self.rows)


def test_hf_source_load_failure_and_success(monkeypatch):
    fake = types.ModuleType("datasets")
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "offline":
            raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")
        rows = [{"id": i, "body": f"document {i}"} for i in range(300)]
        return FakeDataset(rows)

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    _load.cache_clear()
    with pytest.raises(TaskError) as e:
        make_task("lm", seq_len=16, source="hf:offline")
    assert "Couldn't reach the Hub" in str(e.value) and "text file" in str(e.value) and "\n" not in str(e.value)
    task = make_task("lm", seq_len=16, source="hf:someone/docs::validation")
    assert calls[-1] == ("someone/docs", None, "validation")
    joined = b"".join(f"document {i}\n".encode() for i in range(300))
    corpus = task.corpus
    assert bytes(corpus.train.tolist()) + bytes(corpus.val.tolist()) == joined  # the string column, newline-joined
    assert task.describe()["corpus"]["files"] == 300


def test_cell_options_and_training_smoke():
    from archbench import registry
    from archbench.mixers.base import MixerConfig
    from archbench.models import LM, Stack
    from archbench.tasks.train import TrainSettings, train_run

    cell = {"task": "lm", "seq_len": 32, "vocab_size": 8192, "task_args": {"lm": {"max_bytes": SMALL}}}
    task = task_from_cell(cell)  # the cell's vocab_size is not a byte LM option
    assert task.vocab_size == 256 and task.metric == "bits_per_byte" and task.default_ffn == "swiglu"
    config = MixerConfig(d_model=32, n_heads=2)
    spec = registry.get("softmax_attention")

    def build():
        return LM(Stack(config, [spec.build(config, "sdpa")], ffn=task.default_ffn), task.vocab_size)

    settings = TrainSettings(steps=20, batch_size=16, lr=1e-2, eval_every=20, train_examples=320, test_examples=32)
    result = train_run(build, task, settings, seed=0)
    assert result.steps == 20 and not result.diverged and math.isfinite(result.score)
    assert result.score < 8.5 and set(result.by_group) == {"val"} and result.exact is None
