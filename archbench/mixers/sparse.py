"""Sparse attention: a static pattern (sliding window, block-sparse local + global) or a
dynamic, content-chosen one (Native Sparse Attention).

All three keep the projections of softmax attention (``archbench.mixers.attention``):
q = x W_q, k = x W_k, v = x W_v with grouped-query sharing (n_kv_heads), o W_o, and RoPE
at absolute positions (the KV caches hold rotated keys), and restrict which keys each query may see.

**Sliding-window attention** (Beltagy et al., 2020, Longformer's local attention; the
causal form used by Mistral): query t sees keys t-W+1 .. t, W = ``config.window`` (512 when
None). Time O(T W d) with a kernel that skips masked blocks (flash-attn, FlexAttention, the
banded reference), O(W d) per decoded token; the decode state is a ring KV cache of W slots,
so its size stops growing at W tokens.

**Block-sparse attention** (Zaheer et al., 2020, BigBird; Beltagy et al., 2020): at the
granularity of blocks of l = ``config.block_size`` tokens, query block i sees key block j <= i
iff j > i - n_local (sliding blocks) or j < n_global (global blocks at the start, which every
query sees), and inside the diagonal block only the keys at or before the query. n_local =
ceil(window / l) when ``config.window`` is set, else 3 (BigBird's three sliding blocks, made
causal: the current block and the two before it); n_global = 2 (BigBird's global blocks; with
causality a global block can only be read, so global *queries* add nothing). BigBird's random
blocks are off. Time O(T (n_local + n_global) l d); the decode state keeps only the global
blocks and the last n_local blocks, since no later query can see anything else.

**Native Sparse Attention** (Yuan et al., 2025): three branches per query, mixed by sigmoid
gates computed from x (one per head and branch): attention over compressed blocks, attention
over the top-n blocks chosen by the compressed scores, and a sliding window; see
``archbench.ops.nsa``. Compression here is learned but small: a block's compressed key is
W_ck (sum_i w_i k_{jl+i}) with per-position pooling weights w (initialised to 1/l, i.e. mean
pooling) and a head-shared linear map W_ck (initialised to the identity); values alike. The
three branches share one set of keys and values (fla's layer does the same; the paper also
allows separate ones). Decode keeps the whole KV cache plus the compressed blocks.

Backends (registry name -> op backend): ``flash_attn`` (flash-attn's window_size), ``flex``
(FlexAttention block masks, compiled; CUDA, and CPU in fp32/bf16), ``sdpa`` (torch SDPA with a
boolean mask; banded for the window), ``naive`` (pure-PyTorch reference), ``fla`` (fla's NSA
Triton kernels), ``chunked`` (NSA's pure-PyTorch reference). Decode steps use the reference or
SDPA: compiling a FlexAttention kernel per cache length would cost more than it saves.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from archbench.mixers.attention import QKVProjections, attention_spec, decode_backend, naive_reference
from archbench.mixers.base import MixerConfig, ParallelMixer
from archbench.mixers.common import cache_append, empty_cache, prefilled_cache
from archbench.ops.nsa import fla_shape_reason, nsa
from archbench.ops.softmax_attention import flex_unavailable_reason, masked_attention, softmax_attention
from archbench.spec import Backend, Complexity, Unsupported, always, fla_and_reference, requires_flash_attn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def requires_flex(device: str, dtype: str | None = None) -> str | None:
    """FlexAttention: CUDA, or CPU in fp32/bf16 (compiled by inductor's CPU template)."""
    return flex_unavailable_reason(device, _DTYPES.get(dtype) if dtype else None)


def flex_backward(device: str, dtype: str | None = None) -> str | None:
    """FlexAttention has no backward on CPU (torch raises at the call)."""
    if not device.startswith("cuda"):
        return "FlexAttention has no backward on CPU; use backend sdpa or naive for fwd_bwd / task cells"
    return None


def flex_backend(description: str) -> Backend:
    """FlexAttention (compiled; CUDA, and CPU in fp32/bf16 for the forward)."""
    return Backend("flex", description, requires_flex, flex_backward)


class _QKV(QKVProjections, ParallelMixer):
    """The projections (and RoPE) of softmax attention, in a parallel-form mixer."""


# ---- sliding window ----------------------------------------------------------------------


class SlidingWindowAttention(_QKV):
    backends = (
        Backend("flash_attn", "flash-attn window_size=(W-1, 0) (Dao, 2023)", requires_flash_attn),
        flex_backend("torch FlexAttention with a sliding-window block mask (compiled)"),
        Backend("sdpa", "torch SDPA on query chunks with a banded boolean mask", always),
        naive_reference("pure-PyTorch banded reference (chunks of queries x C+W-1 keys)"),
    )

    def __init__(self, config: MixerConfig, backend: str = "sdpa"):
        super().__init__(config, backend)
        self.window = config.window or 512
        self._init_proj(config)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v = self._project(x)
        o = softmax_attention(q, k, v, causal=True, window=self.window, backend=self.op_backend)
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, {"k": self._ring(k), "v": self._ring(v), "pos": x.shape[1]}

    def _capacity(self, seq_len: int) -> int:
        """The ring cache's slots after ``seq_len`` tokens, grown exactly as ``step`` grows it."""
        cap, W = min(16, self.window), self.window
        while cap < min(seq_len, W):
            cap += min(cap, W - cap)
        return cap

    def _ring(self, k: torch.Tensor) -> torch.Tensor:
        """[B, T, Hkv, d] -> the ring cache after T tokens: token p in slot p mod W."""
        T, W = k.shape[1], self.window
        if T >= W:  # the last W tokens, T - W + i going to slot (T - W + i) mod W = (i + T) mod W
            return torch.roll(k[:, T - W :], shifts=T % W, dims=1).contiguous()
        ring = k.new_zeros(k.shape[0], self._capacity(T), *k.shape[2:])
        ring[:, :T] = k
        return ring

    def init_state(self, batch: int) -> dict[str, Any]:
        """A ring KV cache: it grows (doubling) up to W slots, then token p overwrites slot p mod W."""
        cap = min(16, self.window)
        shape = (batch, cap, self.config.kv_heads, self.config.hd)
        w = self.qkv.weight
        return {"k": w.new_zeros(shape), "v": w.new_zeros(shape), "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        p, W = state["pos"], self.window
        q, k, v = self._project(x_t[:, None], offset=p)
        cap = state["k"].shape[1]
        if p == cap and cap < W:  # still filling: grow, the cache is in position order
            grow = min(cap, W - cap)
            state["k"] = torch.cat([state["k"], state["k"].new_zeros(state["k"][:, :grow].shape)], dim=1)
            state["v"] = torch.cat([state["v"], state["v"].new_zeros(state["v"][:, :grow].shape)], dim=1)
        slot = p % W
        state["k"][:, slot] = k[:, 0]
        state["v"][:, slot] = v[:, 0]
        state["pos"] = p + 1
        n = min(p + 1, W)
        # every cached key is within the window; the order of keys does not matter to softmax
        backend = decode_backend(self.op_backend, keep=("torch", "flash_attn"))
        o = softmax_attention(q, state["k"][:, :n], state["v"][:, :n], causal=False, backend=backend)
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, min(seq_len, self.window))


# ---- block sparse (BigBird / Longformer, causal) -----------------------------------------

_PATTERNS: dict = {}


def block_sparse_mask_fn(block_size: int, n_local: int, n_global: int, offset: int = 0):
    """mask_fn(q_idx, kv_idx) of the causal local + global block pattern (q at offset + q_idx).

    One function object per pattern, so FlexAttention's compiled code and masks are reused.
    """
    key = (block_size, n_local, n_global, offset)
    if key not in _PATTERNS:

        def fn(q_idx, kv_idx):
            pos = q_idx + offset
            qb, kb = pos // block_size, kv_idx // block_size
            return (kv_idx <= pos) & ((qb - kb < n_local) | (kb < n_global))

        _PATTERNS[key] = fn
    return _PATTERNS[key]


N_GLOBAL_BLOCKS = 2  # BigBird's global blocks
N_LOCAL_BLOCKS = 3  # BigBird's sliding blocks, when config.window is None


def block_sparse_pattern(config: MixerConfig) -> tuple[int, int]:
    """(n_local, n_global) blocks of the default pattern for ``config``."""
    n_local = math.ceil(config.window / config.block_size) if config.window else N_LOCAL_BLOCKS
    return n_local, N_GLOBAL_BLOCKS


class BlockSparseAttention(_QKV):
    backends = (
        flex_backend("torch FlexAttention with the block mask (compiled)"),
        Backend("sdpa", "torch SDPA with a dense boolean mask", always),
        naive_reference("pure-PyTorch dense masked reference"),
    )

    def __init__(
        self,
        config: MixerConfig,
        backend: str = "flex",
        n_global_blocks: int | None = None,
        n_local_blocks: int | None = None,
    ):
        super().__init__(config, backend)
        self.block = config.block_size
        default_local, default_global = block_sparse_pattern(config)
        n_local_blocks = default_local if n_local_blocks is None else n_local_blocks
        n_global_blocks = default_global if n_global_blocks is None else n_global_blocks
        if n_local_blocks < 1 or n_global_blocks < 0:
            raise ValueError(
                f"need n_local_blocks >= 1 and n_global_blocks >= 0 (got {n_local_blocks}, {n_global_blocks})"
            )
        self.n_local, self.n_global = n_local_blocks, n_global_blocks
        self._init_proj(config)

    def _attend(self, q, k, v, backend: str) -> torch.Tensor:
        off = k.shape[1] - q.shape[1]
        fn = block_sparse_mask_fn(self.block, self.n_local, self.n_global, off)
        key = ("block_sparse", self.block, self.n_local, self.n_global, off)
        return masked_attention(q, k, v, fn, backend=backend, key=key)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v = self._project(x)
        y = self.out(self._attend(q, k, v, self.op_backend).flatten(2))
        if not want_state:
            return y, None
        T = x.shape[1]
        if T == 0:
            return y, self.init_state(x.shape[0])
        g = min(T, self.n_global * self.block)
        # past the global blocks, step keeps [local_start(T - 1), T); before, lstart = T
        lstart = self._local_start(T - 1) if T > g else T
        return y, {
            "gk": k[:, :g].clone(), "gv": v[:, :g].clone(),
            "lk": k[:, lstart:].clone(), "lv": v[:, lstart:].clone(),
            "lstart": lstart, "pos": T,
        }  # fmt: skip


    def _local_start(self, pos: int) -> int:
        """First position kept in the local cache once the token at ``pos`` is in."""
        return max(self.n_global * self.block, (pos // self.block - self.n_local + 1) * self.block)

    def _cache_len(self, seq_len: int) -> int:
        if seq_len <= 0:
            return 0
        g = min(seq_len, self.n_global * self.block)
        return g + max(0, seq_len - self._local_start(seq_len - 1))

    def init_state(self, batch: int) -> dict[str, Any]:
        """Global-block tokens (kept forever) + the local tokens that later queries can still see."""
        w = self.qkv.weight
        empty = w.new_zeros(batch, 0, self.config.kv_heads, self.config.hd)
        return {"gk": empty, "gv": empty, "lk": empty, "lv": empty, "lstart": 0, "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        p = state["pos"]
        q, k, v = self._project(x_t[:, None], offset=p)
        if p < self.n_global * self.block:
            state["gk"] = torch.cat([state["gk"], k], dim=1)
            state["gv"] = torch.cat([state["gv"], v], dim=1)
            state["lstart"] = p + 1
        else:
            if state["lk"].shape[1] == 0:
                state["lstart"] = p
            start = self._local_start(p)
            drop = max(0, start - state["lstart"])
            state["lk"] = torch.cat([state["lk"][:, drop:], k], dim=1)
            state["lv"] = torch.cat([state["lv"][:, drop:], v], dim=1)
            state["lstart"] += drop
        state["pos"] = p + 1
        keys = torch.cat([state["gk"], state["lk"]], dim=1)
        vals = torch.cat([state["gv"], state["lv"]], dim=1)
        # everything cached is visible to this query: plain attention over the pattern's keys
        o = softmax_attention(q, keys, vals, causal=False, backend=decode_backend(self.op_backend))
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, self._cache_len(seq_len))


# ---- native sparse attention ----------------------------------------------------------------


def nsa_fla_limits(config: MixerConfig) -> str | None:
    """The shapes fla's NSA kernels take (``Backend.limits``): None, or why not and what to change."""
    reason = fla_shape_reason(config.n_heads, config.kv_heads, config.block_size, config.block_count)
    if reason is None:
        return None
    return (
        f"{reason}: set n_kv_heads (e.g. {max(1, config.n_heads // 16)} for {config.n_heads} heads), "
        "block_count >= 3 and block_size >= 2 * next_pow2(block_count), or use backend chunked"
    )


class NSA(_QKV):
    """Native Sparse Attention (Yuan et al., 2025): compressed, selected and sliding-window branches over
    one set of keys and values, mixed by per-head sigmoid gates (module docstring)."""

    backends = fla_and_reference(
        "fla parallel_nsa Triton kernels (needs H/Hkv a power of 2 >= 16)",
        "pure-PyTorch reference (block-major dispatch of selected blocks)", limits=nsa_fla_limits,
    )

    def __init__(self, config: MixerConfig, backend: str = "chunked"):
        super().__init__(config, backend)
        self.block, self.count = config.block_size, config.block_count
        self.window = config.window or 512
        h, hd = config.n_heads, config.hd
        reason = nsa_fla_limits(config) if backend == "fla" else None
        if reason:
            raise Unsupported(f"NSA backend 'fla': {reason}")
        self._init_proj(config)
        self.gate = nn.Linear(config.d_model, 3 * h)  # per head: compressed, selected, window
        self.pool = nn.Parameter(torch.full((2, self.block), 1.0 / self.block))  # key / value pooling
        self.cmp_k = nn.Linear(hd, hd, bias=False)
        self.cmp_v = nn.Linear(hd, hd, bias=False)
        with torch.no_grad():
            self.cmp_k.weight.copy_(torch.eye(hd))
            self.cmp_v.weight.copy_(torch.eye(hd))

    def compress(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, S, Hkv, d] -> the S // l complete blocks' compressed keys and values."""
        B, S, Hkv, hd = k.shape
        n, l = S // self.block, self.block
        kb = k[:, : n * l].reshape(B, n, l, Hkv, hd)
        vb = v[:, : n * l].reshape(B, n, l, Hkv, hd)
        k_cmp = self.cmp_k(torch.einsum("bnlhd,l->bnhd", kb, self.pool[0].to(k.dtype)))
        v_cmp = self.cmp_v(torch.einsum("bnlhd,l->bnhd", vb, self.pool[1].to(v.dtype)))
        return k_cmp, v_cmp

    def _gates(self, x: torch.Tensor):
        g = torch.sigmoid(self.gate(x)).unflatten(-1, (self.config.n_heads, 3))
        return g.unbind(-1)

    def _forward(self, x: torch.Tensor, want_state: bool) -> tuple[torch.Tensor, dict[str, Any] | None]:
        q, k, v = self._project(x)
        k_cmp, v_cmp = self.compress(k, v)
        g_cmp, g_slc, g_swa = self._gates(x)
        o = nsa(
            q, k, v, g_cmp, g_slc, g_swa,
            block_size=self.block, block_count=self.count, window=self.window,
            k_cmp=k_cmp, v_cmp=v_cmp, backend=self.op_backend,
        )  # fmt: skip
        y = self.out(o.flatten(2))
        if not want_state:
            return y, None
        return y, prefilled_cache(x.shape[1], k=k, v=v) | {"kc": k_cmp.contiguous(), "vc": v_cmp.contiguous()}


    def init_state(self, batch: int) -> dict[str, Any]:
        """KV cache (doubling capacity) and the compressed blocks completed so far."""
        kv = (self.config.kv_heads, self.config.hd)
        empty = self.qkv.weight.new_zeros(batch, 0, *kv)
        return empty_cache(self.qkv.weight, batch, k=kv, v=kv) | {"kc": empty, "vc": empty}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = state["len"]
        q, k, v = self._project(x_t[:, None], offset=n)
        n = cache_append(state, k=k[:, 0], v=v[:, 0])
        keys, vals = state["k"][:, :n], state["v"][:, :n]
        if n % self.block == 0:  # a block just completed: compress it
            kc, vc = self.compress(keys[:, n - self.block :], vals[:, n - self.block :])
            state["kc"] = torch.cat([state["kc"], kc], dim=1)
            state["vc"] = torch.cat([state["vc"], vc], dim=1)
        g_cmp, g_slc, g_swa = self._gates(x_t[:, None])
        o = nsa(
            q, keys, vals, g_cmp, g_slc, g_swa,
            block_size=self.block, block_count=self.count, window=self.window,
            k_cmp=state["kc"], v_cmp=state["vc"], backend="torch",
        )  # fmt: skip
        return self.out(o.flatten(2))[:, 0], state

    def state_bytes(self, batch: int, seq_len: int) -> int:
        return self._kv_bytes(batch, seq_len) + self._kv_bytes(batch, seq_len // self.block)


# ---- analytic FLOPs -----------------------------------------------------------------------


def _proj_flops(config: MixerConfig, batch: int, seq_len: int, extra_out: int = 0) -> float:
    h, hkv, hd, d = config.n_heads, config.kv_heads, config.hd, config.d_model
    return 2.0 * batch * seq_len * d * ((h + 2 * hkv) * hd + extra_out) + 2.0 * batch * seq_len * h * hd * d


def _window_pairs(seq_len: int, window: int) -> int:
    """sum_t min(t + 1, W): the (query, key) pairs of causal sliding-window attention."""
    w = min(window, seq_len)
    return w * (w + 1) // 2 + (seq_len - w) * window


def sliding_window_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + QK^T and PV over the sum_t min(t+1, W) visible pairs."""
    pairs = _window_pairs(seq_len, config.window or 512)
    return _proj_flops(config, batch, seq_len) + 4.0 * batch * config.n_heads * config.hd * pairs


def block_sparse_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections + QK^T and PV over the visible pairs of the local + global block pattern."""
    l = config.block_size
    n_local, n_global = block_sparse_pattern(config)
    pairs = 0
    for qb in range(-(-seq_len // l)):
        m = min(l, seq_len - qb * l)  # queries in this block
        earlier = set(range(max(0, qb - n_local + 1), qb)) | set(range(min(n_global, qb)))
        pairs += m * l * len(earlier) + m * (m + 1) // 2  # full earlier blocks + causal diagonal
    return _proj_flops(config, batch, seq_len) + 4.0 * batch * config.n_heads * config.hd * pairs


def nsa_flops(config: MixerConfig, batch: int, seq_len: int) -> float:
    """Projections and gates + compression + the three branches' (query, key) pairs.

    Compressed: query t sees (t + 1) // l blocks; selected: min(n, i_t + 1) blocks of which the
    current one holds t mod l + 1 visible keys; window: min(t + 1, W) keys.
    """
    l, n, W = config.block_size, config.block_count, config.window or 512
    h, hd, T = config.n_heads, config.hd, seq_len
    nb, r = T // l, T % l
    cmp_pairs = l * nb * (nb - 1) // 2 + nb * (r + 1)  # sum_{u=1}^{T} floor(u / l)
    slc_pairs = 0
    for c in range(-(-T // l)):
        m = min(l, T - c * l)
        slc_pairs += m * (min(n, c + 1) - 1) * l + m * (m + 1) // 2
    compress = 2.0 * batch * nb * config.kv_heads * hd * (2 * l + 2 * hd)
    mix = 4.0 * batch * h * hd * (cmp_pairs + slc_pairs + _window_pairs(T, W))
    return _proj_flops(config, batch, seq_len, extra_out=3 * h) + compress + mix


SPECS = (
    attention_spec(
        name="sliding_window_attention",
        family="sparse/static",
        description="Causal sliding-window attention, ring KV cache (Beltagy et al., 2020; Mistral, 2023)",
        paper="Longformer: The Long-Document Transformer (arXiv 2004.05150)",
        complexity=Complexity("O(T W d)", "O(T d) fused, O(T W) reference", "O(W d) per token", "O(W d) ring KV cache"),
        backends=SlidingWindowAttention.backends,
        factory=SlidingWindowAttention,
        flops=sliding_window_flops,
        time_exponent=1.0,
    ),
    attention_spec(
        name="block_sparse_attention",
        family="sparse/static",
        description="Causal block-sparse attention: sliding + global blocks (BigBird, Zaheer et al., 2020)",
        paper="Big Bird: Transformers for Longer Sequences (arXiv 2007.14062)",
        complexity=Complexity("O(T (n_local + n_global) l d)", "O(T d) flex, O(T^2) naive/sdpa mask", "O((n_local + n_global) l d) per token", "O((n_local + n_global) l d) KV cache"),
        backends=BlockSparseAttention.backends,
        factory=BlockSparseAttention,
        flops=block_sparse_flops,
        time_exponent=1.0,
    ),
    attention_spec(
        name="nsa",
        family="sparse/dynamic",
        description="Native Sparse Attention: compressed + top-n selected blocks + window, gated (Yuan et al., 2025)",
        paper="Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention (arXiv 2502.11089)",
        complexity=Complexity("O(T (T/l + n l + W) d)", "O(T d + T H T/l)", "O((S/l + n l + W) d) per token", "O(S d) KV cache + O(S/l d) compressed blocks"),
        backends=NSA.backends,
        factory=NSA,
        flops=nsa_flops,
    ),
)
