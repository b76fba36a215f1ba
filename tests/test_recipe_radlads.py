"""RADLADS conversion: exact weight transfer, recurrent decode, the three steps, checkpoints, state size."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

pytest.importorskip("transformers")

from archbench.recipes.radlads import (  # noqa: E402
    RadladsConfig,
    RadladsError,
    alignment_loss,
    capture_attention,
    convert,
    decode_state_check,
    load_student,
    run,
    save_student,
    step1_align,
    step2_distill,
    step3_finetune,
    teacher_kv_bytes,
)
from archbench.recipes.teacher import TeacherSpec, bits_per_byte, build_teacher, corpus_task  # noqa: E402

MAX_BYTES = 200_000  # of the stdlib corpus
RECURRENT = ("rad_rwkv7", "rad_rwkv6", "rad_gdn")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def teacher():
    return build_teacher(TeacherSpec(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()


def _perturb(model, seed=1, scale=0.05):
    """Move every parameter off its initial value, so gates, decays and ICL rates depend on the data."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _ids(B=2, T=24, seed=0):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_attention_kind_reproduces_the_teacher_exactly(teacher):
    ids = _ids()
    student = convert(teacher, "attention").eval()
    with torch.no_grad():
        torch.testing.assert_close(student(ids), teacher(input_ids=ids).logits, atol=1e-5, rtol=0)
    # the recurrent students start from the teacher's projections (r = q), GQA heads repeated
    s = convert(teacher, "rad_gdn")
    a, m = teacher.model.layers[1].self_attn, s.attentions[1].mixer
    assert torch.equal(m.q_proj.weight, a.q_proj.weight) and torch.equal(m.o_proj.weight, a.o_proj.weight)
    assert torch.equal(m.k_proj.weight, a.k_proj.weight) and torch.equal(m.v_proj.weight, a.v_proj.weight)
    assert torch.equal(s.model.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert s.model.model.embed_tokens.weight is not teacher.model.embed_tokens.weight  # a copy, not shared


def test_qwen2_biases_are_copied():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)  # fmt: skip
    qwen = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        qwen.model.layers[0].self_attn.q_proj.bias.normal_()
    for kind in RECURRENT:
        m = convert(qwen, kind).attentions[0].mixer
        assert torch.equal(m.q_proj.bias, qwen.model.layers[0].self_attn.q_proj.bias)
    ids = _ids(1, 12)
    with torch.no_grad():
        torch.testing.assert_close(convert(qwen, "attention")(ids), qwen(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", RECURRENT)
def test_recurrent_decode_matches_the_parallel_forward(teacher, kind):
    student = _perturb(convert(teacher, kind)).eval()
    ids = _ids(2, 40)
    with torch.no_grad():
        full = student(ids)
        logits, state = student.prefill(ids[:, :13])  # a chunked prefill, then token by token
        torch.testing.assert_close(logits, full[:, :13], atol=1e-4, rtol=1e-4)
        steps = []
        for t in range(13, 40):
            lt, state = student.step(ids[:, t], state)
            steps.append(lt)
        torch.testing.assert_close(torch.stack(steps, 1), full[:, 13:], atol=1e-4, rtol=1e-4)
        # a prefill that continues a state equals one long prefill
        _, s1 = student.prefill(ids[:, :20])
        cont, _ = student.prefill(ids[:, 20:], s1)
        torch.testing.assert_close(cont, full[:, 20:], atol=1e-4, rtol=1e-4)


def test_decode_state_does_not_grow_while_the_teacher_cache_does(teacher):
    student = convert(teacher, "rad_rwkv7").eval()
    out = decode_state_check(student, teacher, (8, 40))
    H, D, L = 4, 8, 2
    assert out["student_state_bytes_measured_8"] == out["student_state_bytes_measured_40"] == L * H * D * D * 4
    assert student.state_bytes(1, 8) == student.state_bytes(1, 100_000) == L * H * D * D * 4
    assert out["teacher_state_bytes_measured_8"] == teacher_kv_bytes(teacher, 1, 8)
    assert (
        out["teacher_state_bytes_measured_40"]
        == teacher_kv_bytes(teacher, 1, 40)
        == 5 * teacher_kv_bytes(teacher, 1, 8)
    )
    assert out["decode_max_abs_err"] < 1e-4


def _mean(h, sl):
    return sum(r["loss"] for r in h[sl]) / len(h[sl])


def test_each_step_lowers_its_loss(teacher):
    task = corpus_task(32, MAX_BYTES)
    data = task.sample(8, 0)
    batches = itertools.repeat((data.inputs, data.labels))
    student = convert(teacher, "rad_gdn")
    h1 = step1_align(student, teacher, batches, 8, lr=1e-2, lr_min=1e-3)
    assert [r["stage"] for r in h1] == ["align"] * 8 and h1[-1]["tokens"] == 8 * 8 * 32
    assert _mean(h1, slice(-3, None)) < 0.8 * _mean(h1, slice(0, 3))
    h2 = step2_distill(student, teacher, batches, 8, lr=3e-3)
    assert _mean(h2, slice(-3, None)) < 0.8 * _mean(h2, slice(0, 3))
    h3 = step3_finetune(student, teacher, batches, 8, lr=3e-3)
    assert _mean(h3, slice(-3, None)) < _mean(h3, slice(0, 3))
    # step 1 teacher only the mixers: the MLPs are still the teacher's... until step 2 trains everything
    fresh = convert(teacher, "rad_gdn")
    step1_align(fresh, teacher, batches, 2, lr=1e-2)
    assert torch.equal(fresh.model.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(
        fresh.attentions[0].mixer.a_proj.weight, convert(teacher, "rad_gdn").attentions[0].mixer.a_proj.weight
    )
    # the alignment loss is 0 for the teacher's own attention
    ids = data.inputs[:2]
    assert float(alignment_loss(convert(teacher, "attention"), capture_attention(teacher, ids))) == 0.0


def test_checkpoint_reloads_to_identical_outputs(teacher, tmp_path):
    for kind in ("rad_rwkv7", "attention"):
        student = _perturb(convert(teacher, kind)).eval()
        save_student(student, tmp_path / kind, RadladsConfig(kind=kind))
        again = load_student(tmp_path / kind)
        ids = _ids()
        with torch.no_grad():
            assert torch.equal(student(ids), again(ids))


def test_run_writes_rows_losses_and_a_reloadable_student(teacher, tmp_path):
    teacher.save_pretrained(tmp_path / "teacher")  # a local teacher directory (no pre-training in the tests)
    cfg = RadladsConfig(kind="rad_rwkv6", teacher=str(tmp_path / "teacher"), max_bytes=MAX_BYTES, seq_len=32, batch_size=4, step1_tokens=3 * 128,
                        step2_tokens=2 * 128, step3_tokens=2 * 4 * 48, step3_seq_len=48, lr2=1e-3, eval_windows=4,
                        eval_batch=4, state_contexts=(32, 4096), decode_contexts=(4, 12), speed_contexts=(24,))  # fmt: skip
    seen = []
    summary = run(cfg, tmp_path / "out", progress=seen.append)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["teacher", "student:rad_rwkv6"]
    t, s = rows
    assert all(r["recipe"] == "radlads" and r["status"] == "ok" for r in rows)
    assert t["state_bytes_4096"] == 128 * t["state_bytes_32"] and s["state_bytes_4096"] == s["state_bytes_32"]
    assert s["state_bytes_measured_4"] == s["state_bytes_measured_12"] == s["state_bytes_32"]
    assert t["state_bytes_measured_12"] == 3 * t["state_bytes_measured_4"] > 0
    assert s["tokens"] == 3 * 128 + 2 * 128 + 2 * 4 * 48 and 0 <= s["top1_agreement"] <= 1 and s["kl"] >= 0
    for r in rows:  # prefill and decode measured with archbench's timer, teacher and student alike
        assert r["prefill_s_24"] > 0 and r["decode_s_per_token_24"] > 0 and r["decode_peak_mem_bytes_24"] >= 0
    assert s["decode_speedup_24"] == pytest.approx(t["decode_s_per_token_24"] / s["decode_s_per_token_24"])
    for r in rows:  # zero-shot recall probes, teacher and student alike (windows of at least 64 bytes)
        assert r["probe_seq_len"] == 64 and all(0 <= r[f"probe_{p}_acc"] <= 1 for p in ("mqar", "passkey", "copy"))
    losses = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in losses] == ["align"] * 3 + ["distill"] * 2 + ["finetune"] * 2
    assert len(seen) == 7 and summary["bpb_ratio"] == pytest.approx(s["bits_per_byte"] / t["bits_per_byte"])
    assert json.loads((out / "run.json").read_text())["config"]["kind"] == "rad_rwkv6"
    student = load_student(out)
    task = corpus_task(32, MAX_BYTES)
    assert bits_per_byte(student, task, n_windows=4, batch_size=4) == pytest.approx(s["bits_per_byte"], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "mamba"}, "kind must be one of"),
        ({"lr1": 0}, "lr1 must be > 0"),
        ({"step2_tokens": -1}, "step2_tokens must be >= 0"),
        ({"lr1_min": 1.0}, "lr1_min must be <= lr1"),
        ({"decode_contexts": (8, 4)}, "decode_contexts must be two increasing"),
        ({"teacher": ""}, "teacher must be"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_config_errors_are_one_line(kwargs, match):
    with pytest.raises(RadladsError, match=match) as e:
        RadladsConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_teacher_and_missing_checkpoint_are_one_line(tmp_path):
    with pytest.raises(RadladsError, match="no student.json"):
        load_student(tmp_path)
    with pytest.raises(RadladsError, match="not a Llama/Qwen2-style") as e:
        convert(torch.nn.Linear(2, 2), "rad_gdn")
    assert "\n" not in str(e.value)
