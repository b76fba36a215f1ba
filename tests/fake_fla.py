"""A stand-in for flash-linear-attention's ``fused_recurrent_*`` functions, for CPU tests.

fla's kernels need triton and a GPU, so on CPU the tests check the decode-step adapters
(``*_step(..., backend="fla")``) against this stand-in: a plain token loop written from fla's
documented semantics ([B, T, H, D] layout, state [B, H, K, V], log-space gates, ``scale`` on the
read-out), not from archbench's own reference. It checks the plumbing (one-token shapes,
argument names, gate and state conventions, dtypes) the way fla would receive it; whether the
real kernels agree is what ``test_fused_backend_matches_reference`` checks on a GPU.
"""

from __future__ import annotations

import sys
import types

import torch


def _loop(q, k, v, scale, initial_state, output_final_state, update):
    """o_t = scale q_t S_t with S_t = update(S_{t-1}, t); fp32 state, outputs in q's dtype."""
    B, T, H, K = q.shape
    S = initial_state.float().clone() if initial_state is not None else q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    outs = []
    for t in range(T):
        S = update(S, t)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].float(), S) * scale)
    return torch.stack(outs, 1).to(q.dtype), (S if output_final_state else None)


def _outer(k, v, t):
    return torch.einsum("bhk,bhv->bhkv", k[:, t].float(), v[:, t].float())


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False):
    assert not normalize
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _loop(q, k, v, scale, initial_state, output_final_state, lambda S, t: S + _outer(k, v, t))


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False):
    assert (g is None) != (g_gamma is None), "exactly one of g (per step) and g_gamma (constant) is given"
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def update(S, t):
        decay = (g[:, t] if g is not None else g_gamma[None].expand(q.shape[0], -1)).float().exp()
        return decay[..., None, None] * S + _outer(k, v, t)

    return _loop(q, k, v, scale, initial_state, output_final_state, update)


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False):
    assert gv is None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _loop(
        q, k, v, scale, initial_state, output_final_state,
        lambda S, t: gk[:, t].float().exp()[..., None] * S + _outer(k, v, t),
    )  # fmt: skip


def _delta(q, k, v, beta, scale, initial_state, output_final_state, g=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def update(S, t):
        if g is not None:
            S = g[:, t].float().exp()[..., None, None] * S
        kt, bt = k[:, t].float(), beta[:, t].float()
        err = v[:, t].float() - torch.einsum("bhk,bhkv->bhv", kt, S)  # what the memory misses under k_t
        return S + torch.einsum("bhk,bhv->bhkv", kt, bt[..., None] * err)

    return _loop(q, k, v, scale, initial_state, output_final_state, update)


def fused_recurrent_delta_rule(
    q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False
):
    assert not use_qk_l2norm_in_kernel
    return _delta(q, k, v, beta, scale, initial_state, output_final_state)


def fused_recurrent_gated_delta_rule(
    q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False
):
    assert not use_qk_l2norm_in_kernel
    return _delta(q, k, v, beta, scale, initial_state, output_final_state, g=g)


def fused_recurrent_dplr_delta_rule(q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=False):
    """fla's docstring, in its [V, K] state notation: S_t = S_{t-1} (Diag(exp(gk_t)) + a_t b_t^T) + v_t k_t^T,
    i.e. ``a`` reads the old state and ``b`` writes what was read."""
    scale = 1.0 if scale is None else scale

    def update(S, t):
        read = torch.einsum("bhk,bhkv->bhv", a[:, t].float(), S)
        write = torch.einsum("bhk,bhv->bhkv", b[:, t].float(), read)
        return gk[:, t].float().exp()[..., None] * S + write + _outer(k, v, t)

    return _loop(q, k, v, scale, initial_state, output_final_state, update)


MODULES = {
    "fla.ops.linear_attn": {"fused_recurrent_linear_attn": fused_recurrent_linear_attn},
    "fla.ops.simple_gla": {"fused_recurrent_simple_gla": fused_recurrent_simple_gla},
    "fla.ops.gla": {"fused_recurrent_gla": fused_recurrent_gla},
    "fla.ops.delta_rule": {"fused_recurrent_delta_rule": fused_recurrent_delta_rule},
    "fla.ops.gated_delta_rule": {"fused_recurrent_gated_delta_rule": fused_recurrent_gated_delta_rule},
    "fla.ops.generalized_delta_rule": {"fused_recurrent_dplr_delta_rule": fused_recurrent_dplr_delta_rule},
}


def install(monkeypatch) -> None:
    """Put the stand-in at ``fla`` in ``sys.modules`` for one test (``monkeypatch`` undoes it)."""
    for name in ("fla", "fla.ops", *MODULES):
        module = types.ModuleType(name)
        for attr, fn in MODULES.get(name, {}).items():
            setattr(module, attr, fn)
        monkeypatch.setitem(sys.modules, name, module)
