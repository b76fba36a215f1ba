"""Tokenised (non-byte) teachers in the recipes: the corpus through the teacher's own tokenizer
(``archbench.recipes.tokenized``), bits per byte converted from bits per token, and RADLADS and
RAD end to end on a tiny Llama with a BPE tokenizer trained here on the same corpus."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from archbench.recipes.teacher import bits_per_byte, corpus_task  # noqa: E402
from archbench.tasks.corpus import ByteLM  # noqa: E402

MAX_BYTES = 200_000


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def tokenizer():
    """A 400-symbol byte-level BPE trained on the corpus' training split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = bytes(ByteLM(seq_len=2, max_bytes=MAX_BYTES).corpus.train.tolist()).decode("utf-8", errors="replace")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text[i : i + 4096] for i in range(0, len(text), 4096)],
                            trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)  # fmt: skip
    path = tmp_path_factory.mktemp("bpe-teacher")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_corpus_in_tokens_keeps_the_byte_split(tokenizer):
    task = corpus_task(32, MAX_BYTES, tokenizer)
    data = ByteLM(seq_len=2, max_bytes=MAX_BYTES).corpus
    assert task.vocab_size == len(tokenizer) and 1.5 < task.bytes_per_token < 8
    assert task.bytes_per_token == data.val.numel() / task.val.numel()
    assert tokenizer.decode(task.val[:200].tolist()) == bytes(data.val.tolist()).decode()[: len(tokenizer.decode(task.val[:200].tolist()))]
    batch = task.sample(8, seed=0)
    assert batch.inputs.shape == (8, 32) and torch.equal(batch.inputs[:, 1:], batch.labels[:, :-1])
    assert int(batch.inputs.max()) < task.vocab_size
    assert torch.equal(task.eval_sets(4, 0)["val"].inputs, task.eval_sets(4, 9)["val"].inputs)  # seed-independent


def test_bits_per_byte_converts_from_bits_per_token(tokenizer):
    task = corpus_task(16, MAX_BYTES, tokenizer)
    uniform = lambda ids: torch.zeros(*ids.shape, task.vocab_size)  # noqa: E731 - log2(V) bits per token
    bpb = bits_per_byte(uniform, task, n_windows=4, batch_size=4)
    assert bpb == pytest.approx(math.log2(task.vocab_size) / task.bytes_per_token, rel=1e-5)
    assert bits_per_byte(lambda ids: torch.zeros(*ids.shape, 256), corpus_task(16, MAX_BYTES), 4, 4) == pytest.approx(8.0)


def test_radlads_converts_a_tokenised_teacher(teacher_dir, tmp_path):
    from archbench.recipes.radlads import RadladsConfig, run

    cfg = RadladsConfig(kind="rad_gdn", teacher=str(teacher_dir), max_bytes=MAX_BYTES, seq_len=32, batch_size=4,
                        step1_tokens=2 * 128, step2_tokens=2 * 128, eval_windows=4, eval_batch=4,
                        decode_contexts=(4, 12), speed_contexts=(16,))  # fmt: skip
    run(cfg, tmp_path / "out")
    t, s = [json.loads(x) for x in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    for r in (t, s):
        assert r["vocab_size"] == 400 and r["tokenizer"] not in ("bytes", None)  # its class name varies by version
        assert 0 < r["bits_per_byte"] < 20 and "probe_skipped" in r and "probe_mqar_acc" not in r
    assert s["state_bytes_measured_4"] == s["state_bytes_measured_12"] > 0 and s["decode_s_per_token_16"] > 0


def test_rad_converts_a_tokenised_teacher(teacher_dir, tmp_path):
    from archbench.recipes.redundancy import RedundancyConfig, run

    cfg = RedundancyConfig(teacher=str(teacher_dir), k=1, n_prompts=2, prompt_len=24, new_tokens=4, bo_budget=2,
                           bo_init=1, seq_len=32, max_bytes=MAX_BYTES, steps=2, batch_size=4, eval_windows=4,
                           decode_contexts=(4, 12), speed_contexts=(16,), compare_uniform=False)  # fmt: skip
    run(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["teacher", "student_rad"]
    assert all(0 < r["bits_per_byte"] < 20 and "probe_skipped" in r for r in rows)
    assert rows[1]["ssm_bytes_12"] == rows[1]["ssm_bytes_4"] > 0


def test_the_bridge_takes_a_tokenised_teacher(teacher_dir, tmp_path):
    """The small model reads the teacher's token ids, scores are in bits per byte, generated text is
    decoded with the tokenizer, the byte-level probes are skipped, and students reload."""
    from archbench.recipes.bridge import BridgeConfig, load_student, run

    cfg = BridgeConfig(teacher=str(teacher_dir), student_d_model=16, student_layers=1, student_heads=2,
                       student_kv_heads=1, n_heads=2, steps=3, batch_size=4, seq_len=24, max_bytes=MAX_BYTES,
                       eval_windows=2, eval_batch=2, gen_prompts=1, prompt_len=6, gen_len=3, speed_contexts=(12,),
                       probe_examples=4)  # fmt: skip
    run(cfg, tmp_path / "out")
    rows = {r["model"]: r for r in map(json.loads, (tmp_path / "out" / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"teacher", "bridge-causal", "bridge-noncausal", "distill"}
    task = corpus_task(24, MAX_BYTES, load_tokenizer_of(teacher_dir))
    for r in rows.values():
        assert "probe_skipped" in r and "probe_mqar_acc" not in r
        assert isinstance(r["gen_sample"], str) and r["prefill_s_12"] > 0
    # an untrained 400-symbol model is near log2(400) bits per token, i.e. that over bytes_per_token per byte
    untrained = math.log2(400) / task.bytes_per_token
    assert 0.5 * untrained < rows["distill"]["tf_bpb"] < 1.5 * untrained
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["vocab_size"] == 400 and meta["bytes_per_token"] == pytest.approx(task.bytes_per_token)
    student = load_student(tmp_path / "out", "distill")
    ids = torch.randint(0, 400, (1, 10))
    assert student(ids).shape == (1, 10, 400)


def load_tokenizer_of(path):
    from archbench.recipes.tokenized import load_tokenizer

    return load_tokenizer(str(path))


def test_a_non_byte_teacher_without_a_tokenizer_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from archbench.recipes.radlads import RadladsConfig, run
    from archbench.tasks.base import TaskError

    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "t")
    with pytest.raises(TaskError, match="no tokenizer loads from there") as err:
        run(RadladsConfig(teacher=str(tmp_path / "t"), max_bytes=MAX_BYTES, seq_len=32), tmp_path / "out")
    assert "\n" not in str(err.value)
