"""The example architecture of docs/adding-an-architecture.md: its op against a literal float64 loop, and its size."""

from pathlib import Path

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


def test_example_stays_small_and_flags_its_reference():
    """docs/adding-an-architecture.md's promise: the whole example (op, mixer with its entry, test) in
    three files and under 200 lines, in the catalogue's vocabulary (one backend flagged the reference)."""
    import example_arch
    from archbench import registry

    files = [Path(example_arch.__file__).with_name(n) for n in ("ema.py", "mixer.py")] + [Path(__file__)]
    assert sorted(p.name for p in Path(example_arch.__file__).parent.glob("*.py")) == ["__init__.py", "ema.py", "mixer.py"]
    assert sum(len(p.read_text().splitlines()) for p in files) <= 200
    spec = registry.get("example_ema")
    assert spec.reference.name == spec.resolve_backend("reference", "cpu") == spec.resolve_backend("auto", "cpu")
