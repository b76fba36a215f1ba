"""Sparse attention: sliding-window masks across backends, NSA against a brute-force oracle,
and the sparse mixers' decode steps, causality and state sizes."""

import importlib
import importlib.util
import time

import pytest
import torch

from archbench.mixers.base import MixerConfig
from archbench.mixers.sparse import (
    NSA,
    SPECS,
    BlockSparseAttention,
    SlidingWindowAttention,
    block_sparse_mask_fn,
)
from archbench.ops.nsa import (
    nsa,
    nsa_compress,
    nsa_compressed_attention,
    nsa_select_blocks,
    nsa_selected_attention,
)
from archbench.ops.softmax_attention import (
    _banded,
    flex_unavailable_reason,
    masked_attention,
    softmax_attention,
)
from fused_devices import FLA_DEVICE, half, needs_cuda_module, needs_fla

CUDA_FLASH = needs_cuda_module("flash_attn", "flash-attn's kernels")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def window_oracle(q, k, v, window, causal=True, scale=None):
    """Per query, softmax over the keys pos-W+1 .. pos (bottom-right aligned), float64."""
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        pos = S - T + t
        lo = 0 if window is None else max(0, pos - window + 1)
        hi = pos + 1 if causal else S
        for h in range(H):
            kh = h // (H // Hkv)
            p = torch.softmax(scale * torch.einsum("bd,bsd->bs", q[:, t, h], k[:, lo:hi, kh]), -1)
            out[:, t, h] = torch.einsum("bs,bsd->bd", p, v[:, lo:hi, kh])
    return out


