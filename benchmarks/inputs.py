"""Inputs for every reference op, shared by the op benchmarks (op_speed.py, test_ops_bench.py, regression.py).

A speed number means something only next to the inputs that produced it, so the three benchmark
entry points build their inputs here, in one place. ``op_cases(shape)`` returns, for each op in
``archbench.ops``, a zero-argument callable that runs the op's pure-PyTorch reference
(``backend="torch"``) on fixed random inputs and returns its output tensor, together with the
input tensors (so a caller can make them require gradients or reuse them for a baseline kernel).

The inputs follow the ops' own conventions: normalised keys for the delta rules, log-space decays
in (-inf, 0) for the gated ops, a negative diagonal w and a low-rank pair (a, b = -a * s) for
DPLR, softplus step sizes and negative A for the state-space ops. Values come from a seeded CPU
generator and are then moved to the device, so every device and every run sees the same numbers.

``device_sync(device)`` is the barrier a timer needs: CUDA kernels run asynchronously, so a
timed callable on a GPU must end in ``torch.cuda.synchronize()``; on the CPU there is nothing to
wait for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from archbench import ops


@dataclass(frozen=True)
class Shape:
    """Sizes of one benchmark point. Attention-like ops use [batch, seq_len, heads, head_dim]."""

    batch: int = 1
    seq_len: int = 512
    heads: int = 4
    head_dim: int = 64
    scan_dim: int = 256  # selective scan channels (Mamba's d_inner)
    scan_state: int = 16  # selective scan state size N
    ssd_state: int = 64  # SSD state size N (one B/C group)
    nsa_block: int = 32  # NSA block length l
    nsa_blocks: int = 4  # NSA selected blocks n
    nsa_window: int = 128  # NSA sliding window W


@dataclass(frozen=True)
class Case:
    """One op on fixed inputs: ``fn()`` returns the op's output; ``inputs`` are the tensors it reads."""

    fn: Callable[[], torch.Tensor]
    inputs: tuple[torch.Tensor, ...]


def device_sync(device: str | torch.device) -> Callable[[], None]:
    """The function a timed callable must end with on ``device``: CUDA synchronise, or nothing on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return _no_sync


def _no_sync() -> None:
    return None


def train_call(fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """A training call of ``fn``: forward, then the gradients with respect to ``inputs`` of the
    output against a fixed random output gradient (gradient mode on, whatever the caller's mode),
    as ``archbench.bench`` does for fwd_bwd cells. Not the gradient of the output's sum: that is
    a stride-0 expanded tensor, which sends batched matmuls in the backward pass down a slow
    per-matrix path that real training never takes (the delta rule's training call took 1.3x as long)."""
    grad_out: list[torch.Tensor] = []

    def call():
        with torch.enable_grad():
            out = fn()
            if not grad_out:  # drawn once, from a seeded generator, on the output's device
                gen = torch.Generator().manual_seed(1)
                grad_out.append(torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device))
            return torch.autograd.grad(out, inputs, grad_outputs=grad_out[0])

    return call


def op_cases(
    shape: Shape = Shape(),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = False,
    seed: int = 0,
    backend: str = "torch",
) -> dict[str, Case]:
    """Every op on random inputs of ``shape``, on its reference (``backend="torch"``) or, with
    ``backend="auto"``, on whatever fused kernel the op picks; ``requires_grad`` makes all
    inputs gradient leaves."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K = shape.batch, shape.seq_len, shape.heads, shape.head_dim
    Dm, N = shape.scan_dim, shape.scan_state

    def randn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen)

    def rand(*s: int) -> torch.Tensor:
        return torch.rand(*s, generator=gen)

    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, K)
    a = -F.normalize(randn(B, T, H, K), dim=-1)
    raw = {
        "q": q,
        "k": k,
        "v": v,
        "kn": F.normalize(k, dim=-1),
        "g": F.logsigmoid(randn(B, T, H)),
        "gk": F.logsigmoid(randn(B, T, H, K)) / 16,
        "beta": rand(B, T, H),
        "w": -0.6 * torch.sigmoid(randn(B, T, H, K)),
        "a": a,
        "b": -a * rand(B, T, H, K),
        "dt": F.softplus(randn(B, T, H)),
        "A": -rand(H) - 0.5,
        "Bs": randn(B, T, 1, shape.ssd_state),
        "Cs": randn(B, T, 1, shape.ssd_state),
        "u": randn(B, T, Dm),
        "delta": F.softplus(randn(B, T, Dm)),
        "A_scan": -rand(Dm, N) - 0.5,
        "B_scan": randn(B, T, N),
        "C_scan": randn(B, T, N),
        "k1": randn(B, T, 1, K),
        "v1": randn(B, T, 1, K),
        "g_cmp": torch.sigmoid(randn(B, T, H)),
        "g_slc": torch.sigmoid(randn(B, T, H)),
        "g_swa": torch.sigmoid(randn(B, T, H)),
    }
    x = {name: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for name, t in raw.items()}

    def case(fn: Callable[[], torch.Tensor], *names: str) -> Case:
        return Case(fn, tuple(x[n] for n in names))

    def first(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        return out[0] if isinstance(out, tuple) else out

    ref = {"backend": backend}
    nsa_kw = {"block_size": shape.nsa_block, "block_count": shape.nsa_blocks, "window": shape.nsa_window}
    return {
        "softmax_attention": case(
            lambda: ops.softmax_attention(x["q"], x["k"], x["v"], causal=True, **ref), "q", "k", "v"
        ),
        "nsa": case(
            lambda: ops.nsa(x["q"], x["k1"], x["v1"], x["g_cmp"], x["g_slc"], x["g_swa"], **nsa_kw, **ref),
            "q", "k1", "v1", "g_cmp", "g_slc", "g_swa",
        ),
        "linear_attention": case(lambda: first(ops.linear_attention(x["q"], x["k"], x["v"], **ref)), "q", "k", "v"),
        "simple_gla": case(lambda: first(ops.simple_gla(x["q"], x["k"], x["v"], x["g"], **ref)), "q", "k", "v", "g"),
        "gla": case(lambda: first(ops.gla(x["q"], x["k"], x["v"], x["gk"], **ref)), "q", "k", "v", "gk"),
        "delta_rule": case(
            lambda: first(ops.delta_rule(x["q"], x["kn"], x["v"], x["beta"], **ref)), "q", "kn", "v", "beta"
        ),
        "gated_delta_rule": case(
            lambda: first(ops.gated_delta_rule(x["q"], x["kn"], x["v"], x["g"], x["beta"], **ref)),
            "q", "kn", "v", "g", "beta",
        ),
        "dplr": case(
            lambda: first(ops.dplr(x["q"], x["k"], x["v"], x["w"], x["a"], x["b"], **ref)),
            "q", "k", "v", "w", "a", "b",
        ),
        "ssd": case(
            lambda: first(ops.ssd(x["v"], x["dt"], x["A"], x["Bs"], x["Cs"], **ref)), "v", "dt", "A", "Bs", "Cs"
        ),
        "selective_scan": case(
            lambda: first(ops.selective_scan(x["u"], x["delta"], x["A_scan"], x["B_scan"], x["C_scan"], **ref)),
            "u", "delta", "A_scan", "B_scan", "C_scan",
        ),
    }  # fmt: skip
