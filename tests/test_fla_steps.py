"""Decode steps on fla's fused recurrent kernels (``*_step(..., backend="fla")``), checked on CPU
against a stand-in written from fla's documentation (``tests/fake_fla.py``): every step op gives
the reference step's output and state, and every fla-backed mixer decodes through its fla step
kernel. The real kernels are compared with the references on a GPU by
``test_zoo.py::test_fused_backend_matches_reference`` (a ``step`` after ``prefill``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fake_fla
from archbench import registry
from archbench.mixers.base import MixerConfig
from archbench.ops import dispatch
from archbench.ops.delta_rule import delta_rule_step, gated_delta_rule_step
from archbench.ops.dplr import dplr_step
from archbench.ops.gla import gla_step, simple_gla_step
from archbench.ops.linear_attention import linear_attention_step
from archbench.ops.ssd import ssd_step

B, H, K, V = 2, 3, 8, 5


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    a = -F.normalize(r(B, H, K), dim=-1)
    return {
        "q": r(B, H, K), "k": r(B, H, K), "kn": F.normalize(r(B, H, K), dim=-1), "v": r(B, H, V),
        "g": F.logsigmoid(r(B, H)), "gk": F.logsigmoid(r(B, H, K)), "gamma": F.logsigmoid(r(H)),
        "beta": torch.rand(B, H, generator=gen), "a": a, "b": -a * torch.rand(B, H, K, generator=gen),
        "S": r(B, H, K, V), "x": r(B, H, V), "dt": F.softplus(r(B, H)), "A": -torch.rand(H, generator=gen) - 0.5,
        "Bs": r(B, 1, K), "Cs": r(B, 1, K), "D": r(H),
    }  # fmt: skip


STEPS = {
    "linear_attention": (linear_attention_step, lambda x: (x["q"], x["k"], x["v"], x["S"]), {}, "fla.fused_recurrent_linear_attn"),
    "simple_gla": (simple_gla_step, lambda x: (x["q"], x["k"], x["v"], x["g"], x["S"]), {}, "fla.fused_recurrent_simple_gla"),
    "simple_gla_const": (simple_gla_step, lambda x: (x["q"], x["k"], x["v"], x["gamma"], x["S"]), {}, "fla.fused_recurrent_simple_gla"),
    "gla": (gla_step, lambda x: (x["q"], x["k"], x["v"], x["gk"], x["S"]), {}, "fla.fused_recurrent_gla"),
    "delta_rule": (delta_rule_step, lambda x: (x["q"], x["kn"], x["v"], x["beta"], x["S"]), {}, "fla.fused_recurrent_delta_rule"),
    "gated_delta_rule": (
        gated_delta_rule_step, lambda x: (x["q"], x["kn"], x["v"], x["g"], x["beta"], x["S"]), {},
        "fla.fused_recurrent_gated_delta_rule",
    ),
    "dplr": (
        dplr_step, lambda x: (x["q"], x["k"], x["v"], -0.6 * torch.sigmoid(x["gk"]), x["a"], x["b"], x["S"]), {},
        "fla.fused_recurrent_dplr_delta_rule",
    ),
    "ssd": (
        ssd_step, lambda x: (x["x"], x["dt"], x["A"], x["Bs"], x["Cs"], x["S"]), {"D": "D"},
        "fla.fused_recurrent_simple_gla",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", STEPS)
def test_fla_step_matches_reference_step(name, monkeypatch):
    fake_fla.install(monkeypatch)
    fn, args, kw, kernel = STEPS[name]
    x = _inputs()
    kwargs = {k: x[v] for k, v in kw.items()}
    o_ref, S_ref = fn(*args(x), **kwargs, backend="torch")
    with dispatch.recording() as seen:
        o, S = fn(*args(x), **kwargs, backend="fla")
    assert seen == {kernel}
    assert o.shape == o_ref.shape and o.dtype == o_ref.dtype and S.dtype == torch.float32
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-5)


def test_step_backend_names():
    x = torch.zeros(1)
    assert dispatch.step_backend("s", "auto", x) == "torch"  # a CPU tensor: the reference
    assert dispatch.step_backend("s", "fla", x) == "fla"
    with pytest.raises(ValueError, match="unknown s backend 'cuda'; choose one of torch, fla, auto"):
        dispatch.step_backend("s", "cuda", x)


FLA_MIXERS = ["linear_attention", "retnet", "gla", "hgrn2", "deltanet", "gated_deltanet", "rwkv7", "mamba2"]


@pytest.mark.parametrize("arch", FLA_MIXERS)
def test_fla_mixers_decode_through_fla_steps(arch, monkeypatch):
    """A mixer on its fla backend decodes with fla's fused recurrent kernel, token for token
    like the same weights on the reference backend."""
    fake_fla.install(monkeypatch)
    spec = registry.get(arch)
    cfg = MixerConfig(d_model=32, n_heads=2, chunk_size=8, d_state=8)
    torch.manual_seed(0)
    ref = spec.build(cfg, spec.reference.name).eval()
    fused = spec.build(cfg, "fla").eval()
    fused.load_state_dict(ref.state_dict())
    xs = torch.randn(2, 5, 32)
    s_ref, s_fused = ref.init_state(2), fused.init_state(2)
    with torch.no_grad(), dispatch.recording() as seen:
        for t in range(5):
            y_ref, s_ref = ref.step(xs[:, t], s_ref)
            y, s_fused = fused.step(xs[:, t], s_fused)
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    assert any(k.startswith("fla.fused_recurrent_") for k in seen), seen