def nsa_oracle(q, k, v, g_cmp, g_slc, g_swa, l, n, W, scale=None, k_cmp=None, v_cmp=None):
    """NSA literally: one query and one key/value head at a time (differentiable, any dtype).

    Returns (o, selected) with selected [B, T, Hkv, n] block ids (-1 = empty), best first.
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = D**-0.5 if scale is None else scale
    rows = []
    sel = torch.full((B, T, Hkv, n), -1, dtype=torch.long)
    for b in range(B):
        for t in range(T):
            pos = S - T + t
            nc, cur = (pos + 1) // l, pos // l
            outs = [None] * H
            for h in range(Hkv):
                if k_cmp is None:
                    kc = [k[b, j * l : (j + 1) * l, h].mean(0) for j in range(nc)]
                    vc = [v[b, j * l : (j + 1) * l, h].mean(0) for j in range(nc)]
                else:
                    kc = [k_cmp[b, j, h] for j in range(nc)]
                    vc = [v_cmp[b, j, h] for j in range(nc)]
                imp = [0.0] * max(nc, 1)
                o_cmp = {}
                for g in range(G):
                    hq = h * G + g
                    if nc:
                        p = torch.softmax(scale * torch.stack(kc) @ q[b, t, hq], 0)
                        for j in range(nc):
                            imp[j] += p[j].item()
                        o_cmp[hq] = p @ torch.stack(vc)
                    else:
                        o_cmp[hq] = torch.zeros_like(v[b, 0, h])
                chosen = [j for j in dict.fromkeys((cur, cur - 1, 0)) if j >= 0]
                rest = sorted((j for j in range(cur) if j not in chosen), key=lambda j: -imp[j])
                chosen = (chosen + rest)[:n]
                sel[b, t, h, : len(chosen)] = torch.tensor(chosen)
                toks = sorted(s for j in chosen for s in range(j * l, min((j + 1) * l, pos + 1)))
                lo = max(0, pos - W + 1) if W else pos + 1
                for g in range(G):
                    hq = h * G + g
                    qq = q[b, t, hq]
                    ps = torch.softmax(scale * k[b, toks, h] @ qq, 0)
                    o = g_cmp[b, t, hq] * o_cmp[hq] + g_slc[b, t, hq] * (ps @ v[b, toks, h])
                    if W:
                        pw = torch.softmax(scale * k[b, lo : pos + 1, h] @ qq, 0)
                        o = o + g_swa[b, t, hq] * (pw @ v[b, lo : pos + 1, h])
                    outs[hq] = o
            rows.append(torch.stack(outs))
    return torch.stack(rows).view(B, T, H, -1), sel


def _nsa_inputs(B=2, T=70, H=4, Hkv=2, D=16, Dv=12, S=None, dtype=torch.float64, seed=0, qscale=1.0):
    torch.manual_seed(seed)
    S = T if S is None else S
    q = torch.randn(B, T, H, D, dtype=dtype) * qscale
    k, v = torch.randn(B, S, Hkv, D, dtype=dtype), torch.randn(B, S, Hkv, Dv, dtype=dtype)
    gates = [torch.sigmoid(torch.randn(B, T, H, dtype=dtype)) for _ in range(3)]
    return q, k, v, gates


# ---- sliding window ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "T,S,hkv,W",
    [(37, 37, 4, 5), (100, 100, 2, 16), (63, 63, 1, 1), (5, 40, 1, 7), (70, 90, 2, 33), (129, 129, 4, 200)],
)
@pytest.mark.parametrize("dense", [1 << 16, 0], ids=["sdpa-dense-if-short", "sdpa-banded"])
def test_window_torch_and_sdpa_match_oracle(T, S, hkv, W, dense, monkeypatch):
    monkeypatch.setattr(importlib.import_module("archbench.ops.softmax_attention"), "DENSE_WINDOW_SCORES", dense)
    torch.manual_seed(T + W)
    q = torch.randn(2, T, 4, 16)
    k, v = torch.randn(2, S, hkv, 16), torch.randn(2, S, hkv, 16)
    ref = window_oracle(q, k, v, W)
    for backend in ("torch", "sdpa", "auto"):
        o = softmax_attention(q, k, v, window=W, backend=backend)
        assert o.shape == q.shape and o.dtype == q.dtype
        assert _rel(o.double(), ref) < 1e-5, backend


def test_window_without_causal_keeps_lower_bound():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8)
    ref = window_oracle(q, k, v, 6, causal=False)
    for backend in ("torch", "sdpa"):
        assert _rel(softmax_attention(q, k, v, causal=False, window=6, backend=backend).double(), ref) < 1e-5


@pytest.mark.parametrize("T", [1, 50, 64])
def test_window_covering_everything_is_causal_attention(T):
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, T, 4, 8) for _ in range(3))
    full = softmax_attention(q, k, v, backend="sdpa")
    for backend in ("torch", "sdpa"):
        for W in (T, T + 5):
            torch.testing.assert_close(softmax_attention(q, k, v, window=W, backend=backend), full)


@pytest.mark.parametrize("chunk", [16, 24, 64])
@pytest.mark.parametrize("slab", [None, 1])
def test_banded_reference_chunks_and_gradients(chunk, slab, monkeypatch):
    if slab is not None:  # one chunk per group: the group loop's pieces carry the gradients
        monkeypatch.setattr(importlib.import_module("archbench.ops.softmax_attention"), "_BANDED_SLAB", slab)
    torch.manual_seed(chunk)
    q = torch.randn(1, 45, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 45, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 45, 2, 8, dtype=torch.float64, requires_grad=True)
    o = _banded(q, k, v, 8**-0.5, window=11, chunk_size=chunk)
    ref = window_oracle(q, k, v, 11)
    assert _rel(o, ref) < 1e-10
    g = torch.autograd.grad((o * torch.cos(o)).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * torch.cos(ref)).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_window_rejects_bad_arguments():
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="window"):
        softmax_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="torch, sdpa, flex"):
        masked_attention(q, q, q, lambda a, b: b <= a, backend="nope")


def test_flex_on_cpu_matches_reference():
    """FlexAttention compiled on CPU (one shape): sliding window with GQA and the block-sparse mixer."""
    reason = flex_unavailable_reason("cpu", torch.float32)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 96, 4, 16), torch.randn(1, 96, 2, 16), torch.randn(1, 96, 2, 16)
    t0 = time.perf_counter()
    o = softmax_attention(q, k, v, window=20, backend="flex")
    if time.perf_counter() - t0 > 60:
        pytest.skip("compiling FlexAttention on this CPU took > 60 s; the result was not checked")
    assert _rel(o.double(), window_oracle(q, k, v, 20)) < 1e-5
    cfg = MixerConfig(d_model=64, n_heads=4, n_kv_heads=2, block_size=16, window=32)
    naive = BlockSparseAttention(cfg, "naive")
    flex = BlockSparseAttention(cfg, "flex")
    flex.load_state_dict(naive.state_dict())
    x = torch.randn(1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(flex(x), naive(x), rtol=1e-4, atol=1e-5)


@CUDA_FLASH
def test_flash_attn_window_matches_reference():
    torch.manual_seed(0)
    q = torch.randn(2, 300, 8, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(2, 300, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = softmax_attention(q.float(), k.float(), v.float(), window=77, backend="torch")
    o = softmax_attention(q, k, v, window=77, backend="flash_attn")
    assert _rel(o.float(), ref) < 2e-2


# ---- NSA ----------------------------------------------------------------------------------


@pytest.fixture(params=["gather", "dispatch"])
def slc_impl(request, monkeypatch):
    """Run the selected branch through the direct gather or the block-major dispatch form."""
    nsa_mod = importlib.import_module("archbench.ops.nsa")

    monkeypatch.setattr(nsa_mod, "_GATHER_MAX", 1 << 40 if request.param == "gather" else 0)
    return request.param


def test_nsa_matches_brute_force_oracle(slc_impl):
    q, k, v, g = _nsa_inputs()
    o = nsa(q, k, v, *g, block_size=8, block_count=3, window=16)
    ref, sel = nsa_oracle(q, k, v, *g, 8, 3, 16)
    assert o.shape == (2, 70, 4, 12)
    assert _rel(o, ref) < 1e-10
    _, p = nsa_compressed_attention(q, nsa_compress(k, 8), nsa_compress(v, 8), 8, 70, 16**-0.5)
    assert torch.equal(nsa_select_blocks(p, 8, 3, 70), sel)
    # float32 inputs: fp32 accumulation, still within 1e-4 of the float64 oracle
    o32 = nsa(q.float(), k.float(), v.float(), *(x.float() for x in g), block_size=8, block_count=3, window=16)
    assert o32.dtype == torch.float32 and _rel(o32.double(), ref) < 1e-4


@pytest.mark.parametrize("T,S,l,n,W", [(1, 45, 8, 3, 16), (33, 100, 16, 2, 10), (29, 29, 4, 5, 7)])
def test_nsa_decode_offsets_and_block_shapes(T, S, l, n, W, slc_impl):
    q, k, v, g = _nsa_inputs(B=1, T=T, S=S, H=4, Hkv=1, seed=T + S)
    o = nsa(q, k, v, *g, block_size=l, block_count=n, window=W)
    ref, _ = nsa_oracle(q, k, v, *g, l, n, W)
    assert _rel(o, ref) < 1e-10


@pytest.mark.parametrize("slab", [None, 1])
def test_nsa_selected_branch_gather_and_dispatch_agree(slab, monkeypatch):
    if slab is not None:  # dispatch in query chunks of one token; gradients cross the chunks
        monkeypatch.setattr(importlib.import_module("archbench.ops.nsa"), "_DISPATCH_SLAB", slab)
    q, k, v, _ = _nsa_inputs(B=2, T=90, H=6, Hkv=3)
    _, p = nsa_compressed_attention(q, nsa_compress(k, 8), nsa_compress(v, 8), 8, 90, 0.25)
    idx = nsa_select_blocks(p, 8, 4, 90)
    q, k, v = (x.detach().requires_grad_(True) for x in (q, k, v))
    a = nsa_selected_attention(q, k, v, idx, 8, 0.25, impl="gather")
    b = nsa_selected_attention(q, k, v, idx, 8, 0.25, impl="dispatch")
    torch.testing.assert_close(a, b)
    w = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(b, (q, k, v), w), torch.autograd.grad(a, (q, k, v), w))


def test_nsa_branches_in_the_limits():
    """block_count covering every block and window >= T: the selected and window branches are
    full causal attention; the compressed branch is attention over the mean-pooled blocks."""
    q, k, v, _ = _nsa_inputs(B=1, T=50, H=4, Hkv=2, Dv=16)
    one, zero = torch.ones(1, 50, 4, dtype=q.dtype), torch.zeros(1, 50, 4, dtype=q.dtype)
    full = softmax_attention(q, k, v, backend="torch")
    kw = dict(block_size=8, block_count=7, window=50)
    torch.testing.assert_close(nsa(q, k, v, zero, one, zero, **kw), full)
    torch.testing.assert_close(nsa(q, k, v, zero, zero, one, **kw), full)
    torch.testing.assert_close(nsa(q, k, v, None, one, None, **kw), full)
    # window branch alone with a short window is sliding-window attention
    torch.testing.assert_close(
        nsa(q, k, v, zero, zero, one, block_size=8, block_count=2, window=9),
        softmax_attention(q, k, v, window=9, backend="torch"),
    )
    # compressed branch alone: the first 7 tokens see no complete block (output 0)
    o_cmp = nsa(q, k, v, one, zero, zero, **kw)
    assert torch.count_nonzero(o_cmp[:, :7]) == 0
    kc, vc = nsa_compress(k, 8), nsa_compress(v, 8)
    t = 37  # sees blocks 0..3 (positions 0..31)
    kc, vc = kc[0, :4].repeat_interleave(2, dim=1), vc[0, :4].repeat_interleave(2, dim=1)  # [4 blocks, H, D]
    s = torch.einsum("hd,nhd->hn", q[0, t], kc) * 0.25
    torch.testing.assert_close(o_cmp[0, t], torch.einsum("hn,nhd->hd", s.softmax(-1), vc))


def test_nsa_gradients_match_oracle(slc_impl):
    q, k, v, g = _nsa_inputs(B=1, T=26, H=2, Hkv=1, D=8, Dv=8, seed=3)
    for x in (q, k, v, *g):
        x.requires_grad_(True)
    inputs = (q, k, v, *g)
    o = nsa(q, k, v, *g, block_size=4, block_count=3, window=6)
    ref, _ = nsa_oracle(q, k, v, *g, 4, 3, 6)
    grads = torch.autograd.grad((o * torch.sin(o)).sum(), inputs)
    grads_ref = torch.autograd.grad((ref * torch.sin(ref)).sum(), inputs)
    for a, b in zip(grads, grads_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_nsa_large_scores_stay_finite(slc_impl):
    """Sharp attention (scores in the hundreds): no inf/nan, still the oracle's output."""
    q, k, v, g = _nsa_inputs(B=1, T=40, H=4, Hkv=2, qscale=60.0, seed=5)
    o = nsa(q.float(), k.float(), v.float(), *(x.float() for x in g), block_size=8, block_count=3, window=12)
    ref, _ = nsa_oracle(q, k, v, *g, 8, 3, 12)
    assert torch.isfinite(o).all()
    assert _rel(o.double(), ref) < 1e-4


