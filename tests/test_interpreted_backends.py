"""Backends whose kernels are all Triton (fla) can run on a CPU under Triton's interpreter
(``TRITON_INTERPRET=1``) when named explicitly, to check them against the references; ``auto``,
a hybrid's ``fused`` and the bench never use them there (an interpreted kernel's time means nothing)."""

import pytest

from archbench import bench, hybrids, registry, spec
from archbench.ops.dispatch import triton_runs_on
from archbench.spec import ArchSpec, Backend, Complexity, Unsupported, requires_cuda_module

# `json` stands in for a Triton-only kernel package: importable everywhere
TRITON_ONLY = requires_cuda_module("json", "pip install it", interpretable=True)
CUDA_C = requires_cuda_module("json", "pip install it")
REF = Backend("ref", "reference", lambda device, dtype=None: None, reference=True)
FAKE = ArchSpec(
    "interp_fake", "test/interpreted", "", "", Complexity("", "", "", ""),
    (Backend("tritonkernel", "", TRITON_ONLY), Backend("cudakernel", "", CUDA_C), REF),
    factory=lambda c, b: None,
)  # fmt: skip


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setattr(spec, "triton_interpreted", lambda: True)


def test_without_the_interpreter_a_triton_backend_needs_cuda(monkeypatch):
    monkeypatch.setattr(spec, "triton_interpreted", lambda: False)
    assert "CUDA" in TRITON_ONLY("cpu")
    assert FAKE.resolve_backend("auto", "cpu") == "ref"


def test_the_interpreter_makes_a_triton_backend_available_on_cpu_but_never_chosen(interpreted):
    assert TRITON_ONLY("cpu") is None and TRITON_ONLY("cpu", "float32") is None
    assert "CUDA" in CUDA_C("cpu"), "CUDA C kernels do not run under the interpreter"
    assert not FAKE.backend("tritonkernel").auto_choice("cpu")
    assert FAKE.resolve_backend("auto", "cpu") == "ref"
    assert FAKE.resolve_backend("tritonkernel", "cpu") == "tritonkernel"  # by name: allowed
    assert hybrids.component_backend(FAKE, "fused", "cpu") == "ref"


def test_the_bench_refuses_to_time_an_interpreted_kernel(interpreted, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, FAKE.name, FAKE)
    cell = {"arch": FAKE.name, "backend": "tritonkernel", "device": "cpu", "dtype": "float32", "mode": "fwd"}
    with pytest.raises(Unsupported, match="only under Triton's interpreter"):
        bench.run_cell(cell)


def test_ops_accept_cpu_tensors_for_an_explicit_triton_kernel_only_when_interpreted(monkeypatch):
    import torch

    from archbench.ops import dispatch
    from archbench.ops.nsa import fla_unavailable_reason

    x = torch.zeros(1, 128, 16, 8)
    k = torch.zeros(1, 128, 1, 8)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    assert not triton_runs_on(x)
    assert "CUDA tensors" in fla_unavailable_reason(x, k, 64, 4)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: True)
    assert triton_runs_on(x)
    reason = fla_unavailable_reason(x, k, 64, 4)
    assert reason is None or "not installed" in reason  # the device no longer refuses; fla is an optional extra


def test_list_marks_a_backend_that_runs_only_interpreted(interpreted, monkeypatch):
    import json

    from click.testing import CliRunner

    from archbench.cli import main

    monkeypatch.setitem(registry._REGISTRY, FAKE.name, FAKE)
    out = CliRunner().invoke(main, ["list", "--json", "--device", "cpu", "--family", "test/interpreted"])
    assert out.exit_code == 0, out.output
    (entry,) = json.loads(out.output)
    marks = {b["name"]: (b["available"], b["interpreted"]) for b in entry["backends"]}
    assert marks == {"tritonkernel": (True, True), "cudakernel": (False, False), "ref": (True, False)}
    table = CliRunner().invoke(main, ["list", "--device", "cpu", "--family", "test/interpreted"]).output
    assert "◌ tritonkernel: Triton's interpreter only" in table
