"""State-space models: the SSD and selective-scan ops against their recurrences, and the
Mamba / Mamba2 mixers' decode steps against their parallel forms."""

from __future__ import annotations

import importlib

import importlib.util

import pytest
import torch
import torch.nn.functional as F

ss_mod = importlib.import_module("archbench.ops.selective_scan")
from archbench.mixers.base import MixerConfig
from archbench.mixers.ssm import SPECS, Mamba, Mamba2, mamba2_flops, mamba_flops
from archbench.ops.decay import SAFE_LOG_RANGE
from archbench.ops.selective_scan import selective_scan, selective_scan_step
from archbench.ops.ssd import ssd, ssd_step
from fused_devices import FLA_DEVICE, needs_cuda_module, needs_fla

needs_mamba_ssm = needs_cuda_module("mamba_ssm", "mamba-ssm's kernels")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- oracles: the recurrences, literally, in float64 ----------------------------------------


def ssd_oracle(x, dt, A, B, C, D=None, h0=None):
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    h = torch.zeros(b, H, N, P, dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(T):
        Bh = B[:, t].repeat_interleave(H // G, dim=1)
        Ch = C[:, t].repeat_interleave(H // G, dim=1)
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + dt[:, t, :, None, None] * Bh[..., None] * x[:, t, :, None, :]
        y = torch.einsum("bhn,bhnp->bhp", Ch, h)
        if D is not None:
            y = y + D.double()[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, 1), h


def ssd_quadratic(x, dt, A, B, C, D=None):
    """The dual, attention-like form: y = (L o C B^T)(dt x) + D x, L[t, s] = exp(sum_{s<r<=t} a_r)."""
    b, T, H, P = x.shape
    G = B.shape[2]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    Bh, Ch = B.repeat_interleave(H // G, dim=2), C.repeat_interleave(H // G, dim=2)
    cs = (dt * A).cumsum(1)  # [b, T, H]
    seg = cs[:, :, None] - cs[:, None, :]  # [b, t, s, H]
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    L = torch.where(mask, seg, torch.full_like(seg, float("-inf"))).exp()
    scores = torch.einsum("bthn,bshn->btsh", Ch, Bh) * L
    y = torch.einsum("btsh,bshp->bthp", scores, x * dt[..., None])
    if D is not None:
        y = y + D.double()[:, None] * x
    return y


def ss_oracle(u, delta, A, B, C, D=None, h0=None):
    b, T, Dm = u.shape
    N = A.shape[1]
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    h = torch.zeros(b, Dm, N, dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        y = (h * C[:, t, None, :]).sum(-1)
        if D is not None:
            y = y + D.double() * u[:, t]
        ys.append(y)
    return torch.stack(ys, 1), h


# ---- inputs ------------------------------------------------------------------------------


def ssd_inputs(b=2, T=63, H=4, P=8, G=2, N=6, dtype=torch.float32, strong=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, T, H, generator=g, dtype=dtype))
    A = -(torch.rand(H, generator=g, dtype=dtype) * 2 + 0.2)
    if strong:  # log-decay dt * A of about -5 .. -20 per step
        dt = torch.rand(b, T, H, generator=g, dtype=dtype) * 0.75 + 0.25
        A = -torch.full((H,), 20.0, dtype=dtype)
    B = torch.randn(b, T, G, N, generator=g, dtype=dtype)
    C = torch.randn(b, T, G, N, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=dtype)
    h0 = torch.randn(b, H, N, P, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, h0


def ss_inputs(b=2, T=63, Dm=6, N=5, dtype=torch.float32, strong=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, T, Dm, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(b, T, Dm, generator=g, dtype=dtype) - 1)
    A = -(torch.rand(Dm, N, generator=g, dtype=dtype) * 3 + 0.1)
    if strong:  # log-decay delta * A of about -5 .. -20 per step
        delta = torch.rand(b, T, Dm, generator=g, dtype=dtype) * 0.75 + 0.25
        A = -torch.full((Dm, N), 20.0, dtype=dtype)
    B = torch.randn(b, T, N, generator=g, dtype=dtype)
    C = torch.randn(b, T, N, generator=g, dtype=dtype)
    D = torch.randn(Dm, generator=g, dtype=dtype)
    h0 = torch.randn(b, Dm, N, generator=g, dtype=dtype)
    return u, delta, A, B, C, D, h0


# ---- ssd -----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("G", [1, 2])
def test_ssd_chunked_matches_recurrence(T, chunk, G):
    x, dt, A, B, C, D, h0 = ssd_inputs(T=T, G=G)
    y, hT = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=chunk)
    y_ref, h_ref = ssd_oracle(x, dt, A, B, C, D, h0)
    assert y.dtype == x.dtype and y.shape == x.shape and hT.shape == h0.shape
    assert rel(y, y_ref) < 1e-4 and rel(hT, h_ref) < 1e-4


def test_ssd_matches_quadratic_dual_form():
    x, dt, A, B, C, D, _ = ssd_inputs(T=45, G=2)
    y, hT = ssd(x, dt, A, B, C, D, chunk_size=16)
    assert hT is None
    assert rel(y, ssd_quadratic(x, dt, A, B, C, D)) < 1e-4


def test_ssd_state_carries_across_a_split():
    x, dt, A, B, C, D, h0 = ssd_inputs(T=100)
    y, hT = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=16)
    y1, h1 = ssd(x[:, :37], dt[:, :37], A, B[:, :37], C[:, :37], D, initial_state=h0, output_final_state=True)
    y2, h2 = ssd(x[:, 37:], dt[:, 37:], A, B[:, 37:], C[:, 37:], D, initial_state=h1, output_final_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5 and rel(h2, hT) < 1e-5


def test_ssd_step_reproduces_chunked():
    x, dt, A, B, C, D, h0 = ssd_inputs(T=20)
    y, hT = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=8)
    state, ys = h0.clone(), []
    for t in range(x.shape[1]):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D=D)
        ys.append(y_t)
    assert rel(torch.stack(ys, 1), y) < 1e-5 and rel(state, hT) < 1e-5


def test_ssd_strong_decay_is_stable():
    x, dt, A, B, C, D, h0 = ssd_inputs(T=100, strong=True)
    y, hT = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(hT).all()
    y_ref, h_ref = ssd_oracle(x, dt, A, B, C, D, h0)
    assert rel(y, y_ref) < 1e-4 and rel(hT, h_ref) < 1e-4


@pytest.mark.parametrize("strong, pairwise", [(False, False), (False, True), (True, False)])
def test_ssd_gradients_match_recurrence(strong, pairwise, monkeypatch):
    """Ordinary decays factor the diagonal blocks through the middle of each chunk's range (one
    C B^T per group); pairwise forces the segment-sum path that strong decays take."""
    if pairwise:
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, 0.0)
    inputs = [t.double().requires_grad_() for t in ssd_inputs(b=1, T=21, H=2, P=3, G=1, N=4, strong=strong)]
    x, dt, A, B, C, D, h0 = inputs
    gy = torch.randn(1, 21, 2, 3, dtype=torch.float64)
    gh = torch.randn(1, 2, 4, 3, dtype=torch.float64)

    def loss(fn):
        y, h = fn()
        return (y * gy).sum() + (h * gh).sum()

    l1 = loss(lambda: ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=8))
    l2 = loss(lambda: ssd_oracle(x, dt, A, B, C, D, h0))
    g1 = torch.autograd.grad(l1, inputs)
    g2 = torch.autograd.grad(l2, inputs)
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        assert rel(a, b) < 1e-6


