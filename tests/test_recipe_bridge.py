"""Cross-attention knowledge transfer (LLM Modules): the bridge's mask, gate, training, the leak
measurement, checkpoints and config errors, on tiny byte-level Llamas."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from archbench.recipes.bridge import (  # noqa: E402
    BridgeConfig,
    BridgeError,
    GatedCrossLayer,
    build_student,
    leak_scores,
    load_student,
    run,
)
from archbench.recipes.teacher import TeacherSpec, build_teacher, corpus_task, default_teacher  # noqa: E402

TINY = TeacherSpec(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, seq_len=32, steps=30, batch_size=16, lr=3e-3,
                   max_bytes=200_000)  # fmt: skip
SMALL = dict(teacher_spec=TINY, student_d_model=32, student_layers=1, student_heads=2, student_kv_heads=1, n_heads=4,
             steps=40, batch_size=8, seq_len=32, lr=3e-3, max_bytes=200_000, eval_windows=8, eval_batch=8,
             gen_prompts=2, prompt_len=8, gen_len=8, speed_contexts=(16,))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run of every variant against a briefly trained tiny teacher (cached in a temp dir)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARCHBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        out = tmp_path_factory.mktemp("bridge-run")
        result = run(BridgeConfig(**SMALL), out)
        big, _ = default_teacher(TINY)
        yield out, result, big


def test_causal_bridge_cannot_see_future_and_published_one_does():
    big = build_teacher(TINY).eval()
    config = BridgeConfig(**SMALL)
    causal, leaky = build_student(config, "causal", big).eval(), build_student(config, "noncausal", big).eval()
    for (k, a), (k2, b) in zip(causal.state_dict().items(), leaky.state_dict().items()):
        assert k == k2 and torch.equal(a, b)  # same weights: the mask is the only difference
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    t = 5
    changed = ids.clone()
    changed[:, t + 1] = (ids[:, t + 1] + 1) % 256
    with torch.no_grad():
        c1, c2 = causal(ids), causal(changed)
        n1, n2 = leaky(ids), leaky(changed)
    torch.testing.assert_close(c1[:, : t + 1], c2[:, : t + 1], rtol=0, atol=1e-6)
    assert (c1[:, t + 1] - c2[:, t + 1]).abs().max() > 1e-4  # the change itself is visible where it belongs
    assert (n1[:, : t + 1] - n2[:, : t + 1]).abs().amax(dim=-1).min() > 1e-5  # every earlier position sees it


def test_gate_mixes_attended_value_and_stream_as_stated():
    torch.manual_seed(0)
    layer = GatedCrossLayer(d_big=8, d_small=6, n_heads=2, adapter_ratio=1 / 3, causal=True)
    h, a, big = torch.randn(2, 4, 6), torch.randn(2, 4, 6), torch.randn(2, 4, 8)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(1e4)  # g = 1
        assert torch.equal(layer.mix(h, a), a)
        torch.testing.assert_close(layer(h, big), layer.adapter(layer.attn(h, big)))
        layer.gate.bias.fill_(-1e4)  # g = 0
        assert torch.equal(layer.mix(h, a), h)
        torch.testing.assert_close(layer(h, big), h)
        layer.gate.bias.zero_()  # g = 1/2
        torch.testing.assert_close(layer.mix(h, a), (a + h) / 2)
        layer.gate.bias[:3] = 1e4  # per channel: the first three take a, the rest the mean
        torch.testing.assert_close(layer.mix(h, a), torch.cat([a[..., :3], (a + h)[..., 3:] / 2], -1))


def test_leak_measurement_exposes_a_model_that_reads_the_future():
    ids = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(1))
    inputs, labels = ids[:, :-1], ids[:, 1:]

    def cheat(x):  # predicts byte t+1 by reading it from the input when it is there
        logits = torch.zeros(*x.shape, 256)
        logits[:, :-1].scatter_(-1, x[:, 1:, None], 30.0)
        return logits

    def honest(x):  # a causal model: a function of the current byte only
        return torch.nn.functional.one_hot(x, 256).float() * 3.0

    s = leak_scores(cheat, inputs, labels)
    assert s["tf_bpb"] < 1.0 and s["tf_acc"] > 0.85 and s["prefix_bpb"] == pytest.approx(8.0)
    assert s["gap_bpb"] > 6.0
    h = leak_scores(honest, inputs, labels)
    assert h["gap_bpb"] == pytest.approx(0.0, abs=1e-5) and h["tf_acc"] == h["prefix_acc"]


def test_training_losses_decrease_for_bridges_and_distillation(trained):
    out, _, _ = trained
    history = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    for variant in ("noncausal", "causal", "distill"):
        losses = [h["loss"] for h in history if h["variant"] == variant]
        assert len(losses) == SMALL["steps"]
        assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, variant


def test_rows_record_equal_tokens_and_no_gap_for_causal_models(trained):
    out, result, _ = trained
    rows = {r["model"]: r for r in (json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"teacher", "bridge-noncausal", "bridge-causal", "distill"}
    tokens = SMALL["steps"] * SMALL["batch_size"] * SMALL["seq_len"]
    for name in ("bridge-noncausal", "bridge-causal", "distill"):
        r = rows[name]
        assert r["recipe"] == "bridge" and r["status"] == "ok" and r["tokens"] == tokens and r["wall_s"] > 0
        assert 0.0 <= r["gen_agree"] <= 1.0 and r["gen_teacher_bpb"] > 0
    for name in ("teacher", "bridge-causal", "distill"):  # causal: prefix-only equals teacher-forced
        assert abs(rows[name]["gap_bpb"]) < 1e-4, name
    assert abs(rows["bridge-noncausal"]["gap_bpb"]) > 1e-5  # the published bridge's outputs move with the future
    assert rows["bridge-causal"]["params_inference"] > rows["teacher"]["params_inference"]
    assert all(r["prefill_s_16"] > 0 and r["prefill_peak_mem_bytes_16"] >= 0 for r in rows.values())
    assert all(0 <= r["probe_passkey_acc"] <= 1 and r["probe_n"] == 64 for r in rows.values())  # recall probes
    assert result["models"]["bridge-causal"]["tf_bpb"] == rows["bridge-causal"]["tf_bpb"]
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["variants"] == ["noncausal", "causal", "distill"] and "finished" in meta


def test_checkpoints_reload_to_identical_outputs(trained):
    out, _, big = trained
    rows = {r["model"]: r for r in (json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines())}
    data = corpus_task(SMALL["seq_len"], SMALL["max_bytes"]).eval_sets(SMALL["eval_windows"], 0)["val"]
    ids = data.inputs[:2]
    for variant, name in (("noncausal", "bridge-noncausal"), ("causal", "bridge-causal"), ("distill", "distill")):
        model = load_student(out, variant, teacher=big)
        with torch.no_grad():
            tf = torch.nn.functional.cross_entropy(model(data.inputs).flatten(0, 1), data.labels.flatten())
        assert float(tf) / 0.6931471805599453 == pytest.approx(rows[name]["tf_bpb"], rel=1e-6), variant
        again = load_student(out, variant)
        with torch.no_grad():
            assert torch.equal(model(ids), again(ids)), variant  # the second load finds the teacher in the cache
    with pytest.raises(BridgeError, match="no student 'bogus'"):
        load_student(out, "bogus")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variants": ("causal", "lora")}, "variants must be distinct names"),
        ({"variants": ()}, "variants must be distinct names"),
        ({"student_d_model": 30, "n_heads": 8}, r"n_heads \(8\) must divide student_d_model \(30\)"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"prompt_len": 100, "gen_len": 64, "seq_len": 128}, "prompt_len \\+ gen_len"),
        ({"student_heads": 3}, "student_heads"),
        ({"speed_contexts": [0]}, "speed_contexts must be positive"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(BridgeError, match=message) as err:
        BridgeConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_a_non_byte_teacher_without_a_tokenizer_is_refused(tmp_path):
    """Tokenised teachers are taken through their saved tokenizer (tests/test_recipe_tokenized.py);
    without one, the error says what to do, in one line."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from archbench.tasks.base import TaskError

    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "t")
    with pytest.raises(TaskError, match="no tokenizer loads from there") as err:
        run(BridgeConfig(**{**SMALL, "teacher": str(tmp_path / "t")}), tmp_path / "out")
    assert "\n" not in str(err.value)
