"""transformers model families as model-level archs: step reproduces forward, state bytes are
the cache's, and the bench measures them like any LM (skipped without transformers)."""

from __future__ import annotations

import pytest
import torch

from archbench import registry
from archbench.bench import Unsupported, build_module, run_cell
from archbench.mixers.base import MixerConfig

pytest.importorskip("transformers")

HF = ["hf_llama", "hf_mamba2", "hf_jamba", "hf_qwen3_next", "hf_falcon_h1", "hf_granite_hybrid", "hf_lfm2", "hf_kimi_linear"]
# the deployed hybrids: their mixer classes and the path each takes on a CPU (no fused kernels there)
HYBRID_MIXERS = {
    "hf_qwen3_next": {"Qwen3NextGatedDeltaNet": "torch", "Qwen3NextAttention": "sdpa"},
    "hf_falcon_h1": {"FalconH1Mixer": "torch", "FalconH1Attention": "sdpa"},
    "hf_granite_hybrid": {"GraniteMoeHybridMambaLayer": "torch", "GraniteMoeHybridAttention": "sdpa"},
    "hf_lfm2": {"Lfm2ShortConv": "torch", "Lfm2Attention": "sdpa"},
    "hf_kimi_linear": {"KimiLinearDeltaAttention": "torch", "KimiLinearAttention": "sdpa"},
}
CFG = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, d_state=8, chunk_size=8)


def _cell(arch, **kw):
    spec = registry.get(arch)
    cell = dict(arch=arch, backend=spec.resolve_backend("auto", "cpu"), level="model", n_layers=4, vocab_size=64,
                mode="fwd", dtype="float32", device="cpu", batch=2, seq_len=24, d_model=32, n_heads=4, head_dim=None,
                n_kv_heads=2, chunk_size=8, d_state=8, expand=2, conv_size=4, window=None, block_size=64,
                block_count=16, threads=None, seed=0,
                measure=dict(warmup=1, min_repeats=2, max_repeats=3, budget_s=0.05, target_rel_iqr=0.05, energy=False,
                             energy_window_s=0.1, decode_tokens=4, flush_l2=False, roofline=False))  # fmt: skip
    cell.update(kw)
    return cell


@pytest.mark.parametrize("arch", HF)
def test_step_reproduces_forward_and_state_bytes_are_the_cache(arch):
    torch.manual_seed(0)
    model = build_module(registry.get(arch), CFG, _cell(arch)).eval()
    ids = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        full = model(ids)
        logits, state = model.prefill(ids[:, :16])
        assert torch.allclose(logits, full[:, :16], atol=1e-4)
        steps = []
        for t in range(16, 24):
            out, state = model.step(ids[:, t], state)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), full[:, 16:], atol=1e-4)
    cache_tensors = [v for v in _tensors(state["cache"])]
    held = sum(t.numel() * t.element_size() for t in cache_tensors)
    assert held > 0 and model.state_bytes(2, 24) <= held <= 2 * model.state_bytes(2, 24) + 4096


def _tensors(obj, seen=None, depth=0):
    """Tensors reachable from a transformers cache object (its layout changes across versions)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen, depth + 1)
    elif hasattr(obj, "__dict__"):
        yield from _tensors(vars(obj), seen, depth + 1)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd", "decode"])
def test_bench_measures_hf_models(mode):
    row = run_cell(_cell("hf_llama", mode=mode))
    assert row["time_median_s"] > 0 and row["params"] > 0 and row["state_bytes"] == 2 * 4 * 2 * 24 * 2 * 8 * 4


def test_mixer_level_is_refused():
    with pytest.raises(Unsupported, match="model-level"):
        run_cell(_cell("hf_mamba2", level="mixer"))


@pytest.mark.parametrize("arch", list(HYBRID_MIXERS))
def test_deployed_hybrids_record_the_path_each_mixer_took(arch):
    row = run_cell(_cell(arch, mode="decode", n_layers=4))
    assert row["time_median_s"] > 0 and row["state_bytes"] > 0 and row["family"].startswith("hybrid/")
    assert {e["mixer"]: e["path"] for e in row["implementations"]} == HYBRID_MIXERS[arch]
    assert sum(e["layers"] for e in row["implementations"]) >= 4 and "sdpa" in row["implementation"]


def test_model_rows_record_attention_implementation():
    row = run_cell(_cell("hf_llama", backend="eager"))
    assert row["implementation"] == "LlamaAttention x4: eager"