def test_ssd_mixes_factored_and_pairwise_heads(monkeypatch):
    """Heads whose chunks span a safe range factor their diagonal blocks; the others (here heads 1
    and 2 of 4, one in each of the two groups) take segment sums and replace their rows. Values
    and every gradient agree with the recurrence, and the split is by head."""
    ssd_mod = importlib.import_module("archbench.ops.ssd")

    monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, 1.0)  # ranges above 2 are unsafe
    x, dt, A, B, C, D, h0 = (t.double() for t in ssd_inputs(b=2, T=29, H=4, P=3, G=2, N=4, seed=5))
    dt = 0.1 + 0.1 * dt.sigmoid()  # 0.1 .. 0.2 per step
    A = torch.tensor([-0.5, -4.0, -4.0, -0.5], dtype=torch.float64)  # chunk-of-8 ranges ~1 and ~10
    seen = []
    real = ssd_mod._diagonal_blocks

    def spy(acs, *rest):
        out = real(acs, *rest)
        seen.append((-acs[..., -1]).amax((0, 3)).flatten().tolist())
        return out

    monkeypatch.setattr(ssd_mod, "_diagonal_blocks", spy)
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y, h = ssd(*inputs[:6], initial_state=inputs[6], output_final_state=True, chunk_size=8)
    y_ref, h_ref = ssd_oracle(*inputs[:6], inputs[6])
    assert rel(y.detach(), y_ref.detach()) < 1e-10 and rel(h.detach(), h_ref.detach()) < 1e-10
    assert [s > 2.0 for s in seen[0]] == [False, True, True, False]
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (h_ref * gh).sum(), inputs)
    for name, a, b in zip("x dt A B C D h0".split(), grads, grads_ref):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-8, name


