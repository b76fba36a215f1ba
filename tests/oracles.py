"""What the op and mixer tests check against: literal float64 loops and the decode contract.

The oracles are the recurrences written one token at a time, as the papers write them, so that
a chunked or fused form is compared with the definition rather than with another fast form.
``assert_decode_matches_forward`` is the contract every mixer keeps: decoding token by token, from
an empty state or after a prefill, reproduces the parallel forward.
"""

from __future__ import annotations

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def delta_rule_loop(q, k, v, beta, g=None, n=1, scale=None, initial_state=None):
    """The (gated, per-channel, multi-step) delta rule, token by token in float64 (differentiable).

    Per token t: S <- Diag(exp(g_t)) S (g [B, T, H] one decay per head, [B, T, H, K] one per key
    channel, None for none), then n delta-rule steps S <- S + beta k^T (v - k S) on rows t*n + j
    (j = 0 .. n-1) of k [B, T*n, H, K], v [B, T*n, H, V] and beta [B, T*n, H], then
    o_t = scale q_t S. n = 1 is (Gated) DeltaNet or KDA, n > 1 DeltaProduct.
    Returns (o [B, T, H, V], final state [B, H, K, V]).
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    q, k, v, beta = (x.double() for x in (q, k, v, beta))
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if initial_state is None else initial_state.double()
    outs = []
    for t in range(T):
        if g is not None:
            decay = g[:, t].double().exp()
            S = S * (decay[..., None] if decay.dim() == 3 else decay[..., None, None])
        for i in range(t * n, t * n + n):
            read = torch.einsum("bhk,bhkv->bhv", k[:, i], S)
            S = S + beta[:, i, :, None, None] * k[:, i, :, :, None] * (v[:, i] - read)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) * scale)
    return torch.stack(outs, 1), S


def assert_decode_matches_forward(m, x, split, *, from_start=True, rtol=1e-7, atol=1e-8):
    """Decoding reproduces y = m(x): with ``from_start``, step by step from ``init_state``; and always
    ``prefill(x[:, :split])`` (its output y[:, :split]) followed by steps to the end. Returns y and
    the state after the last step."""
    T = x.shape[1]
    with torch.no_grad():
        y = m(x)
        if from_start:
            state, steps = m.init_state(x.shape[0]), []
            for t in range(T):
                y_t, state = m.step(x[:, t], state)
                steps.append(y_t)
            torch.testing.assert_close(torch.stack(steps, 1), y, rtol=rtol, atol=atol)
        y_pre, state = m.prefill(x[:, :split])
        torch.testing.assert_close(y_pre, y[:, :split], rtol=rtol, atol=atol)
        steps = []
        for t in range(split, T):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), y[:, split:], rtol=rtol, atol=atol)
    return y, state


def assert_grads_match(got, want, cotangents, inputs, names, tol):
    """The gradients with respect to ``inputs`` of sum_i <got_i, cotangent_i> and of the same with
    ``want`` are finite and agree (rel < tol), input by input."""
    g_got = torch.autograd.grad(sum((o * c).sum() for o, c in zip(got, cotangents)), inputs)
    g_want = torch.autograd.grad(sum((o * c).sum() for o, c in zip(want, cotangents)), inputs)
    for name, a, b in zip(names, g_got, g_want):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < tol, name
