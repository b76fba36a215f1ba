"""Every registered architecture, through its reference backend: builds from the common
config, maps [B, T, D] -> [B, T, D], is causal, has finite gradients, its decode step
reproduces its forward, and declares state bytes and FLOPs."""

import dataclasses

import pytest
import torch

from archbench import registry
from archbench.mixers.base import MixerConfig
from archbench.spec import Unsupported
from fused_devices import half

registry.load_plugins(["example_arch"])  # docs/adding-an-architecture.md's example, checked like the rest
ARCHS = [s.name for s in registry.all_specs() if not s.family.startswith("test/") and s.level == "mixer"]
CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=8, d_state=8, window=6, block_size=4, block_count=2)
T = 19


def _reference(spec):
    return spec.reference.name  # the backend flagged reference=True, the pure-PyTorch reference


@pytest.fixture(scope="module", params=ARCHS)
def built(request):
    spec = registry.get(request.param)
    torch.manual_seed(0)
    return spec, spec.build(CFG, _reference(spec)).double()


def test_reference_backend_runs_everywhere(built):
    spec, _ = built
    ref = spec.backend(_reference(spec))
    assert ref.unavailable_reason("cpu", "float32") is None, f"{spec.name}: reference must run on CPU"


def test_forward_shape_causal_and_grad(built):
    spec, m = built
    x = torch.randn(2, T, CFG.d_model, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    x2 = x.detach().clone()
    x2[:, 11:] += torch.randn_like(x2[:, 11:])
    torch.testing.assert_close(m(x2)[:, :11], y[:, :11].detach(), rtol=1e-9, atol=1e-9)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_step_reproduces_forward(built):
    spec, m = built
    if not spec.has_decode:
        pytest.skip(f"{spec.name} declares no decode form")
    x = torch.randn(2, T, CFG.d_model, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2)
        steps = []
        for t in range(T):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-7, atol=1e-8)


def test_declares_state_bytes_flops_and_complexity(built):
    spec, m = built
    assert spec.flops is not None and spec.flops(CFG, 2, 1024) > 0
    assert spec.flops(CFG, 2, 2048) > spec.flops(CFG, 2, 1024)
    assert isinstance(m.state_bytes(2, 1024), int) and m.state_bytes(2, 1024) > 0
    c = spec.complexity
    assert c.train_time and c.decode_time and c.decode_memory
    assert spec.family.count("/") >= 1 and spec.description and spec.paper


def test_prefill_state_continues_like_step(built):
    """prefill(x[:, :t]) returns forward's outputs and a state from which step continues exactly."""
    spec, m = built
    if not spec.has_decode:
        pytest.skip(f"{spec.name} declares no decode form")
    x = torch.randn(2, T, CFG.d_model, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        y_pre, state = m.prefill(x[:, :12])
        torch.testing.assert_close(y_pre, y[:, :12], rtol=1e-7, atol=1e-8)
        for t in range(12, T):
            y_t, state = m.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-7, atol=1e-8)


def test_prefill_is_parallel_not_the_token_loop(built):
    """prefill must come from the parallel form (op final state, cache of projections), not
    Mixer.prefill's token-by-token fallback, or the prefill mode would time a Python loop."""
    from archbench.mixers.base import Mixer

    spec, m = built
    if not spec.has_decode:
        pytest.skip(f"{spec.name} declares no decode form")
    assert type(m).prefill is not Mixer.prefill, f"{type(m).__name__} must override prefill"


# ---- every fused backend against the reference (all of them on a GPU node; SDPA and the hybrids on CPU)

FUSED = [
    (s.name, b.name)
    for s in registry.all_specs()
    if not s.family.startswith("test/") and s.level == "mixer"
    for b in s.backends
    if not b.reference
]
# head_dim 64 and chunk 64, as the GPU suites use: on a GPU node the kernels this test compiles
# (in bf16, the suites' dtype) are the ones the suites then find in Triton's cache
GPU_CFG = MixerConfig(d_model=128, n_heads=2, chunk_size=64, d_state=16, window=48, block_size=32, block_count=2)
# fla's NSA kernels take GQA groups of 16 query heads per key/value head, and room for the
# first and two latest blocks it always selects (block_count >= 3)
FUSED_CFG = {"nsa": dataclasses.replace(GPU_CFG, d_model=256, n_heads=16, n_kv_heads=1, block_count=4)}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.fused
@pytest.mark.parametrize("arch,backend", FUSED)
def test_fused_backend_matches_reference(arch, backend):
    """Same weights, same input: the fused backend's output and input gradient agree with the
    reference's (fp32 where the kernel takes fp32, else bf16 against the fp32 reference), and
    its prefill state continues into a step that matches the forward's next position. A backend
    that runs forward only here (e.g. fla's gated kernels on Hopper with triton 3.4-3.7.0) has its
    forward and decode checked, then the test is skipped with the reason for the rest."""
    spec = registry.get(arch)
    be = spec.backend(backend)
    # CPU: fp32 (tight tolerances); CUDA: bf16 where the kernel takes it, the dtype GPU suites run in
    # (fp16 for bf16 under Triton's CPU interpreter, which cannot compute in bf16: fused_devices.half)
    order = ("bfloat16", "float32") if DEVICE == "cuda" else ("float32", str(half(torch.bfloat16)).split(".")[-1])
    dtype = next((d for d in order if be.unavailable_reason(DEVICE, d) is None), order[0])
    reason = be.unavailable_reason(DEVICE, dtype)
    if reason:
        pytest.skip(f"{arch} on {backend}: {reason}")
    backward_reason = be.unavailable_reason(DEVICE, dtype, True)
    if backward_reason and DEVICE == "cpu":  # FlexAttention: compiled for ~20 s; test_sparse checks it on CPU
        pytest.skip(f"{arch} on {backend}: forward only on CPU ({backward_reason}); see tests/test_sparse.py")
    tol = 2e-3 if dtype == "float32" else 3e-2
    cfg = FUSED_CFG.get(arch, GPU_CFG)
    torch.manual_seed(0)
    ref = spec.build(cfg, _reference(spec)).to(DEVICE)
    try:
        fused = spec.build(cfg, backend).to(DEVICE)
    except Unsupported as e:
        pytest.fail(f"the test's config should suit {arch} on {backend}: {e}")
    fused.load_state_dict(ref.state_dict())
    fused = fused.to(getattr(torch, dtype))
    x = torch.randn(2, 161, cfg.d_model, device=DEVICE)
    x_ref, x_fused = x.clone().requires_grad_(True), x.to(getattr(torch, dtype)).requires_grad_(not backward_reason)
    y_ref = ref(x_ref)
    with torch.set_grad_enabled(not backward_reason):
        y = fused(x_fused)
    assert _rel(y, y_ref) < tol, f"output: rel err {_rel(y, y_ref):.2e} ({dtype})"
    if not backward_reason:
        w = torch.randn_like(y_ref)
        (y_ref * w).sum().backward()
        (y.float() * w).sum().backward()
        assert _rel(x_fused.grad, x_ref.grad) < 2 * tol, f"input grad: rel err {_rel(x_fused.grad, x_ref.grad):.2e}"
    if spec.has_decode:
        with torch.no_grad():
            _, state = fused.prefill(x_fused[:, :160].detach())
            y_t, _ = fused.step(x_fused[:, 160].detach(), state)
        assert _rel(y_t, y_ref[:, 160]) < 2 * tol, f"step after prefill: rel err {_rel(y_t, y_ref[:, 160]):.2e}"
    if backward_reason:
        pytest.skip(f"forward and decode checked; no backward here: {backward_reason}")
