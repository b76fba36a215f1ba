"""Real checkpoints as cells (``level: checkpoint``) on tiny random models saved here: speed modes,
which implementation each mixer takes, bits per byte with bytes-per-token accounting, a local
lm-eval task, one-line errors for bad input, the suite's checks, real teachers for the recipes,
and a whole suite run offline through the CLI. Nothing is downloaded (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from archbench import checkpoint, hf_paths  # noqa: E402
from archbench.bench import run_cell  # noqa: E402
from archbench.quality import bits_per_byte  # noqa: E402
from archbench.suite import SuiteError, parse_suite  # noqa: E402
from archbench.run.worker import classify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "lm_eval_tasks"
MEASURE = dict(warmup=1, min_repeats=2, max_repeats=3, budget_s=0.05, target_rel_iqr=0.05, energy=False,
               energy_window_s=0.1, decode_tokens=4, flush_l2=False, roofline=False)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _offline(one_thread):
    """No network for the hub, one intra-op thread for tiny models."""
    import huggingface_hub.constants as hub

    before, flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True  # read once at import: set it here too, for this process
    yield
    hub.HF_HUB_OFFLINE = flag
    if before is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = before


@pytest.fixture(scope="module")
def tokenizer():
    """A 300-symbol byte-level BPE trained on a slice of the stdlib corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from archbench.tasks.corpus import ByteLM

    text = bytes(ByteLM(seq_len=2, max_bytes=60_000).corpus.train.tolist()).decode("utf-8", errors="replace")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text[i : i + 4096] for i in range(0, len(text), 4096)],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _save(path: Path, model, tokenizer=None) -> str:
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """Tiny random checkpoints: Llama and Qwen2 (GQA, tied embeddings), Mamba, Mamba2, a hybrid
    (Granite-4.0-H: Mamba2 + attention), a byte-level Llama without a tokenizer, and bad ones."""
    import transformers as tf

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    V, eos = len(tokenizer), tokenizer.eos_token_id
    common = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, eos_token_id=eos, tie_word_embeddings=True)
    attn = dict(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    out = {
        "llama": _save(root / "llama", tf.LlamaForCausalLM(tf.LlamaConfig(**common, **attn)), tokenizer),
        "qwen2": _save(root / "qwen2", tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, **attn)), tokenizer),
        "mamba": _save(root / "mamba", tf.MambaForCausalLM(tf.MambaConfig(**common, state_size=8, expand=2)), tokenizer),
        "mamba2": _save(root / "mamba2", tf.Mamba2ForCausalLM(tf.Mamba2Config(
            **common, state_size=8, expand=2, head_dim=8, num_heads=8, n_groups=1, chunk_size=8)), tokenizer),  # fmt: skip
        "hybrid": _save(root / "granite-h", tf.GraniteMoeHybridForCausalLM(tf.GraniteMoeHybridConfig(
            **common, intermediate_size=32, shared_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=2, num_experts_per_tok=1, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8,
            mamba_chunk_size=8, layer_types=["mamba", "attention"])), tokenizer),  # fmt: skip
        "bytes": _save(root / "bytes", tf.LlamaForCausalLM(tf.LlamaConfig(**{**common, "vocab_size": 256}, **attn))),
        "no_tokenizer": _save(root / "no-tokenizer", tf.LlamaForCausalLM(tf.LlamaConfig(**common, **attn))),
    }
    (root / "empty").mkdir()
    out["no_config"] = str(root / "empty")
    (root / "alien").mkdir()
    (root / "alien" / "config.json").write_text(json.dumps({"model_type": "not_a_real_model", "hidden_size": 8}))
    out["unknown"] = str(root / "alien")
    return out


def _cell(model: str, mode: str, **kw) -> dict:
    cell = dict(arch="checkpoint", backend="transformers", level="checkpoint", n_layers=2, vocab_size=256, mode=mode,
                dtype="float32", device="cpu", batch=2, seq_len=24, d_model=256, n_heads=4, head_dim=None,
                n_kv_heads=None, chunk_size=64, d_state=None, expand=2, conv_size=4, window=None, block_size=64,
                block_count=16, threads=None, seed=0, model=model, trust_remote_code=False, eval_task=None,
                measure=MEASURE, quality=dict(text="stdlib", max_bytes=200_000, max_windows=4))  # fmt: skip
    cell.update(kw)
    return cell


# ---- speed modes and implementations --------------------------------------------------------------

