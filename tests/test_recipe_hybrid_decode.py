"""Cached decode of RAD / Mamba-in-Llama hybrids (``archbench.recipes.hybrid_decode``): the driver's
prefill and step-by-step logits equal the model's own forward, and the state splits into a KV cache
that grows with the context and fixed-size SSM states."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from archbench.recipes.hybrid_decode import HybridDecoder  # noqa: E402
from archbench.recipes.mamba_init import convert, replaced_mixers  # noqa: E402
from archbench.recipes.teacher import TeacherSpec, build_teacher  # noqa: E402

SPEC = TeacherSpec(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, seq_len=32)


def hybrid(layers):
    teacher = build_teacher(SPEC).eval()
    model = convert(teacher, layers, seed=1).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # leave the identity-like init: every conv tap and the step must matter
        for mixer in replaced_mixers(model).values():
            for p in (mixer.conv.conv.weight, mixer.conv.conv.bias, mixer.dt_proj.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("layers", [[], [0], [1, 2], [0, 1, 2]])
def test_prefill_then_steps_reproduce_the_forward(layers):
    model = hybrid(layers)
    dec = HybridDecoder(model)
    assert dec.converted() == layers
    ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    full, _ = dec.prefill(ids)
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4)
    logits, state = dec.prefill(ids[:, :9])
    steps = [logits]
    for t in range(9, 21):
        lt, state = dec.step(ids[:, t], state)
        steps.append(lt[:, None])
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-4, atol=1e-4)
    # a second prefill that continues a state (token by token in the converted layers) agrees too
    logits2, _ = dec.prefill(ids[:, 15:], dec.prefill(ids[:, :15])[1])
    torch.testing.assert_close(logits2, ref[:, 15:], rtol=1e-4, atol=1e-4)


def test_state_grows_only_in_the_attention_layers():
    dec = HybridDecoder(hybrid([0, 2]))  # one attention layer kept
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    short, long = dec.state_nbytes(dec.prefill(ids[:, :10])[1]), dec.state_nbytes(dec.prefill(ids)[1])
    kv_per_token = 2 * SPEC.n_kv_heads * (SPEC.d_model // SPEC.n_heads) * 4  # K and V, fp32, one layer
    assert long["kv"] - short["kv"] == 30 * kv_per_token
    assert long["ssm"] == short["ssm"] > 0


def test_a_model_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="Llama/Qwen2-style"):
        HybridDecoder(torch.nn.Linear(2, 2))
