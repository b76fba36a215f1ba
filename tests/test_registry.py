import json

import pytest
from click.testing import CliRunner

from archbench import registry
from archbench.cli import main


def test_unknown_arch_lists_known_names():
    with pytest.raises(registry.RegistryError) as e:
        registry.get("mamba9")
    assert "softmax_attention" in str(e.value) and "linear_attention" in str(e.value)


def test_unknown_backend_lists_available():
    with pytest.raises(registry.RegistryError, match="available: flash_attn, sdpa, naive"):
        registry.get("softmax_attention").backend("xformers")


def test_detector_says_why_unavailable():
    b = registry.get("softmax_attention").backend("flash_attn")
    reason = b.unavailable_reason("cpu", "float32")
    assert reason is not None and ("not installed" in reason or "CUDA" in reason)
    assert registry.get("softmax_attention").backend("sdpa").unavailable_reason("cpu") is None


def test_auto_backend_resolves_to_an_available_one():
    spec = registry.get("softmax_attention")
    assert spec.resolve_backend("auto", "cpu", "float32") == "sdpa"
    assert registry.get("linear_attention").resolve_backend("auto", "cpu") == "chunked"


def test_list_json_has_availability():
    result = CliRunner().invoke(main, ["list", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    by_name = {e["name"]: e for e in entries}
    assert {"softmax_attention", "linear_attention"} <= set(by_name)
    for e in entries:
        assert e["family"] and e["description"]
        for b in e["backends"]:
            assert set(b) >= {"name", "available", "reason"}
    fa = next(b for b in by_name["softmax_attention"]["backends"] if b["name"] == "flash_attn")
    assert fa["available"] is False and fa["reason"]
    # FlexAttention runs forward on CPU but has no CPU backward: listed as forward only
    flex = next(b for b in by_name["sliding_window_attention"]["backends"] if b["name"] == "flex")
    assert flex["available"] and not flex["trainable"] and "backward" in flex["backward_reason"]
    sdpa = next(b for b in by_name["softmax_attention"]["backends"] if b["name"] == "sdpa")
    assert sdpa["trainable"] and sdpa["backward_reason"] is None


def test_list_table_marks_forward_only_backends():
    result = CliRunner().invoke(main, ["list", "--device", "cpu", "--family", "sparse"])
    assert result.exit_code == 0 and "forward only" in result.output


def test_list_table_and_family_filter():
    result = CliRunner().invoke(main, ["list", "--device", "cpu", "--family", "linear"])
    assert result.exit_code == 0
    assert "linear_attention" in result.output and "softmax_attention" not in result.output


def test_decode_flops_follow_each_family_s_state():
    from archbench.mixers.base import MixerConfig

    cfg = MixerConfig(d_model=64, n_heads=4, window=128, block_size=16)
    cost = lambda name, T: registry.get(name).decode_cost(cfg, 1, T)  # noqa: E731
    # softmax: the query reads every key: linear in the context, 4 * H * hd flops per key
    assert cost("softmax_attention", 2000) - cost("softmax_attention", 1000) == pytest.approx(4 * 4 * 16 * 1000)
    # sliding window: stops growing at the window
    assert cost("sliding_window_attention", 5000) == cost("sliding_window_attention", 1000) > cost("sliding_window_attention", 10)
    # fixed-state recurrences: the same at any context, the cost of one token of the parallel form
    for name in ("linear_attention", "gla", "deltanet", "gated_deltanet", "rwkv7", "mamba", "mamba2", "retnet", "hgrn2"):
        spec = registry.get(name)
        assert cost(name, 10) == cost(name, 100_000) == spec.flops(cfg, 1, 1) > 0, name
    # a hybrid adds its layers' costs: its attention layer's share still grows with the context
    h = registry.get("hybrid_mamba2_attention")
    assert h.decode_cost(cfg, 1, 2000) - h.decode_cost(cfg, 1, 1000) == pytest.approx(4 * 4 * 16 * 1000)


def test_fla_gated_backward_is_refused_where_fla_computes_it_wrong():
    """fla's gated chunk backward is wrong on Hopper under Triton 3.4.0..3.7.0 (fla #640; seen on an
    H200 with triton 3.6): fwd_bwd / task cells of those backends fall back to the reference."""
    from archbench.spec import fla_gated_backward, gated_backward_reason

    assert "fla issue #640" in gated_backward_reason((9, 0), "3.6.0", False)
    assert gated_backward_reason((9, 0), "3.4.0", False) and gated_backward_reason((9, 0), "3.7.0+git1", False)
    assert gated_backward_reason((9, 0), "3.7.1", False) is None  # fixed
    assert gated_backward_reason((9, 0), "3.3.1", False) is None  # before the bug
    assert gated_backward_reason((8, 0), "3.6.0", False) is None  # not Hopper
    assert gated_backward_reason((9, 0), "3.6.0", True) is None  # fla uses tilelang instead
    assert gated_backward_reason((9, 0), None, False) is None
    for arch in ("gated_deltanet", "mamba2"):
        assert registry.get(arch).backend("fla").detect_backward is fla_gated_backward
    assert fla_gated_backward("cpu") is None  # off CUDA the forward detector already refuses


def test_ops_auto_avoids_the_refused_fla_backward_only_when_gradients_flow(monkeypatch):
    import torch

    from archbench import spec

    monkeypatch.setattr(spec, "fla_gated_backward", lambda device, dtype=None: "wrong on this GPU")
    x, w = torch.randn(2), torch.randn(2, requires_grad=True)
    assert spec.fla_gated_grad_refused(x, w)
    assert not spec.fla_gated_grad_refused(x, x), "no input needs a gradient"
    with torch.no_grad():
        assert not spec.fla_gated_grad_refused(x, w), "no autograd, no backward"
    monkeypatch.setattr(spec, "fla_gated_backward", lambda device, dtype=None: None)
    assert not spec.fla_gated_grad_refused(x, w)


def _fake(name, *backends):
    from archbench.spec import ArchSpec, Complexity

    return ArchSpec(name, "test/fake", "", "", Complexity("", "", "", ""), backends, factory=lambda c, b: (c, b))


def test_the_reference_is_the_flagged_backend_and_there_is_exactly_one():
    from archbench.spec import Backend, always

    fast, ref = Backend("fast", "", always), Backend("ref", "", always, reference=True, op="torch")
    spec = _fake("flagged_fake", ref, fast)  # not listed last: found by its flag
    assert spec.reference is ref and spec.resolve_backend("reference", "cpu") == "ref"
    assert spec.resolve_backend("auto", "cpu") == "ref" and ref.op_backend == "torch" and fast.op_backend == "fast"
    with pytest.raises(registry.RegistryError, match="'unflagged' flags 0 backends as its reference; mark exactly one"):
        _fake("unflagged", fast)
    with pytest.raises(registry.RegistryError, match="flags 2 backends"):
        _fake("twice", ref, Backend("ref2", "", always, reference=True))


def test_catalogue_names_stay_and_each_calls_an_op_backend():
    """Rows and suites keep the names chunked / naive / fft / reference; each entry flags one of them,
    and a mixer built on a backend passes that backend's op name to its ops."""
    from archbench.mixers import MixerConfig

    assert all(sum(b.reference for b in s.backends) == 1 for s in registry.all_specs())
    refs = {registry.get(a).reference.name for a in ("gla", "mamba2", "softmax_attention", "hyena", "hybrid_samba")}
    assert refs == {"chunked", "naive", "fft", "reference"}
    assert [b.op_backend for b in registry.get("gla").backends] == ["fla", "torch"]
    assert [b.op_backend for b in registry.get("sliding_window_attention").backends] == ["flash_attn", "flex", "sdpa", "torch"]
    m = registry.get("gla").build(MixerConfig(d_model=32, n_heads=2), "chunked")
    assert (m.backend, m.op_backend) == ("chunked", "torch")
    with pytest.raises(ValueError, match="unknown GLA backend 'torch'; choose one of fla, chunked"):
        type(m)(m.config, "torch")  # an op backend name is not a mixer backend