def test_nsa_given_compressed_blocks_and_errors():
    q, k, v, g = _nsa_inputs(B=1, T=30, H=2, Hkv=1, Dv=16)
    kc, vc = torch.randn(1, 3, 1, 16, dtype=q.dtype), torch.randn(1, 3, 1, 16, dtype=q.dtype)
    o = nsa(q, k, v, *g, block_size=8, block_count=2, window=5, k_cmp=kc, v_cmp=vc)
    ref, _ = nsa_oracle(q, k, v, *g, 8, 2, 5, k_cmp=kc, v_cmp=vc)
    assert _rel(o, ref) < 1e-10
    with pytest.raises(ValueError, match="torch, fla"):
        nsa(q, k, v, *g, block_size=8, backend="nope")
    with pytest.raises(ValueError, match="compressed blocks"):
        nsa(q, k, v, *g, block_size=8, k_cmp=kc[:, :2], v_cmp=vc[:, :2])


@needs_fla
def test_nsa_fla_matches_reference():
    torch.manual_seed(0)
    B, T, H, Hkv, D = 1, 512, 16, 1, 64
    dtype = half(torch.bfloat16)
    q = torch.randn(B, T, H, D, device=FLA_DEVICE, dtype=dtype)
    k, v = (torch.randn(B, T, Hkv, D, device=FLA_DEVICE, dtype=dtype) for _ in range(2))
    g = [torch.rand(B, T, H, device=FLA_DEVICE, dtype=dtype) for _ in range(3)]
    # block_count covering every block: the selection cannot differ between implementations
    kw = dict(block_size=64, block_count=8, window=128)
    ref = nsa(*(x.float() for x in (q, k, v, *g)), **kw, backend="torch")
    assert _rel(nsa(q, k, v, *g, **kw, backend="fla").float(), ref) < 2e-2
    # a real selection (4 of 8 blocks); near-ties may pick differently in bf16, so compare loosely
    kw = dict(block_size=64, block_count=4, window=128)
    ref = nsa(*(x.float() for x in (q, k, v, *g)), **kw, backend="torch")
    assert _rel(nsa(q, k, v, *g, **kw, backend="fla").float(), ref) < 5e-2


