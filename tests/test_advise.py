"""`archbench advise`: a ranking for one (T, B, mode) from measured rows, with its marks."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.report.advise import AdviseError, advise, format_advice


def _rows():
    rows = []
    for arch, backend, p, ref in (("softmax_attention", "sdpa", 2, False), ("mamba", "chunked", 1, True)):
        for T in (1024, 4096):
            t = 1e-3 * (T / 1024) ** p * (4 if arch == "mamba" else 1)
            rows.append(dict(key=f"{arch}{T}", run_id="r", arch=arch, backend=backend, mode="prefill", dtype="bfloat16",
                             device="cuda", env_device_name="GPU", batch=1, seq_len=T, d_model=64, n_heads=4,
                             status="ok", time_median_s=t, time_rel_iqr=0.3 if T == 4096 and arch == "mamba" else 0.01,
                             peak_mem_bytes=(T / 1024) ** p * 2**30, reference_backend=ref))  # fmt: skip
    rows.append(dict(rows[0], key="oom", seq_len=8192, status="oom", time_median_s=None))
    for arch, acc in (("softmax_attention", 0.99), ("mamba", 0.6)):
        rows.append(dict(key=f"t{arch}", arch=arch, backend="x", mode="task", task="mqar", status="ok",
                         task_score=acc, seq_len=64, batch=64))  # fmt: skip
    return pd.DataFrame(rows)


def test_measured_interpolated_extrapolated():
    (g,) = advise(_rows(), 1024, 1)
    assert [e["arch"] for e in g["entries"]] == ["softmax_attention", "mamba"]
    assert all(e["how"] == "measured" for e in g["entries"]) and g["entries"][0]["rows"][0]["key"] == "softmax_attention1024"
    (g,) = advise(_rows(), 2048, 1)
    by = {e["arch"]: e for e in g["entries"]}
    assert by["softmax_attention"]["how"] == "interpolated" and by["softmax_attention"]["latency_s"] == pytest.approx(4e-3)
    assert by["mamba"]["latency_s"] == pytest.approx(8e-3) and by["mamba"]["flags"]["reference"]
    assert by["mamba"]["flags"]["noisy"] and len(by["mamba"]["rows"]) == 2
    assert by["softmax_attention"]["accuracy"] == 0.99
    (g,) = advise(_rows(), 16384, 1)
    assert [e["arch"] for e in g["entries"]] == ["mamba"] and g["entries"][0]["flags"]["extrapolated"]
    assert g["excluded"] == [{"arch": "softmax_attention", "backend": "sdpa", "reason": "out of memory at T=8192"}]
    text = format_advice([g])
    assert "extrapolated" in text and "left out, out of memory at T=8192" in text


def test_memory_and_accuracy_filters():
    (g,) = advise(_rows(), 4096, 1, memory_gib=8)
    assert [e["arch"] for e in g["entries"]] == ["mamba"]  # softmax needs 16 GiB at 4096
    (g,) = advise(_rows(), 4096, 1, min_accuracy=0.9)
    assert [e["arch"] for e in g["entries"]] == ["softmax_attention"]
    with pytest.raises(AdviseError, match="nothing comparable"):
        advise(_rows(), 4096, 1, memory_gib=8, min_accuracy=0.9)
    with pytest.raises(AdviseError, match="no rows measured decode at batch 1"):
        advise(_rows(), 4096, 1, mode="decode")


def test_cli_exit_codes_and_help(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "rows.jsonl", "w") as f:
        for r in _rows().to_dict("records"):
            f.write(json.dumps({k: v for k, v in r.items() if v == v and v is not None}) + "\n")
    r = CliRunner()
    ok = r.invoke(main, ["advise", str(run), "--seq-len", "2048", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["groups"][0]["entries"][0]["how"] == "interpolated"
    bad = r.invoke(main, ["advise", str(run), "--seq-len", "2048", "--batch", "8"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "batch 8" in bad.output
    helped = r.invoke(main, ["advise", "--help"]).output
    assert "--seq-len" in helped and "--memory-gib" in helped and "archbench advise RUN --seq-len 4096" in helped
