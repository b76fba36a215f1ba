"""Gated linear attention ops (simple_gla, gla) and their mixers (RetNet, GLA, HGRN2).

The chunked references are checked against the recurrence run literally, one token at a
time in float64 (the oracle below), for outputs, final states and gradients; the decode
steps against the chunked form; and each mixer's ``step`` against its ``forward``.
The fla-kernel comparisons need CUDA and fla and are skipped elsewhere.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from archbench.mixers.base import MixerConfig
from archbench.mixers.gla import GLA, HGRN2, SPECS, RetNet
from archbench.ops.decay import SAFE_LOG_RANGE
from archbench.ops.gla import gla, gla_step, simple_gla, simple_gla_step
from fused_devices import FLA_DEVICE, needs_fla

OPS = {"simple_gla": simple_gla, "gla": gla}
STEPS = {"simple_gla": simple_gla_step, "gla": gla_step}
MIXERS = {"retnet": RetNet, "gla": GLA, "hgrn2": HGRN2}



def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def oracle(q, k, v, g, scale, initial_state=None):
    """The recurrence literally: S_t = decay_t * S_{t-1} + k_t^T v_t, o_t = scale q_t S_t (float64)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=torch.float64) if initial_state is None else initial_state.double()
    if g.dim() == 1:  # constant per-head decay
        g = g.expand(B, T, H)
    out = []
    for t in range(T):
        decay = g[:, t].double().exp()
        decay = decay[..., None] if decay.dim() == 3 else decay[..., None, None]  # gla: per key row
        S = decay * S + torch.einsum("bhk,bhv->bhkv", k[:, t].double(), v[:, t].double())
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t].double(), S))
    return torch.stack(out, dim=1), S