# ---- mixers -------------------------------------------------------------------------------


def _step_all(m, x):
    state = m.init_state(x.shape[0])
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = m.step(x[:, t], state)
            ys.append(y)
    return torch.stack(ys, 1), state


MIXER_CASES = [
    (SlidingWindowAttention, ["naive", "sdpa"], dict(window=7)),
    (BlockSparseAttention, ["naive", "sdpa"], dict(block_size=4, window=8)),
    (NSA, ["chunked"], dict(block_size=4, block_count=3, window=6)),
]


@pytest.mark.parametrize("cls,backends,extra", MIXER_CASES, ids=lambda c: getattr(c, "__name__", None))
def test_mixer_step_reproduces_forward_and_is_causal(cls, backends, extra):
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, **extra)
    torch.manual_seed(0)
    ref = cls(cfg, backends[0])
    if isinstance(ref, NSA):  # move the compression off its mean-pooling initialisation
        with torch.no_grad():
            ref.pool.add_(0.05 * torch.randn_like(ref.pool))
            ref.cmp_k.weight.add_(0.1 * torch.randn_like(ref.cmp_k.weight))
    x = torch.randn(2, 29, 32)
    with torch.no_grad():
        y = ref(x)
        for b in backends[1:]:
            other = cls(cfg, b)
            other.load_state_dict(ref.state_dict())
            torch.testing.assert_close(other(x), y, rtol=1e-5, atol=1e-5)
        x2 = x.clone()
        x2[:, 13:] += torch.randn_like(x2[:, 13:])
        y2 = ref(x2)
    torch.testing.assert_close(y2[:, :13], y[:, :13])
    assert not torch.allclose(y2[:, 13:], y[:, 13:])
    steps, _ = _step_all(ref, x)
    torch.testing.assert_close(steps, y, rtol=1e-4, atol=1e-5)


