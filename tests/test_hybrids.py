"""Which backend each component of a hybrid runs: ``fused`` takes every component's first fused
backend that can run on the device (not only its first-listed one), ``reference`` the references."""

from archbench import hybrids, registry
from archbench.spec import ArchSpec, Backend, Complexity


def _needs(device_kind: str, dtypes: tuple[str, ...] | None = None):
    def detect(device: str, dtype: str | None = None) -> str | None:
        if not device.startswith(device_kind):
            return f"needs {device_kind}"
        if dtypes and dtype is not None and dtype not in dtypes:
            return f"needs one of {dtypes}"
        return None

    return detect


def _spec(name: str, *backends: Backend) -> ArchSpec:
    return ArchSpec(name, "test/fake", "", "", Complexity("", "", "", ""), backends, factory=lambda c, b: None)


REF = Backend("ref", "reference", lambda device, dtype=None: None)
ATTN = _spec("attn", Backend("flash", "", _needs("nowhere")), Backend("sdpa", "", _needs("cuda")), REF)
HALF = _spec("half", Backend("halfkernel", "", _needs("cuda", ("bfloat16",))), REF)
LIN = _spec("lin", REF)


def test_fused_skips_a_missing_first_backend_for_the_next_that_runs():
    assert hybrids.component_backend(ATTN, "fused", "cuda") == "sdpa"
    assert hybrids.component_backend(ATTN, "fused", "cpu") == "ref"
    assert hybrids.component_backend(LIN, "fused", "cuda") == "ref"  # reference only
    assert hybrids.component_backend(ATTN, "reference", "cuda") == "ref"


def test_fused_is_available_when_some_component_is_fused_and_every_choice_runs():
    detect = hybrids._fused_detector([ATTN, LIN])
    assert detect("cuda", "float32") is None
    reason = detect("cpu", "float32")
    assert reason.startswith("no component has a fused backend") and "attn" in reason
    detect = hybrids._fused_detector([ATTN, HALF])
    assert detect("cuda", "bfloat16") is None
    assert "half (halfkernel)" in detect("cuda", "float32")  # the choice cannot run in fp32


def test_a_registered_hybrid_resolves_like_its_components():
    """On CPU a hybrid's attention runs where standalone attention runs under ``auto`` (SDPA),
    its SSM layers on their references; ``auto`` therefore picks ``fused``."""
    spec = registry.get("hybrid_jamba")
    assert spec.backend_names == ["fused", "reference"]
    assert spec.resolve_backend("auto", "cpu", "float32") == "fused"
    for name in ("softmax_attention", "mamba2"):
        comp = registry.get(name)
        assert hybrids.component_backend(comp, "fused", "cpu") == comp.resolve_backend("auto", "cpu", "float32")


def test_the_bench_builds_fused_components_for_the_cell_s_device():
    """A CPU cell on a GPU machine must not get CUDA-only components: the build device comes from
    the cell (``building_for``), the machine's only outside it."""
    with hybrids.building_for("cpu"):
        assert hybrids.component_backend(ATTN, "fused") == "ref"
    with hybrids.building_for("cuda:1"):
        assert hybrids.component_backend(ATTN, "fused") == "sdpa"
        with hybrids.building_for("cpu"):
            assert hybrids.component_backend(ATTN, "fused") == "ref"
        assert hybrids.component_backend(ATTN, "fused") == "sdpa"