def inputs(op, B, T, H, K, V, dtype=torch.float32, gate_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    gshape = (B, T, H) if op == "simple_gla" else (B, T, H, K)
    g = gate_scale * F.logsigmoid(torch.randn(gshape, generator=gen, dtype=dtype) + 2.0)
    return q, k, v, g


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("chunk", [1, 16, 48, 64])
def test_chunked_matches_oracle(op, T, chunk):
    q, k, v, g = inputs(op, 2, T, 3, 8, 6, seed=T + chunk)
    o, S = OPS[op](q, k, v, g, chunk_size=chunk, output_final_state=True)
    o_ref, S_ref = oracle(q, k, v, g, scale=8**-0.5)
    assert o.dtype == v.dtype and o.shape == (2, T, 3, 6) and S.shape == (2, 3, 8, 6)
    assert rel_err(o, o_ref) < 1e-4
    assert rel_err(S, S_ref) < 1e-4


@pytest.mark.parametrize("op", OPS)
def test_chunk_groups_match_oracle(op, monkeypatch):
    """The reference takes chunks in cache-sized groups; force many small groups."""
    gla_module = importlib.import_module("archbench.ops.gla")

    monkeypatch.setattr(gla_module, "_GROUP_ELEMS", 3 * (1 * 3 * 8 * 8))  # 3 chunks of [B=1, H=3, C=8, D=8]
    q, k, v, g = inputs(op, 1, 77, 3, 8, 8, seed=12)
    s0 = torch.randn(1, 3, 8, 8)
    o, S = OPS[op](q, k, v, g, chunk_size=8, initial_state=s0, output_final_state=True)
    o_ref, S_ref = oracle(q, k, v, g, scale=8**-0.5, initial_state=s0)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(S, S_ref) < 1e-4


def test_simple_gla_constant_decay_per_head():
    """RetNet's form: g of shape [H], one fixed decay per head."""
    q, k, v, _ = inputs("simple_gla", 2, 70, 4, 8, 8)
    g = torch.log(1 - 2.0 ** (-5.0 - torch.arange(4.0)))
    o, S = simple_gla(q, k, v, g, chunk_size=32, output_final_state=True, scale=0.3)
    o_ref, S_ref = oracle(q, k, v, g, scale=0.3)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(S, S_ref) < 1e-4
    o_full, _ = simple_gla(q, k, v, g.expand(2, 70, 4), chunk_size=32, scale=0.3)
    torch.testing.assert_close(o, o_full)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("chunk", [8, 64])
def test_strong_decay_is_stable(op, chunk):
    """Log-gates of -5 to -20 per step (and a few near 0): a naive exp(+b) factorisation overflows."""
    q, k, v, _ = inputs(op, 2, 100, 2, 8, 8, seed=3)
    gshape = (2, 100, 2) if op == "simple_gla" else (2, 100, 2, 8)
    gen = torch.Generator().manual_seed(4)
    g = -5.0 - 15.0 * torch.rand(gshape, generator=gen)
    g = torch.where(torch.rand(gshape, generator=gen) < 0.2, -1e-3 * torch.rand(gshape, generator=gen), g)
    o, S = OPS[op](q, k, v, g, chunk_size=chunk, output_final_state=True)
    o_ref, S_ref = oracle(q, k, v, g, scale=8**-0.5)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, o_ref) < 1e-4 and rel_err(S, S_ref) < 1e-4
    # extreme: decays that underflow exp() in fp32 outright
    o, S = OPS[op](q, k, v, torch.full_like(g, -200.0), chunk_size=chunk, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    o_ref, S_ref = oracle(q, k, v, torch.full_like(g, -200.0), scale=8**-0.5)
    assert rel_err(o, o_ref) < 1e-4


@pytest.mark.parametrize("range_", [None, 0.0, 4.0])
def test_gla_takes_the_factored_path_only_for_safe_decay_ranges(range_, monkeypatch):
    """Ordinary gates factor through the middle of each chunk's range; past twice SAFE_LOG_RANGE
    a group takes the exact recursion. Both agree with the oracle, and a threshold in between
    mixes them by group."""
    gla_module = importlib.import_module("archbench.ops.gla")
    taken = []
    for name in ("_gla_chunks_factored", "_gla_chunks_recursive"):
        real = getattr(gla_module, name)
        monkeypatch.setattr(gla_module, name, lambda *a, _f=real, _n=name: taken.append(_n) or _f(*a))
    monkeypatch.setattr(gla_module, "_GROUP_ELEMS", 2 * (1 * 2 * 16 * 8))  # 2 chunks of 16 per group
    if range_ is not None:
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float32, range_)
    q, k, v, g = inputs("gla", 1, 100, 2, 8, 8, gate_scale=0.5, seed=13)
    g[:, 40:] *= 8.0  # later groups decay faster: group spans of about 2, 16, 26 and 6 (the short last one)
    o, S = gla(q, k, v, g, chunk_size=16, output_final_state=True)
    o_ref, S_ref = oracle(q, k, v, g, scale=8**-0.5)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(S, S_ref) < 1e-4
    factored = [n == "_gla_chunks_factored" for n in taken]
    assert len(taken) == 4
    if range_ is None:
        assert all(factored)  # default 40: every group
    elif range_ == 0.0:
        assert not any(factored)
    else:
        assert factored[0] and not factored[1] and not factored[2]  # taken when span / 2 <= 4


@pytest.mark.parametrize("op", OPS)
def test_state_carries_across_a_split(op):
    q, k, v, g = inputs(op, 2, 100, 2, 8, 8, seed=5)
    full, S_full = OPS[op](q, k, v, g, chunk_size=16, output_final_state=True)
    a, S_a = OPS[op](q[:, :37], k[:, :37], v[:, :37], g[:, :37], chunk_size=16, output_final_state=True)
    b, S_b = OPS[op](
        q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], chunk_size=16, initial_state=S_a, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S_b, S_full, rtol=1e-4, atol=1e-5)
    # and the oracle agrees when started from the same state
    o_ref, S_ref = oracle(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], scale=8**-0.5, initial_state=S_a)
    assert rel_err(b, o_ref) < 1e-4 and rel_err(S_b, S_ref) < 1e-4


