"""Numerical agreement: reference softmax vs SDPA, chunked linear attention vs a step loop,
and every mixer's token-by-token ``step`` vs its parallel ``forward``."""

import pytest
import torch

from archbench import registry
from archbench.mixers import MixerConfig
from archbench.ops import linear_attention, linear_attention_step, softmax_attention
from fused_devices import FLA_DEVICE, half, needs_fla


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def linear_attention_loop(q, k, v, scale, initial_state=None):
    """The slow oracle: the recurrence one token at a time."""
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if initial_state is None else initial_state.double()
    out = []
    for t in range(T):
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t].double(), v[:, t].double())
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t].double(), S) * scale)
    return torch.stack(out, dim=1), S


@pytest.mark.parametrize("T,S,hkv", [(37, 37, 4), (64, 64, 2), (5, 40, 1), (100, 100, 4)])
def test_softmax_reference_matches_sdpa(T, S, hkv):
    torch.manual_seed(0)
    q = torch.randn(2, T, 4, 16)
    k, v = torch.randn(2, S, hkv, 16), torch.randn(2, S, hkv, 16)
    ref = softmax_attention(q, k, v, backend="torch")
    fused = softmax_attention(q, k, v, backend="sdpa")
    assert _rel_err(fused, ref) < 1e-5


def test_softmax_is_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 8) for _ in range(3))
    o = softmax_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, 7:], v2[:, 7:] = torch.randn_like(k2[:, 7:]), torch.randn_like(v2[:, 7:])
    o2 = softmax_attention(q, k2, v2)
    torch.testing.assert_close(o[:, :7], o2[:, :7])
    assert not torch.allclose(o[:, 7:], o2[:, 7:])


def test_unknown_backend_lists_choices():
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="torch, sdpa, flash_attn"):
        softmax_attention(q, q, q, backend="nope")


@pytest.mark.parametrize("T", [1, 63, 100, 128])
@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_chunked_linear_attention_matches_step_loop(T, chunk):
    torch.manual_seed(T + chunk)
    q, k = torch.randn(2, T, 3, 8), torch.randn(2, T, 3, 8)
    v = torch.randn(2, T, 3, 5)
    o, S = linear_attention(q, k, v, chunk_size=chunk, output_final_state=True)
    o_ref, S_ref = linear_attention_loop(q, k, v, scale=8**-0.5)
    assert _rel_err(o.double(), o_ref) < 1e-5
    assert _rel_err(S.double(), S_ref) < 1e-5


def test_linear_attention_state_carries_across_a_split():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 100, 2, 8) for _ in range(3))
    full, S_full = linear_attention(q, k, v, chunk_size=16, output_final_state=True)
    a, S_a = linear_attention(q[:, :37], k[:, :37], v[:, :37], chunk_size=16, output_final_state=True)
    b, S_b = linear_attention(q[:, 37:], k[:, 37:], v[:, 37:], chunk_size=16, initial_state=S_a, output_final_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S_b, S_full, rtol=1e-5, atol=1e-5)


def test_linear_attention_step_matches_chunked():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))
    o, _ = linear_attention(q, k, v, chunk_size=8)
    S = torch.zeros(1, 2, 8, 8)
    steps = []
    for t in range(20):
        o_t, S = linear_attention_step(q[:, t], k[:, t], v[:, t], S)
        steps.append(o_t)
    torch.testing.assert_close(torch.stack(steps, 1), o, rtol=1e-5, atol=1e-5)


def test_linear_attention_gradients_match_loop():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 19, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    o, _ = linear_attention(q, k, v, chunk_size=8)
    g = torch.autograd.grad(o.sum(), (q, k, v))
    o2, _ = linear_attention_loop(q, k, v, scale=0.5)
    g2 = torch.autograd.grad(o2.sum(), (q, k, v))
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "arch,backends", [("softmax_attention", ["naive", "sdpa"]), ("linear_attention", ["chunked"])]
)
def test_mixer_step_reproduces_forward_and_backends_agree(arch, backends):
    spec = registry.get(arch)
    cfg = MixerConfig(d_model=32, n_heads=4, chunk_size=8)
    torch.manual_seed(0)
    ref = spec.build(cfg, backends[0])
    x = torch.randn(2, 21, 32)
    y = ref(x)
    for b in backends[1:]:
        other = spec.build(cfg, b)
        other.load_state_dict(ref.state_dict())
        torch.testing.assert_close(other(x), y, rtol=1e-5, atol=1e-5)
    state = ref.init_state(2)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = ref.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-5)


def test_gqa_mixer_state_bytes():
    spec = registry.get("softmax_attention")
    m = spec.build(MixerConfig(d_model=64, n_heads=8, n_kv_heads=2), "sdpa")
    assert m.state_bytes(batch=3, seq_len=100) == 2 * 3 * 100 * 2 * 8 * 4
    lin = registry.get("linear_attention").build(MixerConfig(d_model=64, n_heads=8), "chunked")
    assert lin.state_bytes(1, 10) == lin.state_bytes(1, 10_000)


def test_short_conv_step_matches_forward():
    from archbench.mixers.common import ShortConv

    torch.manual_seed(0)
    conv = ShortConv(6, kernel=4, bias=True)
    x = torch.randn(2, 11, 6)
    y = conv(x)
    state = conv.init_state(2)
    steps = []
    for t in range(11):
        y_t, state = conv.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-6)
    # causal: the future does not leak into the past
    x2 = x.clone()
    x2[:, 6:] += 1
    torch.testing.assert_close(conv(x2)[:, :6], y[:, :6])


