"""The report's views of real checkpoints and recipes, and the device's memory capacity:
quality beside speed per model (joined only within one device model and dtype) with its Pareto
views, the curated recipe tables on the committed CPU recipe rows, and the capacity line on
the peak-memory figure."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from archbench import store
from archbench.measure.env import collect_env, device_memory_bytes
from archbench.report import render_html, render_markdown
from archbench.report.figures import build_figures
from archbench.report.rows import model_labels, prepare
from archbench.report.quality import checkpoint_groups, figures, table
from archbench.report.recipes import curated_table, recipe_tables, recipes_section

ROOT = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"
MAMBA, SMOL, LFM = "state-spaces/mamba-130m-hf", "HuggingFaceTB/SmolLM2-135M", "/data/ckpt/lfm2"
# model -> (architecture, family, params, bits per byte, piqa acc_norm, prefill tokens/s, state bytes at T=512)
MODELS = {
    MAMBA: ("MambaForCausalLM", "ssm/selective", 1.3e8, 1.10, 0.62, 9000, 4e4),
    SMOL: ("LlamaForCausalLM", "full/softmax", 1.35e8, 1.00, 0.66, 12000, 4e6),
    LFM: ("Lfm2ForCausalLM", "hybrid/inter-layer", 3.5e8, 0.95, 0.70, 6000, 1e6),
}


def ckpt_rows(device_name: str = "NVIDIA H100 80GB HBM3", dtype: str = "bfloat16", device: str = "cuda",
              models=MODELS) -> pd.DataFrame:  # fmt: skip
    """What a checkpoints suite writes: prefill and decode at T=512 and 2048, bpb, two lm_eval tasks."""
    rows = []
    for m, (arch, fam, params, bpb, acc, tps, state) in models.items():
        grows = "Llama" in arch  # the KV cache grows with T; the recurrent and hybrid states (here) do not
        base = dict(run_id="r", suite="checkpoints", arch="checkpoint", backend="transformers", level="checkpoint",
                    model=m, model_architecture=arch, family=fam, params=params, dtype=dtype, device=device,
                    env_device_name=device_name, batch=1, status="ok", implementation=f"{arch[:5]}Mixer x2: torch")
        for T in (512, 2048):
            s = state * T / 512 if grows else state
            rows.append(dict(base, key=f"{m}-p{T}", mode="prefill", seq_len=T, time_median_s=T / tps, tokens_per_s=tps,
                             state_bytes=s, time_rel_iqr=0.02))
            rows.append(dict(base, key=f"{m}-d{T}", mode="decode", seq_len=T, time_median_s=0.032, decode_tokens=32,
                             latency_per_token_s=1e-3 * (T / 512 if grows else 1), tokens_per_s=1000, state_bytes=s,
                             time_rel_iqr=0.3 if m == LFM else 0.02))
        rows.append(dict(base, key=f"{m}-bpb", mode="bpb", seq_len=512, bits_per_byte=bpb, text="stdlib"))
        for task, a in (("piqa", acc), ("arc_easy", acc - 0.1)):
            rows.append(dict(base, key=f"{m}-{task}", mode="lm_eval", seq_len=512, eval_task=task, eval_metric="acc_norm",
                             eval_score=a, eval_stderr=0.02, eval_limit=200, eval_n_samples=200))
    return pd.DataFrame(rows)


# ---- checkpoints: quality beside speed ------------------------------------------------------------


def test_models_are_named_and_joined_per_model():
    labels = model_labels(pd.Series([MAMBA, "/a/x/model", "/b/y/model", "./lfm2", "/data/mamba-130m/", MAMBA]))
    assert list(labels) == [MAMBA, "/a/x/model", "/b/y/model", "lfm2", "mamba-130m", MAMBA]  # one name, two paths: whole
    (g,) = checkpoint_groups(prepare(ckpt_rows()))
    assert g.label == "device=NVIDIA H100 80GB HBM3, dtype=bfloat16"
    headers, body, notes = table(g)
    assert headers[:4] == ["model", "architecture", "params", "bits per byte (T=512 windows)"]
    assert headers[4:6] == ["piqa acc_norm (limit 200)", "arc_easy acc_norm (limit 200)"]
    assert headers[6:10] == ["prefill tokens/s (T=512)", "prefill tokens/s (T=2,048)", "decode ms/token (T=512)",
                             "decode ms/token (T=2,048)"]  # fmt: skip
    assert headers[10:] == ["state bytes (decode, T=2,048)", "implementation"]
    by = {r[0]: dict(zip(headers, r)) for r in body}
    assert [r[0] for r in body] == [MAMBA, SMOL, "lfm2"]  # by parameters
    smol = by[SMOL]
    assert smol["params"] == "135M" and smol["bits per byte (T=512 windows)"] == "1.000"
    assert smol["piqa acc_norm (limit 200)"] == "0.660 ± 0.020" and smol["prefill tokens/s (T=2,048)"] == "12,000"
    assert smol["decode ms/token (T=2,048)"] == "4" and smol["state bytes (decode, T=2,048)"] == "16,000,000"
    assert by[MAMBA]["state bytes (decode, T=2,048)"] == "40,000" and by[MAMBA]["implementation"] == "Mamba" "Mixer x2: torch"
    noisy = dict(zip(headers, notes[2]))  # lfm2's decode rows are noisy
    assert noisy["decode ms/token (T=512)"] == "noisy" and noisy["prefill tokens/s (T=512)"] == ""


def test_rows_of_another_device_or_dtype_are_never_joined():
    cpu = ckpt_rows("Intel Xeon", "float32", "cpu", {MAMBA: (*MODELS[MAMBA][:3], 1.5, 0.5, 90, 4e4)})
    cpu = cpu[cpu["mode"] != "lm_eval"]  # the CPU run scored bpb only
    half = ckpt_rows(dtype="float16", models={SMOL: MODELS[SMOL]})
    half = half[half["mode"].isin(("prefill", "decode"))]  # speed without quality: no group
    groups = checkpoint_groups(prepare(pd.concat([ckpt_rows(), cpu, half], ignore_index=True)))
    assert [g.label for g in groups] == ["device=Intel Xeon, dtype=float32", "device=NVIDIA H100 80GB HBM3, dtype=bfloat16"]
    headers, body, _ = table(groups[0])
    assert len(body) == 1 and not any("piqa" in h for h in headers)
    row = dict(zip(headers, body[0]))
    assert row["bits per byte (T=512 windows)"] == "1.500" and row["prefill tokens/s (T=512)"] == "90"
    _, body, _ = table(groups[1])
    assert [r[9] for r in body] == ["1", "4", "1"]  # the fp16 SmolLM2 rows did not overwrite the bf16 ones


def test_failed_cells_and_uneven_limits_show_in_the_table():
    df = ckpt_rows()
    df.loc[(df["model"] == MAMBA) & (df["mode"] == "bpb"), ["status", "bits_per_byte"]] = ["oom", None]
    df.loc[(df["model"] == LFM) & (df["eval_task"] == "piqa"), "eval_limit"] = 50
    headers, body, _ = table(checkpoint_groups(prepare(df))[0])
    by = {r[0]: dict(zip(headers, r)) for r in body}
    assert by[MAMBA]["bits per byte (T=512 windows)"] == "oom"
    assert "piqa acc_norm" in headers and by["lfm2"]["piqa acc_norm"] == "0.700 ± 0.020 (limit 50)"
    assert by[SMOL]["piqa acc_norm"] == "0.660 ± 0.020 (limit 200)"


def _front(fig, metric_index: int = 0) -> list[tuple[float, float]]:
    fronts = [t for t in fig.data if t.name == "Pareto front"]
    return list(zip(fronts[metric_index].x, fronts[metric_index].y))


def test_pareto_views_against_throughput_and_state():
    (g,) = checkpoint_groups(prepare(ckpt_rows()))
    figs = dict(figures(g))
    assert set(figs) == {"tokens_per_s", "state_bytes"}
    tps, state = figs["tokens_per_s"], figs["state_bytes"]
    # metrics in order: bits per byte (lower is better), piqa, arc_easy; the first is shown, buttons switch
    buttons = tps.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["bits per byte", "piqa acc_norm (limit 200)", "arc_easy acc_norm (limit 200)"]
    assert sum(bool(t.visible) for t in tps.data) == 4 and "lower is better" in tps.layout.yaxis.title.text
    assert "prefill tokens/s (B=1, T=2,048" in tps.layout.xaxis.title.text and tps.layout.xaxis.type == "log"
    # bpb vs tokens/s: SmolLM2 (12000, 1.00) and LFM2 (6000, 0.95) on the front; Mamba (9000, 1.10) behind both
    assert _front(tps, 0) == [(6000, 0.95), (12000, 1.00)]
    # piqa vs tokens/s: the same two; vs state bytes: Mamba (smallest state) and LFM2, not SmolLM2
    assert _front(tps, 1) == [(6000, 0.70), (12000, 0.66)]
    assert _front(state, 1) == [(4e4, 0.62), (1e6, 0.70)]
    assert "after T=2,048 tokens" in state.layout.xaxis.title.text
    shown = [b.args[0]["visible"] for b in buttons]
    assert all(sum(v) == 4 for v in shown) and len({tuple(v) for v in shown}) == 3


def test_one_model_gets_a_table_but_no_pareto_view():
    (g,) = checkpoint_groups(prepare(ckpt_rows(models={SMOL: MODELS[SMOL]})))
    assert len(table(g)[1]) == 1 and figures(g) == []


def test_page_and_markdown_show_checkpoints_and_escape_names():
    df = ckpt_rows(models={**MODELS, XSS: MODELS[MAMBA]})
    page = render_html(df, [])
    assert 'href="#checkpoints"' in page and '<section id="checkpoints">' in page
    section = page[page.index('<section id="checkpoints">'):]
    section = section[: section.index("</section>")]
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert section.count('class="figure figure-pareto"') == 2 and "0.660 ± 0.020" in section
    assert '† <span' not in section and 'title="noisy' in section
    md = render_markdown(df)
    assert "### Checkpoints, device=NVIDIA H100 80GB HBM3, dtype=bfloat16: quality beside speed" in md
    assert "| HuggingFaceTB/SmolLM2-135M | LlamaForCausalLM | 135M | 1.000 | 0.660 ± 0.020 |" in md
    assert "<script>" not in md
    # the speed figures name each model, not one "checkpoint" line
    names = {t.name for s in build_figures(df) if s.kind == "latency" for t in s.figure.data}
    assert {f"{SMOL}/transformers", "lfm2/transformers"} <= names


def test_checkpoint_rows_of_tiny_saved_models_end_to_end(tmp_path, one_thread, monkeypatch):
    """Two tiny saved models (a Llama and a Mamba) measured by archbench.bench as a checkpoint
    suite's cells would be (prefill, decode, bpb, offline), then the report joins them."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from archbench.bench import run_cell

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = "def f(x):\n    return x + 1\n" * 40 + "class A:\n    pass\n" * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, tie_word_embeddings=True)
    saved = {"llama": tf.LlamaForCausalLM(tf.LlamaConfig(**common, intermediate_size=64, num_attention_heads=4,
                                                          num_key_value_heads=2, max_position_embeddings=64)),
             "mamba": tf.MambaForCausalLM(tf.MambaConfig(**common, state_size=8, expand=2))}  # fmt: skip
    (tmp_path / "text.txt").write_text(text)
    rows = []
    for name, model in saved.items():
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        for mode in ("prefill", "decode", "bpb"):
            cell = dict(arch="checkpoint", backend="transformers", level="checkpoint", mode=mode, dtype="float32",
                        device="cpu", batch=1, seq_len=16, d_model=256, n_heads=4, n_layers=2, vocab_size=256, seed=0,
                        threads=None, model=str(tmp_path / name), trust_remote_code=False, eval_task=None,
                        head_dim=None, n_kv_heads=None, chunk_size=64, d_state=None, expand=2, conv_size=4, window=None,
                        block_size=64, block_count=16,
                        measure=dict(warmup=1, min_repeats=2, max_repeats=2, budget_s=0.02, target_rel_iqr=0.5,
                                     energy=False, energy_window_s=0.1, decode_tokens=2, flush_l2=False, roofline=False),
                        quality=dict(text=str(tmp_path / "text.txt"), max_windows=2))  # fmt: skip
            result = run_cell(dict(cell))
            rows.append({**{k: v for k, v in cell.items() if k not in ("measure", "quality")}, "key": f"{name}-{mode}",
                         "run_id": "tiny", "suite": "tiny", "status": "ok", **result, **{"env_" + k: v for k, v in
                         collect_env("cpu").items() if k in ("device_name", "device_mem_bytes")}})  # fmt: skip
    df = pd.DataFrame(rows)
    (g,) = checkpoint_groups(prepare(df))
    headers, body, _ = table(g)
    by = {r[0]: dict(zip(headers, r)) for r in body}
    assert set(by) == {"llama", "mamba"} and by["mamba"]["architecture"] == "MambaForCausalLM"
    for r in by.values():
        assert float(r["bits per byte (T=16 windows)"]) > 0 and float(r["prefill tokens/s (T=16)"].replace(",", "")) > 0
        assert float(r["decode ms/token (T=16)"]) > 0 and int(r["state bytes (decode, T=16)"].replace(",", "")) > 0
    assert "torch" in by["mamba"]["implementation"]  # the fallback a CPU takes, so a slow row says why
    assert {k for k, _ in figures(g)} == {"tokens_per_s", "state_bytes"}
    page = render_html(df, [])
    assert '<section id="checkpoints">' in page and page.count('class="figure figure-pareto"') == 2