@pytest.mark.parametrize("op", OPS)
def test_final_state_is_none_unless_asked(op):
    q, k, v, g = inputs(op, 1, 10, 1, 4, 4)
    assert OPS[op](q, k, v, g)[1] is None


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("chunk", [4, 6])
@pytest.mark.parametrize("path", ["factored", "recursive"])
def test_gradients_match_oracle(op, chunk, path, monkeypatch):
    gla_module = importlib.import_module("archbench.ops.gla")

    monkeypatch.setattr(gla_module, "_GROUP_ELEMS", 64)  # 1-2 chunks per group: gradients cross groups
    if path == "recursive":  # gla: no chunk's decay range counts as safe to factor through its start
        monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, 0.0)
    q, k, v, g = inputs(op, 1, 19, 2, 4, 3, dtype=torch.float64, gate_scale=2.0, seed=7)
    s0 = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, s0)]
    gen = torch.Generator().manual_seed(8)
    w_o = torch.randn(1, 19, 2, 3, generator=gen, dtype=torch.float64)
    w_s = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)

    o, S = OPS[op](*leaves[:4], chunk_size=chunk, initial_state=leaves[4], output_final_state=True)
    assert o.dtype == torch.float64
    grads = torch.autograd.grad((o * w_o).sum() + (S * w_s).sum(), leaves)
    o_ref, S_ref = oracle(*leaves[:4], scale=0.5, initial_state=leaves[4])
    grads_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_s).sum(), leaves)
    for name, gr, gr_ref in zip("q k v g s0".split(), grads, grads_ref):
        assert torch.isfinite(gr).all(), name
        assert rel_err(gr, gr_ref) < 1e-8, name


@pytest.mark.parametrize("leaf", [1, 2, 4, 8])
def test_recursion_with_factored_leaf_blocks_matches_oracle(leaf, monkeypatch):
    """Strong decays take the recursion over halves, stopped at blocks of ``leaf`` positions that
    are one masked matmul each (factored through the block's middle): outputs and all gradients
    agree with the oracle whatever the depth."""
    gla_module = importlib.import_module("archbench.ops.gla")

    monkeypatch.setitem(SAFE_LOG_RANGE, torch.float64, 0.0)  # no chunk is factored whole
    monkeypatch.setattr(gla_module, "_leaf_size", lambda b: leaf)
    q, k, v, g = inputs("gla", 1, 37, 2, 4, 3, dtype=torch.float64, gate_scale=2.0, seed=17)
    s0 = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, s0)]
    gen = torch.Generator().manual_seed(18)
    w_o = torch.randn(1, 37, 2, 3, generator=gen, dtype=torch.float64)
    o, S = gla(*leaves[:4], chunk_size=16, initial_state=leaves[4], output_final_state=True)
    grads = torch.autograd.grad((o * w_o).sum() + S.sum(), leaves)
    o_ref, S_ref = oracle(*leaves[:4], scale=0.5, initial_state=leaves[4])
    grads_ref = torch.autograd.grad((o_ref * w_o).sum() + S_ref.sum(), leaves)
    assert rel_err(o, o_ref) < 1e-10
    for name, gr, gr_ref in zip("q k v g s0".split(), grads, grads_ref):
        assert rel_err(gr, gr_ref) < 1e-8, name


def test_leaf_size_is_the_largest_safe_block():
    """The recursion stops at the largest power-of-two block whose every range is safe to factor
    through its middle (2 x SAFE_LOG_RANGE = 80 in fp32)."""
    gla_module = importlib.import_module("archbench.ops.gla")

    C = 64
    for per_step, want in [(3.0, 16), (5.0, 16), (6.0, 8), (30.0, 2), (50.0, 1)]:
        b = torch.full((1, 1, 1, C, 4), -per_step).cumsum(-2)  # every step decays by e^-per_step
        assert gla_module._leaf_size(b) == want, per_step  # 16 * 5 = 80 is safe, 16 * 6 is not
    b = torch.zeros(1, 1, 1, C, 4)  # no decay at all: the largest block below the chunk
    assert gla_module._leaf_size(b) == C // 2
    assert gla_module._leaf_size(torch.zeros(1, 1, 1, 1, 4)) == 1


@pytest.mark.parametrize("op", OPS)
def test_gradients_finite_under_strong_decay(op):
    q, k, v, g = inputs(op, 1, 40, 2, 4, 4, seed=9)
    g = (g * 0 - 30.0).requires_grad_(True)
    q.requires_grad_(True)
    o, S = OPS[op](q, k, v, g, chunk_size=16, output_final_state=True)
    dq, dg = torch.autograd.grad(o.sum() + S.sum(), (q, g))
    assert torch.isfinite(dq).all() and torch.isfinite(dg).all()