def test_ssd_gradients_stay_finite_beside_a_head_of_huge_decay():
    """fp32, no limits patched: head 0 decays gently (factored), head 1 spans ~240 per chunk (exact
    path, its factored rows replaced). Its factors were capped on one side only, so for the first
    positions of a chunk exp(c_s - m) overflowed to inf in the discarded rows, and their zero
    gradient times inf turned every gradient into NaN: a Mamba2 MQAR model at d_model 128 diverged
    at step ~120. Values and gradients must stay finite and match the fp64 recurrence."""
    x, dt, A, B, C, D, h0 = ssd_inputs(b=2, T=24, H=2, P=3, G=1, N=4, seed=3)
    dt = 0.1 + 0.1 * dt.sigmoid()
    A = torch.tensor([-0.5, -200.0])
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y, h = ssd(*inputs[:6], initial_state=inputs[6], output_final_state=True, chunk_size=8)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    y_ref, h_ref = ssd_oracle(*inputs64[:6], inputs64[6])
    assert torch.isfinite(y).all() and rel(y.detach().double(), y_ref.detach()) < 1e-5
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * gy.double()).sum() + (h_ref * gh.double()).sum(), inputs64)
    for name, a, b in zip("x dt A B C D h0".split(), grads, grads_ref):
        assert torch.isfinite(a).all(), name
        assert rel(a.double(), b) < 1e-4, name


def test_ssd_rejects_bad_arguments():
    x, dt, A, B, C, D, h0 = ssd_inputs(T=5)
    with pytest.raises(ValueError, match="torch"):
        ssd(x, dt, A, B, C, backend="nope")
    with pytest.raises(ValueError, match="groups"):
        ssd(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="initial_state"):
        ssd(x, dt, A, B, C, initial_state=h0.transpose(-1, -2))
    y, _ = ssd(x, dt, A, B, C, backend="auto")  # CPU tensors: the reference
    assert y.shape == x.shape


# ---- selective scan ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("chunk", [1, 8, 16])
def test_selective_scan_chunked_matches_recurrence(T, chunk):
    u, delta, A, B, C, D, h0 = ss_inputs(T=T)
    y, hT = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=chunk)
    y_ref, h_ref = ss_oracle(u, delta, A, B, C, D, h0)
    assert y.dtype == u.dtype and y.shape == u.shape and hT.shape == h0.shape
    assert rel(y, y_ref) < 1e-4 and rel(hT, h_ref) < 1e-4


def test_selective_scan_many_blocks(monkeypatch):
    monkeypatch.setattr(ss_mod, "BLOCK_ELEMS", 1)  # one chunk per block: the block loop carries h
    u, delta, A, B, C, D, h0 = ss_inputs(T=50)
    y, hT = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=4)
    y_ref, h_ref = ss_oracle(u, delta, A, B, C, D, h0)
    assert rel(y, y_ref) < 1e-4 and rel(hT, h_ref) < 1e-4


