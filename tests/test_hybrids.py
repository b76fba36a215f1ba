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


REF = Backend("ref", "reference", lambda device, dtype=None: None, reference=True)
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


def _backward_refused(device: str, dtype: str | None = None) -> str | None:
    return "no backward here"  # asked only when a backward is needed


GATED = _spec("gated", Backend("kern", "", _needs("cuda"), detect_backward=_backward_refused), REF)


def test_a_forward_only_cell_keeps_a_kernel_whose_backward_is_refused():
    """fla's gated chunk backward is refused on Hopper with triton < 3.7.1 (H100, 2026-11-26): a
    hybrid's training cell must run those layers on the reference, its prefill need not (it ran
    Mamba2's SSD on the reference, 37x slower than fla's forward, before this)."""
    with hybrids.building_for("cuda", backward=True):
        assert hybrids.component_backend(GATED, "fused") == "ref"
    with hybrids.building_for("cuda", backward=False):
        assert hybrids.component_backend(GATED, "fused") == "kern"
        assert hybrids.component_backend(GATED, "fused", backward=True) == "ref"
    assert hybrids.component_backend(GATED, "fused", "cuda") == "ref"  # outside: with a backward
    # on a CPU the one difference: a forward-only sliding-window layer runs FlexAttention, as `auto` does
    swa = registry.get("sliding_window_attention")
    for backward in (False, True):
        with hybrids.building_for("cpu", backward=backward):
            assert hybrids.component_backend(swa, "fused") == swa.resolve_backend("auto", "cpu", "float32", backward=backward)


def test_the_bench_builds_hybrids_for_the_cell_s_mode(monkeypatch):
    from contextlib import contextmanager

    from archbench import bench
    from archbench.suite import parse_suite

    seen = []
    real = hybrids.building_for

    @contextmanager
    def spy(device, backward=True):
        seen.append(backward)
        with real(device, backward):
            yield

    monkeypatch.setattr(bench, "building_for", spy)
    raw = {"name": "h", "defaults": {"d_model": 32, "n_heads": 2, "d_state": 8, "window": 16,
                                     "measure": {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.01, "roofline": False}},
           "sweep": {"arch": "hybrid_mamba2_attention", "backend": "reference", "seq_len": 32, "mode": ["fwd", "fwd_bwd", "prefill", "decode"]}}  # fmt: skip
    for cell in parse_suite(raw).cells():
        bench.run_cell(cell.model_dump())
    assert seen == [False, True, False, False]