@pytest.mark.parametrize("op", OPS)
def test_step_reproduces_chunked(op):
    q, k, v, g = inputs(op, 2, 21, 2, 8, 5, seed=10)
    s0 = torch.randn(2, 2, 8, 5)
    o, S_chunked = OPS[op](q, k, v, g, chunk_size=8, initial_state=s0, output_final_state=True)
    S = s0
    for t in range(21):
        o_t, S = STEPS[op](q[:, t], k[:, t], v[:, t], g[:, t], S)
        torch.testing.assert_close(o_t, o[:, t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S, S_chunked, rtol=1e-4, atol=1e-5)


def test_simple_gla_step_constant_decay():
    q, k, v, _ = inputs("simple_gla", 1, 5, 3, 4, 4)
    g = torch.tensor([-0.1, -0.5, -2.0])
    o, _ = simple_gla(q, k, v, g)
    S = torch.zeros(1, 3, 4, 4)
    for t in range(5):
        o_t, S = simple_gla_step(q[:, t], k[:, t], v[:, t], g, S)
        torch.testing.assert_close(o_t, o[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_low_precision_inputs_accumulate_in_fp32(op):
    q, k, v, g = inputs(op, 1, 50, 2, 8, 8, seed=11)
    o16, _ = OPS[op](q.bfloat16(), k.bfloat16(), v.bfloat16(), g, chunk_size=16)
    o_ref, _ = oracle(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, scale=8**-0.5)
    assert o16.dtype == torch.bfloat16
    assert rel_err(o16, o_ref) < 1e-2


@pytest.mark.parametrize("op", OPS)
def test_bad_arguments_fail_with_a_message(op):
    q, k, v, g = inputs(op, 1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="torch, fla, auto"):
        OPS[op](q, k, v, g, backend="nope")
    with pytest.raises(ValueError, match="expects g"):
        OPS[op](q, k, v, g[..., :1, None])
    with pytest.raises(ValueError, match="initial_state"):
        OPS[op](q, k, v, g, initial_state=torch.zeros(1, 1, 4, 5))
    assert OPS[op](q, k, v, g, backend="auto")[0].shape == v.shape  # CPU tensors: torch reference


# ---- mixers ---------------------------------------------------------------------------

CFG = MixerConfig(d_model=32, n_heads=2, chunk_size=16)


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_step_reproduces_forward(name):
    torch.manual_seed(0)
    mixer = MIXERS[name](CFG, "chunked").eval()
    x = torch.randn(2, 37, 32)
    with torch.no_grad():
        y = mixer(x)
        state = mixer.init_state(2)
        ys = []
        for t in range(37):
            y_t, state = mixer.step(x[:, t], state)
            ys.append(y_t)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-4)
    assert mixer.state_bytes(2, 37) == sum(s.numel() * s.element_size() for s in [state]) == 2 * 2 * 16 * 16 * 4


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_is_causal(name):
    torch.manual_seed(1)
    mixer = MIXERS[name](CFG, "chunked").eval()
    x = torch.randn(1, 40, 32)
    x2 = x.clone()
    x2[:, 23:] = torch.randn(1, 17, 32)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y[:, :23], y2[:, :23], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, 23:], y2[:, 23:])


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_backward_and_unknown_backend(name):
    torch.manual_seed(2)
    mixer = MIXERS[name](CFG, "chunked")
    mixer(torch.randn(1, 20, 32)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())
    with pytest.raises(ValueError, match="fla, chunked"):
        MIXERS[name](CFG, "nope")


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 3])
def test_mixer_prefill_short_prompts(name, T):
    """prefill on 1 token and on fewer tokens than a conv kernel (4): forward's outputs, and a
    state of init_state's structure from which step continues exactly."""
    torch.manual_seed(4)
    mixer = MIXERS[name](CFG, "chunked").double().eval()
    x = torch.randn(2, T + 5, 32, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)
        y_pre, state = mixer.prefill(x[:, :T])
        ref = mixer.init_state(2)
        assert state.shape == ref.shape and state.dtype == ref.dtype == torch.float64
        torch.testing.assert_close(y_pre, y[:, :T], rtol=1e-7, atol=1e-8)
        for t in range(T, x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-7, atol=1e-8)


