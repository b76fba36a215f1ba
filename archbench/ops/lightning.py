"""Lightning Attention: linear attention with a fixed exponential decay per head, as in MiniMax-01.

Per head h, with row vectors q_t, k_t in R^{1xK}, v_t in R^{1xV} and state S_t in R^{KxV}:

    S_t = exp(-s_h) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

with a decay rate s_h > 0 fixed per head and layer. MiniMax-01 (MiniMax, 2025, "MiniMax-01:
Scaling Foundation Models with Lightning Attention", arXiv 2501.08313) takes ALiBi's geometric
slopes, shrunk with depth so that deeper layers remember longer,

    s_h = 2^{-8 (h + 1) / H} * (1 - l / (L - 1 + 1e-5) + 1e-5)      (layer l of L; ``minimax_slopes``),

and no read-out scale (scale = 1). "Lightning" names the tiled computation (Qin et al., 2024,
arXiv 2401.04658): intra-block scores with the decay matrix e^{-s (i - j)}, inter-block reads
of the carried state. That is the chunked form of ``archbench.ops.gla.simple_gla`` with the
constant log-decay g_h = -s_h, which this op calls (reference and fla kernel alike): a thin
variant, as RetNet is.

Fused backend (``backend="fla"``): ``fla.ops.simple_gla.chunk_simple_gla`` with ``g_gamma = -s``.
fla's own ``chunk_lightning_attn`` is the same kernel behind a fixed decay schedule,
g_h = -(8 / H)(1 - l / L) h (head 0 never forgets), which is not MiniMax-01's; passing the
slopes to the kernel directly keeps the reference and the fused path on the same decays.
Decode: ``simple_gla_step`` (fla's ``fused_recurrent_simple_gla`` with ``g_gamma``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archbench.ops.gla import simple_gla, simple_gla_step


def minimax_slopes(n_heads: int, layer_idx: int = 0, num_layers: int = 1) -> torch.Tensor:
    """MiniMax-01's decay rates s_h [H] (fp32) for layer ``layer_idx`` of ``num_layers``."""
    if n_heads < 1 or num_layers < 1 or not 0 <= layer_idx < num_layers:
        raise ValueError(
            f"minimax_slopes needs n_heads >= 1 and 0 <= layer_idx < num_layers (got {n_heads}, {layer_idx}, {num_layers})"
        )
    rate = (2.0 ** (-8.0 / n_heads)) ** torch.arange(1, n_heads + 1, dtype=torch.float64)
    depth = 1.0 - layer_idx / (num_layers - 1 + 1e-5) + 1e-5
    return (rate * depth).float()


def _log_decay(slopes: torch.Tensor, H: int) -> torch.Tensor:
    if slopes.shape != (H,):
        raise ValueError(f"lightning_attention expects slopes [H] = ({H},), got {tuple(slopes.shape)}")
    return -slopes


def lightning_attention(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor,
    scale: float | None = None, initial_state: Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(-s_h) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    q, k [B, T, H, K], v [B, T, H, V], slopes [H] (decay rates s_h >= 0); scale defaults to
    K**-0.5 (MiniMax-01 uses 1). Returns ``(o [B, T, H, V], final_state [B, H, K, V] or None)``.
    """
    g = _log_decay(slopes, q.shape[2] if q.dim() == 4 else -1)
    return simple_gla(q, k, v, g, scale, initial_state, output_final_state, chunk_size, backend)


def lightning_attention_step(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, state: Tensor, scale: float | None = None, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """One decode step: q, k [B, H, K], v [B, H, V], slopes [H], state [B, H, K, V] (fp32)."""
    return simple_gla_step(q, k, v, _log_decay(slopes, q.shape[1]), state, scale, backend)
