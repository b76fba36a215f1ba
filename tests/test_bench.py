"""One cell in-process (no worker): every mode at mixer and model level produces a sane row."""

import pytest

from archbench.bench import run_cell
from archbench.suite import parse_suite

FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "budget_s": 0.02, "energy": False, "decode_tokens": 4}


def _cells(level, archs=("softmax_attention", "mamba2", "hybrid_samba")):
    raw = {
        "name": "b",
        "defaults": {"d_model": 32, "n_heads": 2, "d_state": 8, "window": 16, "level": level, "n_layers": 2,
                     "vocab_size": 64, "measure": FAST},
        "sweep": {"arch": list(archs), "backend": "reference", "seq_len": 48, "mode": ["fwd", "fwd_bwd", "prefill", "decode"]},
    }  # fmt: skip
    return parse_suite(raw).cells()


@pytest.mark.parametrize("level", ["mixer", "model"])
def test_every_mode_measures(level):
    for cell in _cells(level):
        row = run_cell(cell.model_dump())
        assert row["time_median_s"] > 0 and row["tokens_per_s"] > 0 and row["params"] > 0, cell.label
        if cell.mode == "decode":
            assert row["decode_tokens"] == 4 and row["latency_per_token_s"] > 0 and row["state_bytes"] > 0
            assert row["bound"] == "memory" and row["flops"] > 0 and row["arithmetic_intensity"] < 10
        else:
            assert row["flops"] > 0 and row["arithmetic_intensity"] > 0
        if level == "model":
            assert "[model L=2]" in cell.label


def test_decode_rows_name_the_step_kernels():
    """Decode runs each family's one-token step: the row says which, as prefill rows name theirs."""
    rows = {c.arch: run_cell(c.model_dump()) for c in _cells("mixer", ("linear_attention", "mamba2", "gated_deltanet"))
            if c.mode == "decode"}  # fmt: skip
    assert "torch.linear_attention_step" in rows["linear_attention"]["kernels"]
    assert "torch.ssd_step" in rows["mamba2"]["kernels"]
    assert "torch.gated_delta_rule_step" in rows["gated_deltanet"]["kernels"]


def test_fwd_bwd_rows_count_saved_activations_and_parameter_bytes():
    """Activation bytes follow the family's complexity: quadratic attention keeps its T x T
    scores for backward, a chunked SSM keeps O(T) tensors; doubling T shows which is which."""
    saved = {}
    for T in (128, 256):  # whole 64-token chunks: the SSM's intra-chunk blocks stay 64 x 64
        for c in _cells("mixer", ("softmax_attention", "mamba2")):
            if c.mode == "fwd_bwd":
                d = c.model_dump()
                d["seq_len"] = T
                row = run_cell(d)
                assert row["param_bytes"] == 4 * row["params"] and row["activation_method"] == "autograd_saved_tensors"
                saved[c.arch, T] = row["activation_bytes"]
    assert saved["softmax_attention", 256] / saved["softmax_attention", 128] > 2.7  # the naive reference: T^2 scores
    assert saved["mamba2", 256] / saved["mamba2", 128] < 2.2  # linear in T
    fwd = run_cell(next(c for c in _cells("mixer", ("mamba2",)) if c.mode == "fwd").model_dump())
    assert "activation_bytes" not in fwd and fwd["param_bytes"] > 0


def test_model_level_adds_layers_mlp_and_head():
    mixer = {c.arch: run_cell(c.model_dump()) for c in _cells("mixer", ("mamba2",)) if c.mode == "fwd"}
    model = {c.arch: run_cell(c.model_dump()) for c in _cells("model", ("mamba2",)) if c.mode == "fwd"}
    assert model["mamba2"]["params"] > 2 * mixer["mamba2"]["params"]  # two blocks + embedding
    assert model["mamba2"]["flops"] > 2 * mixer["mamba2"]["flops"]


def test_unknown_level_is_a_suite_error(tmp_path):
    from archbench.suite import SuiteError, load_suite

    p = tmp_path / "s.yaml"
    p.write_text("name: a\nsweep: {arch: softmax_attention, level: network}\n")
    with pytest.raises(SuiteError, match="sweep.level: unknown level 'network'; allowed: mixer, model"):
        load_suite(p)


def test_pin_cpus_records_the_cores_and_cuda_graph_is_gpu_only():
    import os

    cell = _cells("mixer", ("softmax_attention",))[0].model_dump()
    cell["measure"].update(pin_cpus=True, cuda_graph=True, roofline=False)
    cell["threads"] = 1
    row = run_cell(cell)
    if hasattr(os, "sched_getaffinity"):
        assert row["cpu_affinity"] == sorted(os.sched_getaffinity(0))[:1] and row["threads_used"] == 1
    assert "cuda_graph" not in row  # asked for, but a CPU cell is timed eagerly without comment