@pytest.mark.parametrize("chunk", [8, 16])
def test_selective_scan_strong_decay_is_stable(chunk):
    # spans of 40..160 per chunk of 8: past the cumulative-sum path's limit, so the doubling scan runs
    u, delta, A, B, C, D, h0 = ss_inputs(T=100, strong=True)
    y, hT = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=chunk)
    assert torch.isfinite(y).all() and torch.isfinite(hT).all()
    y_ref, h_ref = ss_oracle(u, delta, A, B, C, D, h0)
    assert rel(y, y_ref) < 1e-4 and rel(hT, h_ref) < 1e-4


def test_selective_scan_fallback_agrees_with_cumsum_path(monkeypatch):
    u, delta, A, B, C, D, h0 = ss_inputs(T=77)
    fast = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    monkeypatch.setitem(ss_mod.SPAN_LIMIT, torch.float32, -1.0)  # force the doubling scan everywhere
    slow = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    assert rel(slow[0], fast[0]) < 1e-5 and rel(slow[1], fast[1]) < 1e-5


def test_selective_scan_state_carries_across_a_split():
    u, delta, A, B, C, D, h0 = ss_inputs(T=100)
    y, hT = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    y1, h1 = selective_scan(u[:, :41], delta[:, :41], A, B[:, :41], C[:, :41], D, h0, True)
    y2, h2 = selective_scan(u[:, 41:], delta[:, 41:], A, B[:, 41:], C[:, 41:], D, h1, True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5 and rel(h2, hT) < 1e-5


def test_selective_scan_step_reproduces_chunked():
    u, delta, A, B, C, D, h0 = ss_inputs(T=20)
    y, hT = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    state, ys = h0.clone(), []
    for t in range(u.shape[1]):
        y_t, state = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], state, D=D)
        ys.append(y_t)
    assert rel(torch.stack(ys, 1), y) < 1e-5 and rel(state, hT) < 1e-5


@pytest.mark.parametrize("path", ["cumsum", "doubling"])
def test_selective_scan_gradients_match_recurrence(path, monkeypatch):
    monkeypatch.setattr(ss_mod, "BLOCK_ELEMS", 40)  # several blocks: the backward carries gradients between them
    if path == "doubling":
        monkeypatch.setitem(ss_mod.SPAN_LIMIT, torch.float64, -1.0)
    inputs = [t.double().requires_grad_() for t in ss_inputs(b=1, T=23, Dm=3, N=4)]
    u, delta, A, B, C, D, h0 = inputs
    gy = torch.randn(1, 23, 3, dtype=torch.float64)
    gh = torch.randn(1, 3, 4, dtype=torch.float64)

    def loss(fn):
        y, h = fn()
        return (y * gy).sum() + (h * gh).sum()

    l1 = loss(lambda: selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=4))
    l2 = loss(lambda: ss_oracle(u, delta, A, B, C, D, h0))
    g1 = torch.autograd.grad(l1, inputs)
    g2 = torch.autograd.grad(l2, inputs)
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        assert rel(a, b) < 1e-6


def test_selective_scan_rejects_bad_arguments():
    u, delta, A, B, C, D, h0 = ss_inputs(T=5)
    with pytest.raises(ValueError, match="mamba_ssm"):
        selective_scan(u, delta, A, B, C, backend="cuda")
    with pytest.raises(ValueError, match="A"):
        selective_scan(u, delta, A.T, B, C)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
    y, _ = selective_scan(u, delta, A, B, C, backend="auto")
    assert y.shape == u.shape


# ---- under CUDA-graph capture: no host read-back, the exact path for every head ----------------