def test_sliding_window_state_is_bounded_by_the_window():
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, window=6)
    m = SlidingWindowAttention(cfg, "naive")
    assert m.state_bytes(1, 3) == 2 * 3 * 2 * 8 * 4
    assert m.state_bytes(2, 6) == m.state_bytes(2, 10_000) == 2 * 2 * 6 * 2 * 8 * 4
    _, state = _step_all(m, torch.randn(1, 20, 32))
    assert state["k"].shape[1] == 6 and state["pos"] == 20
    assert SlidingWindowAttention(MixerConfig(d_model=32, n_heads=4), "sdpa").window == 512


def test_block_sparse_pattern_and_bounded_state():
    fn = block_sparse_mask_fn(block_size=4, n_local=2, n_global=1)
    m = fn(torch.arange(16)[:, None], torch.arange(16)[None, :])
    assert m[13].nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13]
    assert m[5].nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4, 5]
    cfg = MixerConfig(d_model=32, n_heads=4, block_size=4, window=8)
    mix = BlockSparseAttention(cfg, "naive")
    assert (mix.n_local, mix.n_global) == (2, 2)
    _, state = _step_all(mix, torch.randn(1, 23, 32))
    cached = state["gk"].shape[1] + state["lk"].shape[1]
    assert mix.state_bytes(1, 23) == 2 * cached * 4 * 8 * 4
    assert mix.state_bytes(1, 1000) == mix.state_bytes(1, 10_000) <= 2 * (2 + 2) * 4 * 4 * 8 * 4


def test_nsa_mixer_state_bytes_and_fla_guard():
    cfg = MixerConfig(d_model=64, n_heads=4, n_kv_heads=2, block_size=8)
    m = NSA(cfg, "chunked")
    assert m.state_bytes(1, 80) == 2 * 80 * 2 * 16 * 4 + 2 * 10 * 2 * 16 * 4
    from archbench.run.worker import classify
    from archbench.spec import Unsupported

    with pytest.raises(Unsupported, match="power of 2 >= 16") as e:
        NSA(cfg, "fla")
    assert classify(e.value)[0] == "unsupported", "a shape the fused kernel does not take is a result, not an error"
    assert "4 / 2 = 2" in str(e.value) and "n_kv_heads" in str(e.value)
    with pytest.raises(Unsupported, match=r"block_size >= 2 \* next_pow2\(block_count\) = 32 \(got 8\)"):
        NSA(MixerConfig(d_model=64, n_heads=16, n_kv_heads=1, block_size=8, block_count=16), "fla")
    # fla always selects the first and the two latest blocks: with two slots it would drop one arbitrarily
    with pytest.raises(Unsupported, match=r"fewer than 3 slots \(block_count 2\)"):
        NSA(MixerConfig(d_model=64, n_heads=16, n_kv_heads=1, block_size=64, block_count=2), "fla")
    with pytest.raises(ValueError, match="naive"):
        SlidingWindowAttention(cfg, "chunked")


