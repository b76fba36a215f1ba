"""The example architecture of docs/adding-an-architecture.md: its op against a literal float64 loop."""

import torch

from example_arch.ema import ema, ema_step


def _loop(x, a, h):
    out = []
    for t in range(x.shape[1]):
        h = a * h + (1 - a) * x[:, t]
        out.append(h)
    return torch.stack(out, 1), h


def test_chunked_and_step_forms_match_the_recurrence():
    torch.manual_seed(0)
    x, h0 = torch.randn(2, 19, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    a = torch.rand(6, dtype=torch.float64).requires_grad_()
    want, want_h = _loop(x, a, h0)
    for chunk in (1, 4, 19, 64):  # lengths that are not a multiple of the chunk, and one chunk
        got, got_h = ema(x, a, initial_state=h0, output_final_state=True, chunk_size=chunk)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_h, want_h, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(ema(x, a, initial_state=h0, chunk_size=4)[0].sum(), a)
    (g_want,) = torch.autograd.grad(want.sum(), a)
    torch.testing.assert_close(g, g_want, rtol=1e-10, atol=1e-10)
    y_t, _ = ema_step(x[:, 0], a, h0)
    torch.testing.assert_close(y_t, want[:, 0])