EXPECTED = {  # model -> (config architecture, family, mixer classes and the path each takes on a CPU)
    "llama": ("LlamaForCausalLM", "full/softmax", {"LlamaAttention": "sdpa"}),
    "mamba": ("MambaForCausalLM", "ssm/selective", {"MambaMixer": "torch"}),
    "mamba2": ("Mamba2ForCausalLM", "ssm/ssd", {"Mamba2Mixer": "torch"}),
    "hybrid": ("GraniteMoeHybridForCausalLM", "hybrid/inter-layer",
               {"GraniteMoeHybridMambaLayer": "torch", "GraniteMoeHybridAttention": "sdpa"}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECTED))
def test_checkpoint_cells_time_prefill_and_decode_and_record_the_model(models, name):
    arch, family, mixers = EXPECTED[name]
    prefill = run_cell(_cell(models[name], "prefill"))
    decode = run_cell(_cell(models[name], "decode"))
    lm, _ = checkpoint.load_model(models[name])
    for row in (prefill, decode):
        assert row["time_median_s"] > 0 and row["tokens_per_s"] > 0
        assert row["model_architecture"] == arch and row["family"] == family and row["trust_remote_code"] is False
        assert row["params"] == sum(p.numel() for p in lm.parameters()) and row["state_bytes"] > 0
        assert {e["mixer"]: e["path"] for e in row["implementations"]} == mixers
        assert sum(e["layers"] for e in row["implementations"]) >= 2
    assert decode["decode_tokens"] == 4 and decode["latency_per_token_s"] > 0
    for e in prefill["implementations"]:  # a torch fallback says why, per kernel-backed function
        if e["path"] == "torch":
            assert e["functions"] and all(p.startswith("torch (") for p in e["functions"].values())


def test_fwd_bwd_and_tied_embeddings(models):
    row = run_cell(_cell(models["llama"], "fwd_bwd"))
    assert row["time_median_s"] > 0 and row["tied_embeddings"] is True
    lm, facts = checkpoint.load_model(models["llama"])
    assert facts["params_non_embedding"] == facts["params"] - lm.get_input_embeddings().weight.numel()


def test_a_present_package_is_named_and_a_cpu_input_falls_back(monkeypatch):
    """The provider logic on the wrapper's facts: package where it runs, torch where it cannot."""
    impl, torch_fn = object(), object()
    facts = {"package": "mamba_ssm", "implementation": impl, "torch_function": torch_fn, "supported_devices": ("cuda",)}
    assert hf_paths._provider(facts, "cuda", False) == "mamba_ssm"
    assert hf_paths._provider(facts, "cpu", False) == "torch (mamba_ssm has no cpu kernels)"
    assert hf_paths._provider({**facts, "implementation": torch_fn}, "cuda", False) == "torch (mamba_ssm not importable)"
    assert hf_paths._provider(facts, "cpu", True) == "hub kernels"


def test_eager_backend_is_recorded(models):
    row = run_cell(_cell(models["llama"], "prefill", backend="eager"))
    assert row["implementation"] == "LlamaAttention x2: eager" and row["attn_implementation"] == "eager"


# ---- quality --------------------------------------------------------------------------------------


def test_bits_per_byte_accounts_bytes_per_token():
    ids = torch.randint(0, 50, (101,))
    uniform = lambda x: torch.zeros(*x.shape, 50)  # noqa: E731 - log2(50) bits per token
    out = bits_per_byte(uniform, ids, n_bytes=303, seq_len=10, batch_size=3)
    assert out["tokens_scored"] == 100 and out["windows"] == 10  # every token after the first, once
    assert out["bytes_per_token"] == pytest.approx(3.0)
    assert out["bits_per_token"] == pytest.approx(math.log2(50)) and out["perplexity"] == pytest.approx(50.0)
    assert out["bits_per_byte"] == pytest.approx(math.log2(50) / 3.0)
    few = bits_per_byte(uniform, ids, n_bytes=303, seq_len=10, max_windows=4)
    assert few["windows"] == 4 and few["tokens_scored"] == 40