# ---- peak memory against the device's capacity ----------------------------------------------------


def test_env_records_the_device_memory():
    total = device_memory_bytes("cpu")
    assert total and total >= 2**28 and collect_env("cpu")["device_mem_bytes"] == total
    assert device_memory_bytes("cuda:7") in (None, device_memory_bytes("cuda:7"))  # no GPU here: None, never an error


def _memory_rows(capacity: float | None, lengths=(256, 1024)) -> pd.DataFrame:
    rows = []
    for arch in ("softmax_attention", "mamba2"):
        for T in lengths:
            rows.append(dict(key=f"{arch}{T}", run_id="r", arch=arch, backend="b", mode="prefill", dtype="bfloat16",
                             device="cuda", env_device_name="NVIDIA H200", batch=1, seq_len=T, status="ok",
                             time_median_s=1e-3 * T, peak_mem_bytes=2**20 * T, env_device_mem_bytes=capacity))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("lengths", [(256, 1024), (1024,)])
def test_peak_memory_figure_draws_the_capacity_line(lengths):
    fig = next(s.figure for s in build_figures(_memory_rows(150_000_000_000, lengths)) if s.kind == "memory")
    line = fig.data[-1]
    label = "device memory: 140 GiB"
    assert line.name == label and list(line.y) == [pytest.approx(139.698, rel=1e-4)] * 2 and line.text[-1] == label
    assert line.line.dash == "dashdot" and "100 GiB" in fig.layout.yaxis.ticktext  # the axis reaches the line
    if len(lengths) > 1:
        assert list(line.x) == [256, 1024]
    else:  # bars: the line spans the first and last bar
        assert list(line.x) == ["mamba2/b", "softmax_attention/b"]
    plain = next(s.figure for s in build_figures(_memory_rows(None, lengths)) if s.kind == "memory")
    assert not any("device memory" in (t.name or "") for t in plain.data)