def test_graph_workload_drops_the_reset_only_when_captured():
    from archbench.bench import Workload, graph_workload
    from archbench.measure.cuda_graph import Graphed

    seen = {}

    def replay():
        return None

    def ok_capture(call, device, warmup, setup):
        seen.update(call=call, setup=setup, warmup=warmup)
        return Graphed(replay, True)

    def call():
        return None

    def reset():
        return None

    decode = Workload(call, 16, setup=reset, extra={"decode_tokens": 16})
    work, g = graph_workload(decode, "cuda", 3, capture_fn=ok_capture)
    assert seen == {"call": call, "setup": reset, "warmup": 3} and g.used
    assert work.call is replay and work.setup is None and work.extra == {"decode_tokens": 16}
    failed = lambda call, device, warmup, setup: Graphed(call, False, "capture failed: RuntimeError: sync")  # noqa: E731
    work, g = graph_workload(decode, "cuda", 3, capture_fn=failed)
    assert work is decode and work.setup is reset and "capture failed" in g.reason


def test_a_graphed_workload_keeps_the_kernels_its_capture_named():
    from archbench.bench import Workload, graph_workload
    from archbench.measure.cuda_graph import Graphed
    from archbench.ops.dispatch import record, recording

    def call():
        record("fla.fused_recurrent_gla")

    def capture(call, device, warmup, setup):  # warm-up and capture run the Python call
        for _ in range(warmup + 1):
            call()
        return Graphed(lambda: None, True)  # the replay records nothing

    work, g = graph_workload(Workload(call, 1), "cuda", 2, capture_fn=capture)
    assert g.used and work.kernels == {"fla.fused_recurrent_gla"}
    with recording() as seen:
        work.call()
    assert not seen
    failed = lambda call, device, warmup, setup: Graphed(call, False, "capture failed")  # noqa: E731
    assert graph_workload(Workload(call, 1), "cuda", 2, capture_fn=failed)[0].kernels == frozenset()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="CUDA-graph replay needs a CUDA device")
def test_cuda_graph_replay_on_gpu():
    for cell in _cells("mixer", ("softmax_attention", "mamba2")):
        d = cell.model_dump()
        d["device"] = "cuda"
        d["measure"].update(cuda_graph=True, roofline=False)
        row = run_cell(d)  # raises if the cell fails; the runner adds the status
        print(cell.label, "cuda_graph", row["cuda_graph"], row["cuda_graph_reason"], row["kernels"], row["time_median_s"])
        assert row["time_median_s"] > 0 and row["kernels"], cell.label
        assert row["cuda_graph"] in (True, False) and (row["cuda_graph"] or row["cuda_graph_reason"]), cell.label


def test_a_failed_activation_count_keeps_the_row(monkeypatch):
    from archbench import bench

    class Refusing:
        method = "autograd_saved_tensors"

        def __init__(self, exclude=()):
            pass

        def __enter__(self):
            raise RuntimeError("saved tensor hooks are not supported here")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(bench, "SavedTensors", Refusing)
    cell = next(c for c in _cells("mixer", ("mamba2",)) if c.mode == "fwd_bwd")
    row = run_cell(cell.model_dump())
    assert row["time_median_s"] > 0 and row["param_bytes"] > 0
    assert row["activation_bytes"] is None and "saved tensor hooks" in row["activation_method"]


def test_cuda_graph_setting_picks_the_modes_it_covers():
    from archbench.bench import graphs_wanted

    assert graphs_wanted(True, "fwd_bwd", "cuda") and graphs_wanted(True, "decode", "cuda:1")
    assert graphs_wanted("decode", "decode", "cuda") and not graphs_wanted("decode", "prefill", "cuda")
    assert not graphs_wanted(False, "decode", "cuda") and not graphs_wanted(True, "decode", "cpu")
    raw = {"name": "g", "defaults": {"measure": {"cuda_graph": "decode"}}, "sweep": {"arch": "softmax_attention", "seq_len": 64}}
    assert parse_suite(raw).cells()[0].measure.cuda_graph == "decode"
    from archbench.suite import SuiteError

    raw["defaults"]["measure"]["cuda_graph"] = "prefill"
    with pytest.raises(SuiteError, match="cuda_graph"):
        parse_suite(raw)