def test_bpb_on_a_tokenised_and_a_byte_level_checkpoint(models, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 40)
    row = run_cell(_cell(models["llama"], "bpb", quality=dict(text=str(text), max_bytes=10_000, max_windows=None)))
    assert row["text_bytes"] == text.stat().st_size and row["bytes_per_token"] == row["text_bytes"] / row["text_tokens"]
    V = row["model_vocab_size"]
    assert 0 < row["bits_per_byte"] < 1.5 * math.log2(V) / row["bytes_per_token"]
    assert row["bits_per_byte"] == pytest.approx(row["bits_per_token"] / row["bytes_per_token"])
    assert row["tokens_scored"] == row["text_tokens"] - 1
    raw = run_cell(_cell(models["bytes"], "bpb"))  # vocabulary 256, no tokenizer: bytes are the ids
    assert raw["bytes_per_token"] == 1.0 and raw["text"] == "stdlib" and 0 < raw["bits_per_byte"] < 12


def test_lm_eval_on_a_local_task(models, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    row = run_cell(_cell(models["llama"], "lm_eval", eval_task="archbench_tiny_choice",
                         quality=dict(limit=4, include_path=str(TASKS))))  # fmt: skip
    assert row["eval_task"] == "archbench_tiny_choice" and row["eval_metric"] == "acc" and row["eval_limit"] == 4
    assert 0.0 <= row["accuracy"] <= 1.0 and row["eval_stderr"] is not None and row["eval_n_samples"] == 4
    assert row["model_architecture"] == "LlamaForCausalLM"


def test_lm_eval_unknown_task_is_one_line(models):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    status, text = _status(_cell(models["llama"], "lm_eval", eval_task="no_such_task_here",
                                 quality=dict(limit=2, include_path=str(TASKS))))  # fmt: skip
    assert status == "unsupported" and "no task 'no_such_task_here'" in text and "\n" not in text


# ---- bad input: one line each, as a row ------------------------------------------------------------


def _status(cell: dict) -> tuple[str, str]:
    try:
        run_cell(cell)
    except BaseException as e:  # noqa: BLE001 - classified as the worker does
        return classify(e)
    return "ok", ""


@pytest.mark.parametrize("case, status, needle", [
    ("no_config", "unsupported", "has no config.json"),
    ("unknown", "unsupported", "does not know architecture 'not_a_real_model'"),
    ("hub", "unsupported", "pass the local path"),
    ("missing", "unsupported", "no such directory"),
])  # fmt: skip
def test_bad_checkpoints_are_one_line_rows(models, case, status, needle):
    model = {"hub": "nobody-here/no-such-model", "missing": "./no/such/dir"}.get(case) or models[case]
    got, text = _status(_cell(model, "prefill"))
    assert got == status and needle in text and "\n" not in text


def test_missing_tokenizer_is_one_line(models):
    got, text = _status(_cell(models["no_tokenizer"], "bpb"))
    assert got == "unsupported" and "no tokenizer" in text and "save_pretrained" in text


def test_a_model_too_large_is_an_oom_row(models, monkeypatch):
    monkeypatch.setattr(checkpoint, "free_bytes", lambda device: 1000)
    got, text = _status(_cell(models["llama"], "prefill"))
    assert got == "oom" and "needs" in text and "GiB" in text


# ---- the suite ------------------------------------------------------------------------------------


def _suite(**over) -> dict:
    raw = {"name": "ckpt", "defaults": {"level": "checkpoint", "measure": MEASURE, "seq_len": 16},
           "sweep": {"arch": "checkpoint", "model": ["org/model-a"], "mode": ["prefill", "decode", "bpb"]}}  # fmt: skip
    for k, v in over.items():
        raw[k].update(v)
    return raw


def test_checkpoint_suite_expands_with_distinct_keys():
    cells = parse_suite(_suite(sweep={"model": ["org/a", "org/b"]})).cells()
    assert len(cells) == 6 and len({c.key for c in cells}) == 6
    bpb = [c for c in cells if c.mode == "bpb"]
    assert bpb[0].quality.text == "stdlib" and all(c.quality is None for c in cells if c.mode != "bpb")
    other = parse_suite(_suite(defaults={"quality": {"text": "README.md"}})).cells()
    assert {c.key for c in other if c.mode == "bpb"}.isdisjoint(c.key for c in bpb)  # the text is in the key
    ident = parse_suite({"name": "m", "sweep": {"arch": "linear_attention"}}).cells()[0].identity()
    assert not {"model", "trust_remote_code", "eval_task"} & set(ident)  # other cells' keys are unchanged


@pytest.mark.parametrize("over, needle", [
    ({"defaults": {"level": "model"}}, "arch: checkpoint with level: checkpoint"),
    ({"sweep": {"model": None}}, "needs model"),
    ({"sweep": {"model": "./not/here"}}, "no such directory"),
    ({"sweep": {"mode": "lm_eval"}}, "needs eval_task"),
    ({"sweep": {"mode": "task", "task": "mqar"}}, "not task"),
])  # fmt: skip
def test_bad_checkpoint_suites_fail_in_one_line(over, needle):
    raw = _suite(**over)
    raw["sweep"] = {k: v for k, v in raw["sweep"].items() if v is not None}
    with pytest.raises(SuiteError, match=needle) as e:
        parse_suite(raw)
    assert "\n" not in str(e.value)


def test_quality_modes_need_a_checkpoint():
    with pytest.raises(SuiteError, match="scores a pretrained model"):
        parse_suite({"name": "x", "sweep": {"arch": "linear_attention", "mode": "bpb"}})


def test_shipped_checkpoint_suites_parse():
    for name in ("checkpoints.yaml",):
        cells = parse_suite(__import__("yaml").safe_load((ROOT / "suites" / name).read_text()), name).cells()
        assert any(c.mode == "bpb" for c in cells) and any(c.mode == "lm_eval" for c in cells)


# ---- real teachers -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_real_teachers_load_with_gqa_tied_embeddings_and_their_tokenizer(models, family):
    from archbench.recipes.teacher import corpus_task, load_teacher, teacher_dtype, teacher_tokenizer

    teacher = load_teacher(models[family])
    cfg = teacher.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads and teacher.lm_head.weight is teacher.get_input_embeddings().weight
    assert next(teacher.parameters()).dtype == torch.float32 and teacher_dtype("cuda:0") == "bfloat16"
    tok = teacher_tokenizer(teacher, models[family])
    task = corpus_task(16, 60_000, tok)
    assert task.vocab_size == len(tok) and task.bytes_per_token > 1
    half = load_teacher(models[family], device="cpu", dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_teacher_errors_are_recipe_errors(models):
    from archbench.recipes import RecipeError
    from archbench.recipes.teacher import load_teacher

    for source, needle in ((models["no_config"], "config.json"), ("nobody-here/no-such-model", "pass the local path")):
        with pytest.raises(RecipeError, match=needle):
            load_teacher(source)


# ---- a whole suite, offline, through the CLI -------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_suite_runs_offline_end_to_end(models, tmp_path, cli_env):
    """Prefill, decode and bpb of two saved models, the local lm-eval task, and a hub id without a
    network (an unsupported row that says to pass a local path): the sweep goes on."""
    lm_eval = all(__import__("importlib").util.find_spec(m) for m in ("lm_eval", "accelerate"))
    suite = {
        "name": "ckpt-e2e",
        "defaults": {"level": "checkpoint", "seq_len": 16, "batch": 1, "timeout_s": 240, "measure": MEASURE,
                     "eval_task": "archbench_tiny_choice",
                     "quality": {"max_bytes": 200_000, "max_windows": 4, "limit": 4, "include_path": str(TASKS)}},
        "sweep": {"arch": "checkpoint", "model": [models["llama"], models["mamba2"], "nobody-here/no-such-model"],
                  "mode": ["prefill", "decode", "bpb"] + (["lm_eval"] if lm_eval else [])},
        "exclude": [{"mode": "lm_eval", "model": [models["mamba2"], "nobody-here/no-such-model"]}],
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(suite))
    out = tmp_path / "run"
    env = {**cli_env, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "archbench.cli", "run", str(path), "--out", str(out), "--no-report"],
                       capture_output=True, text=True, timeout=500, cwd=ROOT, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    by = {(Path(r["model"]).name, r["mode"]): r for r in rows}
    for name in ("llama", "mamba2"):
        for mode in ("prefill", "decode"):
            assert by[(name, mode)]["status"] == "ok" and by[(name, mode)]["tokens_per_s"] > 0
        assert by[(name, "bpb")]["status"] == "ok" and by[(name, "bpb")]["bits_per_byte"] > 0
    hub = [r for r in rows if r["model"] == "nobody-here/no-such-model"]
    assert len(hub) == 3 and all(r["status"] == "unsupported" and "pass the local path" in r["error"] for r in hub)
    if lm_eval:
        assert by[("llama", "lm_eval")]["status"] == "ok" and by[("llama", "lm_eval")]["eval_metric"] == "acc"