@pytest.mark.parametrize("op", ["ssd", "selective_scan"])
def test_graph_capture_takes_the_exact_path_without_read_back(monkeypatch, op):
    """A capture allows no device-to-host read (and a replay would freeze a data-dependent choice),
    so while one runs the references skip their span read-back and take the always-exact path for
    every head: same values and gradients, no ``tolist``. (The GPU check is tests/test_bench.py's
    graph test on an H100.)"""
    ss_mod, ssd_mod = (importlib.import_module(f"archbench.ops.{n}") for n in ("selective_scan", "ssd"))

    if op == "ssd":
        inputs = ssd_inputs(T=100, seed=3)
        run = lambda *t: ssd(*t[:6], initial_state=t[6], output_final_state=True, chunk_size=16)  # noqa: E731
    else:
        inputs = ss_inputs(T=100, seed=3)
        run = lambda *t: selective_scan(*t[:6], initial_state=t[6], output_final_state=True, chunk_size=16)  # noqa: E731

    def grads(capturing: bool):
        ts = [t.clone().requires_grad_(True) for t in inputs]
        with monkeypatch.context() as m:
            if capturing:
                for mod in (ssd_mod, ss_mod):
                    m.setattr(mod, "graph_capturing", lambda x: True)
                m.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("read back during a capture"))
            y, h = run(*ts)
            ((y * 1.3).sum() + h.square().sum()).backward()
        return [y.detach(), h.detach()] + [t.grad for t in ts]

    for a, b in zip(grads(False), grads(True)):
        assert rel(a, b) < 1e-5


# ---- fused backends (CUDA; fla's also under Triton's CPU interpreter) ---------------------


def _cuda(*ts):
    return [t.cuda() for t in ts]


@needs_mamba_ssm  # Triton kernels, but run under torch.cuda.device: not under Triton's CPU interpreter
def test_ssd_mamba_ssm_matches_reference():
    x, dt, A, B, C, D, h0 = _cuda(*ssd_inputs(b=2, T=300, H=4, P=64, G=1, N=64))
    ref = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True)
    out = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=64, backend="mamba_ssm")
    assert rel(out[0], ref[0]) < 1e-3 and rel(out[1], ref[1]) < 1e-3


@needs_fla
def test_ssd_fla_matches_reference():
    x, dt, A, B, C, D, h0 = (t.to(FLA_DEVICE) for t in ssd_inputs(b=2, T=300, H=4, P=64, G=2, N=64))
    ref = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True)
    out = ssd(x, dt, A, B, C, D, initial_state=h0, output_final_state=True, backend="fla")
    # fp32 in, but fla's dots run in TF32 on a GPU (1.4e-3 on an H100, 2026-11-26); exact under the interpreter
    tol = 5e-3 if x.is_cuda else 1e-3
    assert rel(out[0], ref[0]) < tol and rel(out[1], ref[1]) < tol


@needs_mamba_ssm
def test_selective_scan_mamba_ssm_matches_reference():
    u, delta, A, B, C, D, h0 = _cuda(*ss_inputs(b=2, T=300, Dm=64, N=16))
    ref = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    out = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, backend="mamba_ssm")
    assert rel(out[0], ref[0]) < 1e-3 and rel(out[1], ref[1]) < 1e-3


@needs_mamba_ssm
@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_mixer_mamba_ssm_backend_matches_chunked(cls):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=64, n_heads=2, d_state=16)
    ref = cls(cfg, "chunked").cuda()
    fused = cls(cfg, "mamba_ssm").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 200, 64, device="cuda")
    assert rel(fused(x), ref(x)) < 1e-3


# ---- mixers --------------------------------------------------------------------------------

CONFIGS = [
    (Mamba, MixerConfig(d_model=32, n_heads=4)),
    (Mamba, MixerConfig(d_model=24, n_heads=4, d_state=8, conv_size=0)),
    (Mamba2, MixerConfig(d_model=32, n_heads=4, d_state=16, chunk_size=16)),
    (Mamba2, MixerConfig(d_model=32, n_heads=2, d_state=8, chunk_size=8, conv_size=2, expand=1)),
]