# ---- recipes: one readable table per recipe --------------------------------------------------------

RECIPES = ROOT / "results" / "baselines" / "cpu-2core-xeon" / "recipes-cpu"


def test_committed_recipe_rows_render_as_curated_tables():
    data = prepare(store.load(RECIPES))
    tables = {label: curated_table(t) for label, t in recipe_tables(data)}
    assert list(tables) == ["radlads", "rad", "bridge"]
    headers, rows = tables["radlads"]
    assert headers == ["model", "status", "bits per byte", "ratio to teacher", "top-1 agreement with the teacher (KL)",
                       "decode state bytes at T=128", "decode state bytes at T=8,192", "decode ms/token at T=512",
                       "training tokens", "time (s)"]  # fmt: skip
    assert rows[1] == ["student:rad_gdn", "ok", "2.1802", "1.031x", "0.806 (0.211)", "65,536", "65,536", "4.29",
                       "378,880", "41.6"]  # fmt: skip
    assert rows[0][5:7] == ["262,144", "16,777,216"]  # the teacher's KV cache grows with the context
    headers, rows = tables["rad"]
    assert headers[5:7] == ["decode state bytes at T=16", "decode state bytes at T=48"]
    assert [r[3] for r in rows] == ["1.000x", "1.128x", "1.155x"]
    headers, rows = tables["bridge"]  # the bridge's clean measure and its own kind of agreement
    assert headers[2:5] == ["bits per byte (prefix only)", "ratio to teacher", "greedy agreement with the teacher"]
    assert headers[5] == "prefill ms at T=512" and rows[3][:4] == ["distill", "ok", "3.0487", "1.253x"]
    section = recipes_section(data)
    assert section.count("<details>") == 3 and "probe_passkey_acc_depth_0.5" in section  # nothing is lost
    first = section[: section.index("<details>")]
    assert "probe_" not in first and "2.1802" in first


def test_recipe_table_escapes_and_tolerates_missing_fields():
    rows = [{"key": "t", "recipe": "x", "recipe_label": "x", "model": "teacher", "status": "ok", "bits_per_byte": 2.0,
             "state_bytes": 100},
            {"key": "s", "recipe": "x", "recipe_label": "x", "model": XSS, "status": "ok", "bits_per_byte": 2.5},
            {"key": "e", "recipe": "x", "recipe_label": "x", "model": "broken", "status": "error", "error": "boom"}]  # fmt: skip
    ((_, t),) = recipe_tables(prepare(pd.DataFrame(rows)))
    headers, cells = curated_table(t)
    assert headers == ["model", "status", "bits per byte", "ratio to teacher", "decode state bytes"]
    assert cells[1][3] == "1.250x" and cells[2] == ["broken", "error", "", "", ""]
    section = recipes_section(prepare(pd.DataFrame(rows)))
    assert XSS not in section and "&lt;script&gt;" in section
    json.dumps(cells)  # plain strings only