@pytest.mark.parametrize("T", [1, 2, 3, 17])
@pytest.mark.parametrize("bias,activation", [(True, True), (False, False), (True, False)])
def test_causal_conv_matches_conv1d(T, bias, activation):
    """The CPU fused conv (shifted multiply-adds, hand-written backward) computes what
    nn.Conv1d with left padding does, values and all three gradients, also when T < kernel."""
    from archbench.mixers.common import causal_conv

    torch.manual_seed(0)
    C, K = 5, 4
    conv = torch.nn.Conv1d(C, C, K, groups=C, padding=K - 1, bias=bias).double()
    x = torch.randn(3, T, C, dtype=torch.float64, requires_grad=True)
    ref = conv(x.transpose(1, 2))[..., :T].transpose(1, 2)
    ref = torch.nn.functional.silu(ref) if activation else ref
    out = causal_conv(x, conv.weight[:, 0, :], conv.bias, activation)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    wrt = [x, conv.weight] + ([conv.bias] if bias else [])
    torch.testing.assert_close(torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g))
    # and gradcheck on the function itself (first order; the backward is once-differentiable)
    w = conv.weight[:, 0, :].detach().requires_grad_()
    b = conv.bias.detach().requires_grad_() if bias else None
    assert torch.autograd.gradcheck(lambda x, w: causal_conv(x, w, b, activation), (x, w))


def test_short_conv_keeps_the_input_dtype():
    from archbench.mixers.common import ShortConv

    conv = ShortConv(6, kernel=4, bias=True)  # fp32 weights
    x = torch.randn(2, 9, 6, dtype=torch.bfloat16, requires_grad=True)
    y = conv(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and conv.conv.weight.grad.dtype == torch.float32


def test_dispatch_records_the_kernel_that_ran():
    from archbench.ops.dispatch import recording

    q = torch.randn(1, 8, 2, 4)
    with recording() as outer:
        softmax_attention(q, q, q, backend="sdpa")
        with recording() as inner:
            linear_attention(q, q, q)
    assert inner == {"torch.linear_attention_chunked"}
    assert outer == {"torch.sdpa", "torch.linear_attention_chunked"}
    softmax_attention(q, q, q)  # outside any recording: a no-op, no error


def test_linear_attention_auto_is_the_reference_off_cuda():
    from archbench.ops.dispatch import recording

    q = torch.randn(1, 8, 2, 4)
    with recording() as seen:
        o_auto, _ = linear_attention(q, q, q, backend="auto")
    o_ref, _ = linear_attention(q, q, q, backend="torch")
    assert seen == {"torch.linear_attention_chunked"} and torch.equal(o_auto, o_ref)


@needs_fla
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [64, 65])  # 65: the linear-attention mixer's value + normaliser column
def test_fla_linear_attention_matches_reference(dtype, V):
    dtype = half(dtype)
    torch.manual_seed(0)
    B, T, H, K = 2, 300, 4, 64
    q, k = (torch.randn(B, T, H, K, device=FLA_DEVICE) * 0.3 for _ in range(2))
    v = torch.randn(B, T, H, V, device=FLA_DEVICE)
    s0 = torch.randn(B, H, K, V, device=FLA_DEVICE)
    leaves = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
    o, S = linear_attention(*leaves, initial_state=s0, output_final_state=True, backend="fla")
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o_ref, S_ref = linear_attention(*ref_leaves, initial_state=s0, output_final_state=True, backend="torch")
    tol = 5e-3 if dtype == torch.float32 else 3e-2
    assert _rel_err(o.float(), o_ref) < tol and _rel_err(S.float(), S_ref) < tol
    w = torch.randn_like(o_ref)
    grads = torch.autograd.grad((o.float() * w).sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * w).sum(), ref_leaves)
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert _rel_err(g.float(), g_ref) < 2 * tol, name


class _CudaLike:
    """What ``resolve_backend`` reads of a tensor, for a CUDA bf16 tensor on a machine without one."""

    is_cuda, dtype = True, torch.bfloat16


def test_auto_is_resolved_in_one_place(monkeypatch):
    """``ops.prologue.resolve_backend``: explicit names pass (checked against the op's choices); ``auto``
    takes the first fused package that imports and takes the inputs, on CUDA tensors only, else the fallback."""
    from archbench.ops import prologue
    from archbench.ops.prologue import resolve_backend

    cpu = torch.zeros(1)
    assert resolve_backend("op", "auto", cpu) == "torch" and resolve_backend("op", "fla", cpu) == "fla"
    with pytest.raises(ValueError, match="unknown op backend 'nope'; choose one of torch, fla, auto"):
        resolve_backend("op", "nope", cpu)
    monkeypatch.setattr(prologue.importlib.util, "find_spec", lambda name: object() if name in ("mamba_ssm", "fla") else None)
    ssd = dict(choices=("torch", "mamba_ssm", "fla", "auto"), fused=("mamba_ssm", "fla"))
    assert resolve_backend("ssd", "auto", _CudaLike(), **ssd) == "mamba_ssm"
    assert resolve_backend("ssd", "auto", _CudaLike(), **ssd, takes=lambda p: p == "fla") == "fla"
    assert resolve_backend("ssd", "auto", _CudaLike(), **ssd, takes=False) == "torch"
    assert resolve_backend("ssd", "auto", cpu, **ssd) == "torch"
    attention = dict(choices=("torch", "sdpa", "flash_attn", "auto"), fused="flash_attn", half_only=True, fallback="sdpa")
    assert resolve_backend("attention", "auto", _CudaLike(), **attention) == "sdpa"  # flash_attn does not import here
