"""The prologue every op runs before its math: shape checks, the default scale, the backend.

An op file reads like a paper section (the recurrence, the reference, the fused adapter); what is
the same in all of them lives here once, with one wording for its errors:

- ``check_recurrent``: q, k [B, T, H, K] and v [B, T, H, V], each further input in its layout
  (``beta=(beta, "B T H")``), the carried state [B, H, K, V], ``chunk_size >= 1``;
- ``resolve_backend``: the backend checked against the op's choices, and ``"auto"`` resolved to the
  fused library for CUDA tensors when it is importable (and takes the inputs), else ``"torch"``: the
  one place an op decides ``"auto"`` (the catalogue decides it for mixers: ``ArchSpec.resolve_backend``);
- ``prologue``: both, plus the default read-out scale K**-0.5, as the recurrent ops start;
- ``check_attention``: q [B, T, H, D] against k [B, S, Hkv, D] and v [B, S, Hkv, Dv] (S >= T, Hkv | H).

Layouts are written as dimension letters (``"B T H K"``) looked up in the sizes of q and v, so an
error names the layout it wanted and the shape it got.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch

BACKENDS = ("torch", "fla", "auto")
HALF = (torch.float16, torch.bfloat16)

Shaped = tuple[torch.Tensor | None, str]  # (tensor or None, its layout as dimension letters)


def resolve_backend(
    name: str,
    backend: str,
    x: torch.Tensor,
    *,
    choices: tuple[str, ...] = BACKENDS,
    fused: str | tuple[str, ...] = "fla",
    half_only: bool = False,
    takes: bool | Callable[[str], bool] = True,
    fallback: str = "torch",
) -> str:
    """``backend`` if it is one of ``choices``; ``"auto"`` is the first of ``fused`` (a package, or
    several in order of preference) that imports and whose kernel ``takes`` these inputs (a bool, or a
    function of the package asked only when ``auto`` gets that far), when x is a CUDA tensor (and
    fp16/bf16, with ``half_only``); else ``fallback``."""
    if backend not in choices:
        raise ValueError(f"unknown {name} backend {backend!r}; choose one of {', '.join(choices)}")
    if backend != "auto":
        return backend
    if x.is_cuda and (not half_only or x.dtype in HALF):
        for package in (fused,) if isinstance(fused, str) else fused:
            if importlib.util.find_spec(package) is not None and (takes(package) if callable(takes) else takes):
                return package
    return fallback


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def check_shapes(name: str, sizes: dict[str, int], **inputs: Shaped) -> None:
    """Each ``input=(tensor, "B T H")`` has the shape its layout names in ``sizes`` (None passes)."""
    for what, (x, layout) in inputs.items():
        if x is None:
            continue
        letters = layout.split()
        want = tuple(sizes[d] for d in letters)
        if tuple(x.shape) != want:
            raise ValueError(f"{name} expects {what} [{', '.join(letters)}] = {want}, got {tuple(x.shape)}")


def check_recurrent(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 1,
    **inputs: Shaped,
) -> dict[str, int]:
    """q, k [B, T, H, K], v [B, T, H, V], ``inputs`` in their layouts, initial_state [B, H, K, V],
    chunk_size >= 1; returns the sizes {B, T, H, K, V}."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name} expects q, k [B, T, H, K] and v [B, T, H, V]; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    sizes = {"B": B, "T": T, "H": H, "K": K, "V": v.shape[-1]}
    check_shapes(name, sizes, **inputs, initial_state=(initial_state, "B H K V"))
    check_chunk_size(chunk_size)
    return sizes


def prologue(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    scale: float | None,
    backend: str,
    *,
    half_only: bool = False,
    takes: bool | Callable[[str], bool] = True,
    **inputs: Shaped,
) -> tuple[float, str]:
    """``check_recurrent``, then ``(scale or K**-0.5, the resolved backend)``."""
    check_recurrent(name, q, k, v, initial_state, chunk_size, **inputs)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return scale, resolve_backend(name, backend, q, half_only=half_only, takes=takes)


def check_attention(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] with S >= T and H a multiple of Hkv."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name} expects q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv]")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if q.shape[1] > k.shape[1]:
        raise ValueError(f"{name}: more queries ({q.shape[1]}) than keys ({k.shape[1]})")