@pytest.mark.parametrize("cls,cfg", CONFIGS)
def test_mixer_step_reproduces_forward(cls, cfg):
    torch.manual_seed(0)
    m = cls(cfg, "chunked").eval()
    x = torch.randn(2, 37, cfg.d_model)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
    assert y.shape == x.shape
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls,cfg", CONFIGS[::2])
def test_mixer_is_causal(cls, cfg):
    torch.manual_seed(0)
    m = cls(cfg, "chunked").eval()
    x = torch.randn(1, 40, cfg.d_model)
    x2 = x.clone()
    x2[:, 25:] += torch.randn_like(x2[:, 25:])
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :25], y2[:, :25], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_mixer_backward_runs():
    torch.manual_seed(0)
    for cls, cfg in CONFIGS[:1] + CONFIGS[2:3]:
        m = cls(cfg, "chunked")
        m(torch.randn(2, 19, cfg.d_model)).square().mean().backward()
        grads = [p.grad for p in m.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_state_bytes_and_parameterisation():
    cfg = MixerConfig(d_model=64, n_heads=4)  # d_inner 128
    m = Mamba(cfg)
    assert m.d_state == 16 and m.dt_rank == 4
    assert torch.allclose(-torch.exp(m.A_log[0]), -torch.arange(1, 17).float())  # S4D-real
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.state_bytes(3, 1000) == 3 * 128 * (3 + 16) * 4  # conv window + fp32 h
    m2 = Mamba2(cfg)
    assert m2.n_heads == 8 and m2.head_dim == 16 and m2.d_state == 64
    assert m2.state_bytes(2, 10) == 2 * (128 + 128) * 3 * 4 + 2 * 8 * 64 * 16 * 4
    with pytest.raises(ValueError, match="head_dim"):
        Mamba2(MixerConfig(d_model=30, n_heads=3, head_dim=7))
    with pytest.raises(ValueError, match="chunked"):
        Mamba(cfg, "fla")


def test_specs():
    by_name = {s.name: s for s in SPECS}
    assert by_name["mamba"].family == "ssm/selective" and by_name["mamba2"].family == "ssm/ssd"
    assert by_name["mamba"].backend_names == ["mamba_ssm", "chunked"]
    assert by_name["mamba2"].backend_names == ["mamba_ssm", "fla", "chunked"]
    cfg = MixerConfig(d_model=32, n_heads=4, d_state=16)
    for spec in SPECS:
        assert spec.resolve_backend("auto", "cpu") == "chunked"
        assert isinstance(spec.build(cfg, "chunked"), (Mamba, Mamba2))
        assert spec.flops(cfg, 2, 128) > 0
    assert mamba_flops(cfg, 1, 256) == 2 * mamba_flops(cfg, 1, 128)
    assert mamba2_flops(cfg, 1, 2048) > mamba2_flops(cfg, 1, 1024)


@pytest.mark.parametrize("cls,cfg", CONFIGS)
@pytest.mark.parametrize("T", [1, 2, 3, 17])
def test_mixer_prefill_continues_like_step(cls, cfg, T):
    """prefill over T tokens (T = 1, T < conv kernel - 1, T = kernel - 1, T past a chunk
    boundary) gives forward's outputs and the state step builds; step continues exactly.
    (Tolerances as in test_zoo: dt and A are computed in fp32 even in an fp64 module.)"""
    torch.manual_seed(0)
    m = cls(cfg, "chunked").double().eval()
    x = torch.randn(2, T + 6, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        y_pre, state = m.prefill(x[:, :T])
        torch.testing.assert_close(y_pre, y[:, :T], rtol=1e-7, atol=1e-8)
        ref = m.init_state(2)
        for t in range(T):
            _, ref = m.step(x[:, t], ref)
        for key in ("conv", "ssm"):
            if ref[key] is None:
                assert state[key] is None
            else:
                assert state[key].dtype == ref[key].dtype and state[key].shape == ref[key].shape
                torch.testing.assert_close(state[key], ref[key], rtol=1e-7, atol=1e-8)
        for t in range(T, x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-7, atol=1e-8)
