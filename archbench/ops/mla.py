"""Multi-head Latent Attention (MLA; DeepSeek-AI, 2024, "DeepSeek-V2", arXiv 2405.04434): softmax
attention whose keys and values are up-projected from one shared low-rank latent per token.

Per token s the layer caches a latent c_s in R^r (r = kv_lora_rank, much smaller than 2 H d) and
one rotary key k^R_s in R^{d_R} shared by all heads (decoupled RoPE). Head h's key and value are

    k_{s,h} = [W_UK,h c_s ; k^R_s],   v_{s,h} = W_UV,h c_s,   W_UK,h in R^{d_n x r}, W_UV,h in R^{d_v x r}

and with q_{t,h} = [q^N_{t,h} ; q^R_{t,h}] (RoPE on the q^R part only)

    o_{t,h} = sum_{s <= t} softmax_s(scale (q^N_{t,h} . W_UK,h c_s + q^R_{t,h} . k^R_s)) W_UV,h c_s.

Two forms compute it (``mla``):

* up-projected (``absorb=False``, training / prefill): materialise k and v for every head, then
  causal softmax attention with q, k of dim d_n + d_R and v of dim d_v (``softmax_attention``:
  the ``torch`` reference or fused ``sdpa``). Time O(T^2 H (d_n + d_R + d_v) + T r H (d_n + d_v)).
* absorbed (``absorb=True``, decode): W_UK,h moves onto the query, q~_{t,h} = W_UK,h^T q^N_{t,h}
  in R^r, and W_UV,h onto the output. The scores are then q~ . c_s + q^R . k^R_s, i.e.
  multi-query attention in latent space with one key [c_s ; k^R_s] of dim r + d_R and one value
  c_s of dim r shared by all H heads, followed by o_{t,h} = W_UV,h (sum_s p_s c_s). Time per
  decoded token O(S H (r + d_R)) and it reads only the latent cache: S (r + d_R) values, which is
  why MLA's decode state (and KV bytes) is the latent cache, not 2 S H d.

Layout: q_nope [B, T, H, d_n], q_rope [B, T, H, d_R] (already rotated), c [B, S, r],
k_rope [B, S, d_R] (already rotated), w_uk [H, d_n, r], w_uv [H, d_v, r]. Queries are the last T
of the S positions (bottom-right aligned). Returns o [B, T, H, d_v].
"""

from __future__ import annotations

import torch
from torch import Tensor

from archbench.ops.prologue import resolve_backend
from archbench.ops.softmax_attention import softmax_attention

BACKENDS = ("torch", "sdpa")


def _check(q_nope, q_rope, c, k_rope, w_uk, w_uv) -> None:
    if q_nope.dim() != 4 or q_rope.dim() != 4 or c.dim() != 3 or k_rope.dim() != 3:
        raise ValueError("mla expects q_nope, q_rope [B, T, H, d], c [B, S, r] and k_rope [B, S, d_R]")
    B, T, H, dn = q_nope.shape
    S, r = c.shape[1], c.shape[2]
    if q_rope.shape[:3] != (B, T, H) or k_rope.shape[:2] != (B, S) or q_rope.shape[-1] != k_rope.shape[-1]:
        raise ValueError(
            f"mla: q_rope {tuple(q_rope.shape)} and k_rope {tuple(k_rope.shape)} do not match q_nope {tuple(q_nope.shape)}, c {tuple(c.shape)}"
        )
    if w_uk.shape != (H, dn, r) or w_uv.dim() != 3 or w_uv.shape[0] != H or w_uv.shape[2] != r:
        raise ValueError(
            f"mla expects w_uk [H, d_n, r] = {(H, dn, r)} and w_uv [H, d_v, r]; got {tuple(w_uk.shape)}, {tuple(w_uv.shape)}"
        )
    if T > S:
        raise ValueError(f"mla: more queries ({T}) than cached tokens ({S})")


def mla(
    q_nope: Tensor, q_rope: Tensor, c: Tensor, k_rope: Tensor, w_uk: Tensor, w_uv: Tensor,
    scale: float | None = None, absorb: bool = False, backend: str = "torch",
) -> Tensor:
    """Causal MLA (see the module docstring); ``absorb`` picks the latent-space (decode) form,
    ``backend`` the softmax-attention kernel (``torch`` reference or ``sdpa``)."""
    resolve_backend("mla", backend, q_nope, choices=BACKENDS)
    _check(q_nope, q_rope, c, k_rope, w_uk, w_uv)
    H, dr = q_nope.shape[2], q_rope.shape[-1]
    if scale is None:
        scale = (q_nope.shape[-1] + dr) ** -0.5
    if absorb:
        q_lat = torch.einsum("bthn,hnr->bthr", q_nope, w_uk.to(q_nope.dtype))
        q = torch.cat([q_lat, q_rope], dim=-1)
        k = torch.cat([c, k_rope], dim=-1)[:, :, None]  # one latent key shared by every head
        o_lat = softmax_attention(q, k, c[:, :, None], causal=True, scale=scale, backend=backend)
        return torch.einsum("bthr,hvr->bthv", o_lat, w_uv.to(o_lat.dtype))
    k_nope = torch.einsum("bsr,hnr->bshn", c, w_uk.to(c.dtype))
    v = torch.einsum("bsr,hvr->bshv", c, w_uv.to(c.dtype))
    k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, H, dr)], dim=-1)
    q = torch.cat([q_nope, q_rope], dim=-1)
    return softmax_attention(q, k, v, causal=True, scale=scale, backend=backend)