def test_retnet_decays_and_hgrn2_lower_bound():
    retnet = RetNet(MixerConfig(d_model=32, n_heads=4), "chunked")
    torch.testing.assert_close(retnet.log_gamma.exp(), 1 - 2.0 ** (-5.0 - torch.arange(4.0)))
    hgrn = HGRN2(CFG, "chunked", lower_bound=0.9)
    q, k, v, g = hgrn._project(torch.randn(1, 5, 32))
    f = g.exp()
    assert (f >= 0.9 - 1e-6).all() and (f < 1).all()
    torch.testing.assert_close(k, 1 - f, rtol=1e-5, atol=1e-6)
    torch.manual_seed(3)
    x = torch.randn(1, 30, 32)
    with torch.no_grad():
        y, state = hgrn(x), hgrn.init_state(1)
        ys = []
        for t in range(30):
            y_t, state = hgrn.step(x[:, t], state)
            ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-4)


def test_specs():
    by_name = {s.name: s for s in SPECS}
    assert set(by_name) == {"retnet", "gla", "hgrn2"}
    assert by_name["retnet"].family == "linear/retention"
    assert by_name["gla"].family == by_name["hgrn2"].family == "linear/gated"
    for spec in SPECS:
        assert spec.backend_names == ["fla", "chunked"]
        assert spec.resolve_backend("auto", "cpu") == "chunked"
        assert spec.backend("fla").unavailable_reason("cpu") is not None
        assert spec.flops(CFG, 2, 128) > 0
        assert isinstance(spec.build(CFG, "chunked"), MIXERS[spec.name])


# ---- fused fla kernels vs the reference (CUDA, or Triton's CPU interpreter) -----------------------------------


@needs_fla
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T", [63, 100, 300])
def test_fla_matches_reference(op, T):
    q, k, v, g = (x.to(FLA_DEVICE) for x in inputs(op, 2, T, 4, 64, 64, seed=T))
    s0 = torch.randn(2, 4, 64, 64, device=FLA_DEVICE)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g)]
    o, S = OPS[op](*leaves, initial_state=s0, output_final_state=True, backend="fla")
    o_ref, S_ref = OPS[op](q, k, v, g, initial_state=s0, output_final_state=True, backend="torch")
    assert rel_err(o, o_ref) < 5e-3 and rel_err(S, S_ref) < 5e-3
    from archbench.spec import fla_gated_backward

    if op == "simple_gla" and fla_gated_backward(FLA_DEVICE):  # fla refuses this backward here
        pytest.skip(f"forward checked; backward: {fla_gated_backward(FLA_DEVICE)}")
    grads = torch.autograd.grad(o.square().sum(), leaves)
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g)]
    o_ref, _ = OPS[op](*ref_leaves, initial_state=s0, backend="torch")
    grads_ref = torch.autograd.grad(o_ref.square().sum(), ref_leaves)
    for name, gr, gr_ref in zip("qkvg", grads, grads_ref):
        assert rel_err(gr, gr_ref) < 1e-2, name


@needs_fla
def test_fla_simple_gla_constant_decay_matches_reference():
    q, k, v, _ = (x.to(FLA_DEVICE) for x in inputs("simple_gla", 2, 200, 4, 64, 64))
    g = torch.log(1 - 2.0 ** (-5.0 - torch.arange(4.0, device=FLA_DEVICE)))
    o, S = simple_gla(q, k, v, g, output_final_state=True, backend="fla")
    o_ref, S_ref = simple_gla(q, k, v, g, output_final_state=True, backend="torch")
    assert rel_err(o, o_ref) < 5e-3 and rel_err(S, S_ref) < 5e-3


@needs_fla
@pytest.mark.parametrize("name", MIXERS)
def test_fla_mixer_matches_chunked(name):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=256, n_heads=4, chunk_size=64)
    ref = MIXERS[name](cfg, "chunked").to(FLA_DEVICE)
    fused = MIXERS[name](cfg, "fla").to(FLA_DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 200, 256, device=FLA_DEVICE)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 5e-3
