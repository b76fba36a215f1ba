"""Kernels that take only some shapes (``Backend.limits``): fla's delta-rule and DPLR chunk kernels
stop at head dimension 256, fla's NSA needs GQA groups of 16 and room for its forced blocks.
``auto`` passes such a backend over for a cell it cannot take (and says why in the cell), a
hybrid's ``fused`` components do the same, and building it by name is ``Unsupported``, a result
row rather than a crash deep inside the kernel."""

import textwrap

import pytest

from archbench import hybrids, registry
from archbench.mixers.base import MixerConfig
from archbench.spec import ArchSpec, Backend, Complexity, Unsupported, head_dim_at_most
from archbench.suite import load_suite

FAST = Backend(
    "fast",
    "a kernel that stops at head dim 32",
    lambda device, dtype=None: None,
    limits=head_dim_at_most(32, "the fast kernel"),
)
REF = Backend("ref", "reference", lambda device, dtype=None: None, reference=True)
LIMITED = ArchSpec(
    "limited_fake", "test/fake", "", "", Complexity("", "", "", ""), (FAST, REF), factory=lambda c, b: (c, b)
)


def test_auto_passes_over_a_kernel_that_cannot_take_the_config():
    small, big = MixerConfig(d_model=32, n_heads=1), MixerConfig(d_model=64, n_heads=1)
    assert LIMITED.resolve_backend("auto", "cpu", config=small) == "fast"
    assert LIMITED.resolve_backend("auto", "cpu", config=big) == "ref"
    assert LIMITED.resolve_backend("auto", "cpu") == "fast"  # no config: device and dtype only
    assert hybrids.component_backend(LIMITED, "fused", "cpu", config=big) == "ref"
    assert LIMITED.build(small, "fast") == (small, "fast")
    with pytest.raises(
        Unsupported,
        match=r"limited_fake backend 'fast' cannot take this config: the fast kernel takes head dimensions up to 32 \(this config: 64\)",
    ):
        LIMITED.build(big, "fast")


def test_suite_cells_choose_per_shape_and_say_why(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, LIMITED.name, LIMITED)
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent("""
        name: t
        defaults: {device: cpu, n_heads: 1}
        sweep:
          arch: [limited_fake]
          d_model: [32, 64]
          seq_len: [16]
    """)
    )
    cells = {c.d_model: c for c in load_suite(p).cells()}
    assert cells[32].backend == "fast" and cells[32].backend_choice is None
    assert cells[64].backend == "ref"
    assert (
        cells[64].backend_choice
        == "fast: the fast kernel takes head dimensions up to 32 (this config: 64); raise n_heads or use the reference"
    )


@pytest.mark.parametrize("arch", ["deltanet", "gated_deltanet", "rwkv7"])
def test_fla_delta_rule_kernels_stop_at_head_dim_256(arch):
    fla = registry.get(arch).backend("fla")
    assert fla.config_reason(MixerConfig(d_model=512, n_heads=2)) is None  # head dim 256
    assert "up to 256 (this config: 512)" in fla.config_reason(MixerConfig(d_model=512, n_heads=1))
    with pytest.raises(Unsupported, match="up to 256"):
        registry.get(arch).build(MixerConfig(d_model=512, n_heads=1), "fla")


def test_fla_nsa_limits_are_the_mixers_own():
    fla = registry.get("nsa").backend("fla")
    assert fla.config_reason(MixerConfig(d_model=256, n_heads=16, n_kv_heads=1, block_size=64, block_count=16)) is None
    assert "power of 2 >= 16" in fla.config_reason(MixerConfig(d_model=256, n_heads=16, n_kv_heads=2))
    assert "fewer than 3 slots" in fla.config_reason(MixerConfig(d_model=256, n_heads=16, n_kv_heads=1, block_count=2))
