"""RAD: self-speculative decoding, the redundancy search, Mamba-in-Llama conversion and distillation."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from archbench.recipes.mamba_init import MambaInLlamaMixer, convert, replaced_mixers  # noqa: E402
from archbench.recipes.redundancy import (  # noqa: E402
    MaskScorer,
    RedundancyConfig,
    bo_search,
    distil,
    greedy_search,
    held_out_prompts,
    load_student,
    maximize,
    rank_layers,
    run,
    uniform_layers,
)
from archbench.recipes.speculative import greedy_generate, skip_attention, speculative_generate  # noqa: E402
from archbench.recipes.teacher import TeacherSpec, build_teacher, corpus_task, lm_batches  # noqa: E402

TINY = TeacherSpec(d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, seq_len=32, steps=30, batch_size=16, lr=3e-3,
                   max_bytes=200_000)  # fmt: skip


def sharp_teacher(spec: TeacherSpec = TINY, seed: int = 0):
    """A random tiny teacher whose attention matters: at the default init (std 0.02) its greedy
    output ignores context, so every layer would look redundant."""
    model = build_teacher(spec).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else p.shape[1] ** -0.5))
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def prompts():
    return held_out_prompts(32, TINY.max_bytes, 4, 12, seed=0)


def test_self_speculative_decoding_is_exactly_greedy(prompts):
    model = sharp_teacher()
    for p in prompts[:3]:
        ref = greedy_generate(model, p, 12)
        out, stats = speculative_generate(model, p, 12, skip=[], draft_len=4)
        assert torch.equal(out, ref) and stats.acceptance == 1.0 and stats.rounds == 3
        out, stats = speculative_generate(model, p, 12, skip=[0, 2], draft_len=3)  # a worse draft, same output
        assert torch.equal(out, ref) and stats.generated == 12 and stats.rounds >= 4
    assert MaskScorer(model, prompts[:2], 8, 4).record([0, 2])["acceptance"] < 1.0
    with skip_attention(model, [1]):  # the stand-in is in place only inside the block
        assert type(model.model.layers[1].self_attn).__name__ == "ZeroAttention"
    assert type(model.model.layers[1].self_attn).__name__ == "LlamaAttention"


def test_search_ranks_an_identity_layer_most_redundant(prompts):
    model = sharp_teacher()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()  # layer 2's attention now adds nothing
    scorer = MaskScorer(model, prompts[:3], new_tokens=8, draft_len=4)
    ranking = rank_layers(model, prompts[:2], new_tokens=8, draft_len=4)
    assert ranking[0]["layer"] == 2 and ranking[0]["acceptance"] == 1.0 > ranking[1]["acceptance"]
    assert greedy_search(scorer, 1)["order"] == [2]
    assert greedy_search(scorer, 2)["order"][0] == 2
    assert bo_search(scorer, 1, budget=4, n_init=2, seed=0)["mask"] == [2]
    best = bo_search(scorer, 2, budget=6, n_init=2, seed=0)
    assert 2 in best["mask"] and best["evaluations"] == 6  # every evaluation a new mask


def test_gp_expected_improvement_beats_random_search():
    def bowl(x):  # smooth 2-D bowl, maximum 0 at (0.7, 0.2)
        return -float((x[0] - 0.7) ** 2 + (x[1] - 0.2) ** 2)

    def bumps(x):  # two bumps in 1-D, global maximum 1 at 0.75
        return float(torch.exp(-((x[0] - 0.25) ** 2) / 0.01) * 0.6 + torch.exp(-((x[0] - 0.75) ** 2) / 0.005))

    for f, dim, best in ((bowl, 2, 0.0), (bumps, 1, 1.0)):
        bo, rand = [], []
        for seed in range(8):  # equal budgets of 14 evaluations
            bo.append(best - maximize(f, dim, budget=14, n_init=4, seed=seed).best_y)
            xs = torch.rand(14, dim, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
            rand.append(best - max(f(x) for x in xs))
        assert torch.tensor(bo).median() < 0.2 * torch.tensor(rand).median()
        assert sum(b < r for b, r in zip(bo, rand)) >= 6


def test_mamba_in_llama_init_maps_weights_and_steps_match_parallel():
    teacher = sharp_teacher()
    student = convert(teacher, [1, 3])
    mixers = replaced_mixers(student)
    assert sorted(mixers) == [1, 3]
    for i, m in mixers.items():
        attn = teacher.model.layers[i].self_attn
        assert torch.equal(m.x_proj.weight, attn.v_proj.weight) and torch.equal(m.B_proj.weight, attn.k_proj.weight)
        assert torch.equal(m.C_proj.weight, attn.q_proj.weight) and torch.equal(m.out_proj.weight, attn.o_proj.weight)
        assert torch.equal(m.A_log, torch.log(torch.arange(1.0, 5.0))) and torch.equal(m.D, torch.ones(4))
        dt = torch.nn.functional.softplus(m.dt_bias)
        assert bool(((dt > 0.999e-3) & (dt < 0.1001)).all()) and m.conv.kernel == 4
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight, teacher.model.layers[0].self_attn.q_proj.weight)
    m = MambaInLlamaMixer(32, n_heads=4, n_kv_heads=2, head_dim=8, chunk_size=4)
    with torch.no_grad():
        m.dt_proj.weight.normal_(0, 0.3)  # a data-dependent step, not just the bias
        m.conv.conv.weight.normal_(0, 0.5)
    u = torch.randn(2, 11, 32)
    with torch.no_grad():
        y = m(u)
        state, ys = m.init_state(2), []
        for t in range(u.shape[1]):
            y_t, state = m.step(u[:, t], state)
            ys.append(y_t)
    assert torch.allclose(torch.stack(ys, 1), y, atol=1e-5)
    with torch.no_grad():  # heads h = 2g, 2g+1 read key/value head g (repeat_kv order)
        x, _, Bm, Cm = m._ssm_inputs(m._xbc(u), u)
    assert torch.equal(x[..., 0, :], x[..., 1, :]) and torch.equal(Bm[..., 2, :], Bm[..., 3, :])
    assert not torch.equal(x[..., 1, :], x[..., 2, :]) and torch.equal(Cm.flatten(-2), m.C_proj(u))


def test_distillation_loss_decreases():
    teacher = sharp_teacher()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = convert(teacher, [1])
    frozen = {k: v.clone() for k, v in student.state_dict().items() if "mixer" not in k}
    task = corpus_task(32, TINY.max_bytes)
    batches = lm_batches(task, 8, seed=0, n_examples=256)
    h = distil(student, teacher, batches, steps=30, lr=1e-2, warmup_frac=0.0)
    first, last = sum(e["loss"] for e in h[:5]) / 5, sum(e["loss"] for e in h[-5:]) / 5
    assert last < 0.8 * first
    after = student.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # stage 1 trains only the converted mixers


def test_run_writes_rows_and_students_reload_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    spec = TeacherSpec(d_model=32, n_layers=3, n_heads=2, n_kv_heads=1, seq_len=32, steps=30, batch_size=16,
                       lr=3e-3, max_bytes=200_000)  # fmt: skip
    cfg = RedundancyConfig(teacher_spec=spec, k=1, n_prompts=2, prompt_len=12, new_tokens=6, bo_budget=3, bo_init=1,
                           seq_len=32, max_bytes=200_000, steps=4, e2e_steps=2, batch_size=4, eval_windows=4,
                           decode_contexts=(8, 24), speed_contexts=(16,))  # fmt: skip
    out = tmp_path / "run"
    summary = run(cfg, out)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    # decode state, measured through the cached driver: the KV cache grows 16 tokens' worth per kept
    # attention layer (3 in the teacher, 2 in a k=1 hybrid); the converted layer's SSM state does not grow
    per_token_layer = 2 * 1 * 16 * 4  # K and V, one kv head of 16, fp32
    growth = [r["state_bytes_24"] - r["state_bytes_8"] for r in rows]
    assert growth == [16 * per_token_layer * 3, 16 * per_token_layer * 2, 16 * per_token_layer * 2]
    assert rows[0]["ssm_bytes_24"] == 0 and rows[1]["ssm_bytes_24"] == rows[1]["ssm_bytes_8"] > 0
    assert all(r["decode_s_per_token_16"] > 0 and r["prefill_s_16"] > 0 for r in rows)
    assert all(0 <= r["probe_mqar_acc"] <= 1 and 0 <= r["probe_copy_exact"] <= 1 for r in rows)  # recall probes
    assert rows[1]["decode_speedup_16"] == rows[0]["decode_s_per_token_16"] / rows[1]["decode_s_per_token_16"]
    assert [r["model"] for r in rows] == ["teacher", "student_rad", "student_uniform"]
    assert all(r["status"] == "ok" and r["recipe"] == "redundancy" for r in rows)
    assert rows[1]["tokens"] == rows[2]["tokens"] == 6 * 4 * 32 and rows[2]["layers_replaced"] == uniform_layers(3, 1)
    assert summary["rad_layers"] == summary["bo_mask"] and len(summary["ranking"]) == 3
    same = rows[1]["layers_replaced"] == rows[2]["layers_replaced"]  # then the uniform student is RAD's, trained once
    assert (rows[2].get("same_layers_as") == "student_rad") == same
    assert len((out / "losses.jsonl").read_text().splitlines()) == 6 * (1 if same else 2)
    assert json.loads((out / "run.json").read_text())["config"]["k"] == 1
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    from archbench.recipes.redundancy import _teacher

    teacher, _, _ = _teacher(cfg)
    for which in ("rad", "uniform"):
        a, b = load_student(out, which), load_student(out, which)
        assert sorted(replaced_mixers(a)) == rows[1 if which == "rad" else 2]["layers_replaced"]
        with torch.no_grad():
            la = a(input_ids=ids).logits
            assert torch.equal(la, b(input_ids=ids).logits) and not torch.allclose(la, teacher(input_ids=ids).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"search": "random"}, "search must be one of bo, greedy"),
        ({"objective": "bpb"}, "objective must be one of"),
        ({"steps": -1}, "steps must be >= 0"),
        ({"lr": 0.0}, "lr and e2e_lr must be > 0"),
        ({"warmup_frac": 1.0}, "warmup_frac must be in"),
        ({"speed_contexts": [0]}, "speed_contexts must be positive"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        RedundancyConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_k_must_leave_attention_layers(tmp_path):
    scorer = MaskScorer(sharp_teacher(), held_out_prompts(32, TINY.max_bytes, 1, 8), new_tokens=2)
    from archbench.recipes.redundancy import search_masks

    with pytest.raises(ValueError, match="k must be in 1..3"):
        search_masks(scorer, 4)
    with pytest.raises(ValueError, match="out of range"):
        convert(sharp_teacher(), [7])