def test_specs_and_flops():
    names = {s.name: s for s in SPECS}
    assert names["sliding_window_attention"].family == "sparse/static"
    assert names["block_sparse_attention"].family == "sparse/static"
    assert names["nsa"].family == "sparse/dynamic"
    assert names["nsa"].resolve_backend("auto", "cpu") == "chunked"
    assert names["sliding_window_attention"].resolve_backend("auto", "cpu", "float16") in ("flex", "sdpa")
    cfg = MixerConfig(d_model=64, n_heads=4, block_size=8, block_count=3, window=16)
    for spec in SPECS:
        f1, f2 = spec.flops(cfg, 1, 256), spec.flops(cfg, 1, 512)
        assert 0 < f1 < f2 < 4 * f1  # sub-quadratic growth with a fixed window / block budget
        assert spec.build(cfg, spec.backend_names[-1])(torch.randn(1, 5, 64)).shape == (1, 5, 64)


PREFILL_CASES = [
    # sliding window W = 7 (cache at W slots from the start): T = 1, T < W, T = W, ring wraps
    (SlidingWindowAttention, "naive", dict(window=7), [1, 5, 7, 11, 16]),
    # W = 40: the cache grows 16 -> 32 -> 40 while filling, then wraps
    (SlidingWindowAttention, "sdpa", dict(window=40), [1, 16, 17, 33, 40, 45]),
    # block 4, two global + two local blocks: inside the global blocks, just past, and later
    (BlockSparseAttention, "naive", dict(block_size=4, window=8), [1, 3, 8, 9, 13, 23]),
    (BlockSparseAttention, "sdpa", dict(block_size=4, window=8), [5, 16]),
    # NSA: T < block, a complete block, T > window, several compressed blocks
    (NSA, "chunked", dict(block_size=4, block_count=3, window=6), [1, 3, 4, 9, 23]),
]


@pytest.mark.parametrize("cls,backend,extra,lengths", PREFILL_CASES, ids=lambda c: getattr(c, "__name__", None))
def test_mixer_prefill_continues_like_step(cls, backend, extra, lengths):
    """prefill gives forward's outputs and the cache step would have built; step continues exactly."""
    cfg = MixerConfig(d_model=32, n_heads=4, n_kv_heads=2, **extra)
    torch.manual_seed(0)
    m = cls(cfg, backend).double()
    if isinstance(m, NSA):
        with torch.no_grad():
            m.pool.add_(0.05 * torch.randn_like(m.pool))
            m.cmp_k.weight.add_(0.1 * torch.randn_like(m.cmp_k.weight))
    for T in lengths:
        x = torch.randn(2, T + 9, 32, dtype=torch.float64)
        with torch.no_grad():
            y = m(x)
            y_pre, state = m.prefill(x[:, :T])
            torch.testing.assert_close(y_pre, y[:, :T], rtol=1e-9, atol=1e-10)
            _, ref = _step_all(m, x[:, :T])
            assert state.keys() == ref.keys()
            for key, val in ref.items():
                if isinstance(val, torch.Tensor):
                    if key in ("k", "v") and "len" in ref:  # NSA: only the filled part is meaningful
                        val, state_val = val[:, : ref["len"]], state[key][:, : state["len"]]
                    else:
                        state_val = state[key]
                    assert state_val.shape == val.shape and state_val.dtype == val.dtype, (T, key)
                    torch.testing.assert_close(state_val, val, rtol=1e-9, atol=1e-10)
                else:
                    assert state[key] == val, (T, key)
            for t in range(T, x.shape[1]):
                y_t, state = m.step(x[:, t], state)
                torch.testing.assert_close(y_t, y[:, t], rtol=1e-9, atol=1e-10)
