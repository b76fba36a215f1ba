"""Tests for archbench.report: the self-contained HTML page built from result rows."""

from __future__ import annotations

import base64
import gzip
import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from archbench.report import render_html, write_html
from archbench.report.figures import build_figures
from archbench.report.values import error_excerpt

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PLOTLY_SIGNATURE = "plotly.js v"  # banner at the top of the bundled library
SEQ_LENS = (128, 256, 512)
MODES = ("fwd", "decode")


def _ok_row(arch: str, backend: str, mode: str, seq_len: int) -> dict:
    t = 1e-5 * seq_len * (2 if backend == "naive" else 1)
    return {
        "key": f"{mode}/{arch}/{backend}/{seq_len}", "run_id": "run-1", "suite": "smoke",
        "arch": arch, "family": "full/softmax", "backend": backend, "mode": mode,
        "dtype": "float32", "device": "cpu", "batch": 2, "seq_len": seq_len,
        "d_model": 64, "n_heads": 4, "head_dim": 16, "seed": 0, "threads": 4,
        "status": "ok", "error": None,
        "time_median_s": t, "time_p10_s": 0.9 * t, "time_p90_s": 1.2 * t,
        "time_iqr_s": 0.1 * t, "time_rel_iqr": 0.1, "repeats": 5,
        "time_samples_s": [t] * 5, "tokens_per_s": 2 * seq_len / t,
        "peak_mem_bytes": 1000.0 * seq_len, "mem_method": "torch.cuda", "state_bytes": np.nan,
        "env_device_name": "Test CPU", "env_torch": "2.13.0", "env_host": "box",
    }


def _failed_row(arch: str, backend: str, status: str, seq_len: int, error: str) -> dict:
    return {
        "key": f"fwd/{arch}/{backend}/{seq_len}/{status}", "run_id": "run-1", "suite": "smoke",
        "arch": arch, "backend": backend, "mode": "fwd", "dtype": "float32", "device": "cpu",
        "batch": 2, "seq_len": seq_len, "status": status, "error": error, "d_model": 64, "n_heads": 4,
        "env_device_name": "Test CPU",
    }


def make_df(archs=("softmax", "linear")) -> pd.DataFrame:
    rows = [
        _ok_row(a, b, m, n) for m in MODES for a in archs for b in ("torch", "naive") for n in SEQ_LENS
    ]
    rows.append(_failed_row(archs[0], "naive", "oom", 4096, "CUDA out of memory. Tried to allocate 8 GiB"))
    rows.append(_failed_row(archs[1], "torch", "error", 2048, "Traceback (most recent call last):\nValueError: boom"))
    rows.append(_failed_row(archs[1], "naive", "skipped", 8192, None))
    return pd.DataFrame(rows)


RUNS = [{
    "run_id": "run-1", "suite": "smoke", "suite_path": "suites/smoke.yaml",
    "started_at": "2025-01-01T00:00:00", "ended_at": "2025-01-01T00:10:00",
    "env": {"device_name": "Test CPU", "torch": "2.13.0", "python": "3.12", "host": "box", "git_rev": "abc1234"},
    "counts": {"ok": 24, "oom": 1, "error": 1, "skipped": 1},
}]

# 2 groups (one per mode), each with latency, memory and throughput figures.
EXPECTED_FIGURES = len(MODES) * 3


_BLOB = re.compile(r'<script id="plotly-js-gzip" type="application/octet-stream">([A-Za-z0-9+/=]*)</script>')


def _library(page: str) -> str:
    """The inlined plotly.js, unpacked from its gzip + base64 blob."""
    blobs = _BLOB.findall(page)
    assert len(blobs) == 1, f"{len(blobs)} plotly.js blobs"
    return gzip.decompress(base64.b64decode(blobs[0])).decode()


_FIGURE = re.compile(r'<script type="application/x-archbench-plot" data-div="([^"]+)">([A-Za-z0-9+/=]*)</script>')


def _figures(page: str) -> dict[str, str]:
    """div id -> the figure's plotly JSON, unpacked from its gzip + base64 script."""
    return {div: gzip.decompress(base64.b64decode(blob)).decode() for div, blob in _FIGURE.findall(page)}


def _without_library(page: str) -> str:
    """The page minus the inlined plotly.js blob."""
    return _BLOB.sub("", page)


def _section(page: str, section_id: str) -> str:
    start = page.index(f'<section id="{section_id}">')
    return page[start: page.index("</section>", start)]


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(make_df(), RUNS)


def test_plotly_embedded_once_and_offline(page):
    assert _library(page) == get_plotlyjs(), "the whole library, compressed, once"
    rest = _without_library(page)
    assert PLOTLY_SIGNATURE not in rest and "plotly-js-gzip" in rest  # the loader names it
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", rest, re.I)
    assert "cdn.plot.ly" not in rest
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", rest, re.I)
    # the library blob, its loader, and one script per figure (run by the loader once plotly is in)
    assert page.count("<script") == 2 + EXPECTED_FIGURES
    assert page.count('<script type="application/x-archbench-plot"') == EXPECTED_FIGURES
    figures = _figures(page)  # each figure's JSON, compressed, names its own div and plotly config
    assert len(figures) == EXPECTED_FIGURES
    for div, spec in figures.items():
        fig = json.loads(spec)
        assert {"data", "layout", "config"} <= set(fig) and fig["config"]["displaylogo"] is False
        assert f'<div id="{div}" class="plotly-graph-div"' in page
    assert len(page) < 3 * 2**20


def test_figures_present(page):
    assert page.count('class="plotly-graph-div"') == EXPECTED_FIGURES
    for i in range(EXPECTED_FIGURES):
        assert f'id="fig-{i}"' in page
    titles = [json.loads(f)["layout"]["title"]["text"] for f in _figures(page).values()]
    assert "Latency: mode=fwd, batch=2" in titles  # one configuration: only the axes are named
    assert "Peak memory: mode=decode, batch=2" in titles and "Throughput: mode=decode, batch=2" in titles


def test_header(page):
    header = page[page.index("<header>"): page.index("</header>")]
    assert "archbench report — smoke" in header
    for value in ("run-1", "Test CPU", "2.13.0", "box", "abc1234", "2025-01-01T00:00:00"):
        assert value in header
    assert "ok: 24" in header and "oom: 1" in header and "error: 1" in header
    assert "timeout: 0" in header and "skipped: 1" in header
    assert "<dt>Cells</dt><dd>27</dd>" in header


def test_table_rows_sorted_and_coloured(page):
    table = _section(page, "results")
    assert table.count("<tr title=") == 27
    for arch in ("softmax", "linear"):
        assert f"<td>{arch}</td>" in table
    assert 'class="status status-oom"' in table and 'class="status status-error"' in table
    assert "time_samples_s" not in table
    # sorted by mode (fwd before decode), then arch, backend, batch, seq_len
    keys = re.findall(r'<tr title="([^"]*)"', table)
    assert keys[0] == "fwd/linear/naive/128"
    assert keys.index("fwd/linear/naive/512") < keys.index("fwd/linear/naive/8192/skipped")
    assert keys.index("fwd/softmax/torch/512") < keys.index("decode/linear/naive/128")
    # median in ms and peak memory in MiB
    assert "<td class=\"num\">1.28</td>" in table  # linear/torch at 128: 1.28 ms
    assert "<td class=\"num\">0.5</td>" in table  # 512000 B -> 0.5 MiB (rounded to .1)


def test_failures_section(page):
    failures = _section(page, "failures")
    assert "CUDA out of memory. Tried to allocate 8 GiB" in failures
    assert "Traceback (most recent call last):\nValueError: boom</pre>" in failures
    assert failures.count("<pre>") == 2  # skipped rows are not failures
    # the table gets the telling line of a traceback
    assert "ValueError: boom" in _section(page, "results")


def test_failures_marked_on_latency_plot():
    specs = build_figures(make_df())
    fwd_latency = next(s for s in specs if s.kind == "latency" and "mode=fwd" in s.group)
    traces = {t.name: t for t in fwd_latency.figure.data}
    assert {"failed: oom", "failed: error"} <= set(traces)
    oom = traces["failed: oom"]
    assert list(oom.x) == [4096] and oom.marker.symbol == "x"
    ok_top = max(max(t.y) for n, t in traces.items() if not n.startswith("failed"))
    assert oom.y[0] > ok_top
    assert fwd_latency.figure.layout.xaxis.type == "log" and fwd_latency.figure.layout.yaxis.type == "log"
    # one line per arch/backend, same colour per arch, error bars p10..p90
    lines = [t for n, t in traces.items() if not n.startswith("failed")]
    assert sorted(t.name for t in lines) == ["linear/naive", "linear/torch", "softmax/naive", "softmax/torch"]
    assert traces["linear/naive"].line.color == traces["linear/torch"].line.color
    assert traces["linear/naive"].line.color != traces["softmax/naive"].line.color
    assert traces["linear/naive"].line.dash != traces["linear/torch"].line.dash
    assert np.allclose(traces["linear/torch"].error_y.array, [0.2 * 1e-2 * n for n in SEQ_LENS])
    decode_latency = next(s for s in specs if s.kind == "latency" and "mode=decode" in s.group)
    assert not any(t.name.startswith("failed") for t in decode_latency.figure.data)


def test_escaping():
    df = make_df(archs=(XSS, "linear"))
    df.loc[df["status"] == "oom", "error"] = f"bad {XSS} happened"
    runs = [dict(RUNS[0], suite=XSS, env={"host": XSS})]
    page = render_html(df, runs)
    assert XSS not in page
    assert "<script>alert" not in page
    # only our own script tags: the library and one per figure
    assert page.count("<script") == 2 + EXPECTED_FIGURES
    assert page.count("</script") == 2 + EXPECTED_FIGURES
    assert XSS_ESCAPED in _section(page, "results")
    assert f"bad {XSS_ESCAPED} happened" in _section(page, "failures")
    assert f"<title>archbench report — {XSS_ESCAPED}, smoke</title>" in page
    # trace names reach plotly's JSON html-escaped (plotly shows the entities as text)
    figures = _figures(page).values()
    assert any('"name":"&lt;script&gt;alert(1)&lt;' in f for f in figures) and not any(XSS in f for f in figures)


def test_plotly_json_escapes_script_tags():
    """Even a raw name must not close the figure's script tag (plotly escapes < > /)."""
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2], name=f"</script>{XSS}"))
    out = fig.to_html(full_html=False, include_plotlyjs=False)
    assert out.count("</script>") == 1
    assert XSS not in out


def test_empty_df():
    for df in (pd.DataFrame(), None, make_df().assign(status="oom")):
        page = render_html(df, [])
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert "Nothing to plot" in page
        assert "plotly-graph-div" not in page
        assert PLOTLY_SIGNATURE not in page
    assert "No rows." in render_html(pd.DataFrame(), [])


def test_missing_columns_and_odd_values():
    df = pd.DataFrame([
        {"arch": "a", "backend": "b", "status": "ok", "seq_len": 64, "time_median_s": 0.01},
        {"arch": "a", "backend": "b", "status": "OK", "seq_len": "128", "time_median_s": 0.02},
        {"arch": "a", "status": None, "seq_len": None},
    ])
    page = render_html(df, [{"unexpected": 1}, "not a dict"], title="custom")
    assert "<title>custom</title>" in page
    assert page.count('class="plotly-graph-div"') == 1  # latency only: no memory, no tokens/s
    assert "unknown: 1" in page


def test_error_excerpt():
    assert error_excerpt("Traceback (most recent call last):\n  File x\nRuntimeError: no") == "RuntimeError: no …"
    assert error_excerpt("x" * 300, limit=10) == "x" * 9 + "…"
    assert error_excerpt(None) == ""


def test_write_html(tmp_path):
    target = tmp_path / "sub" / "report.html"
    out = write_html(make_df(), RUNS, target, title="My report")
    assert out == target and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert "<title>My report</title>" in text
    assert _library(text).startswith("/**") and PLOTLY_SIGNATURE in _library(text)


def test_several_runs_get_separate_lines():
    df = pd.concat([make_df(), make_df().assign(run_id="run-2")], ignore_index=True)
    specs = build_figures(df)
    names = {t.name for t in specs[0].figure.data}
    assert {"linear/torch [run-1]", "linear/torch [run-2]"} <= names


def test_decode_groups_get_a_state_figure():
    import pandas as pd

    from archbench.report import build_figures

    rows = []
    for arch, per_token in (("softmax_attention", 2 * 64 * 4), ("linear_attention", 0)):
        for T in (128, 512, 2048):
            rows.append(dict(key=f"{arch}{T}", arch=arch, backend="ref", family="f", mode="decode", dtype="float32",
                             device="cpu", batch=1, seq_len=T, status="ok", time_median_s=1e-3, time_p10_s=1e-3,
                             time_p90_s=1e-3, tokens_per_s=1e3, state_bytes=per_token * T or 4096, peak_mem_bytes=1))
    specs = build_figures(pd.DataFrame(rows))
    assert [s.kind for s in specs].count("state") == 1
    fwd = pd.DataFrame([{**r, "mode": "fwd"} for r in rows])
    assert "state" not in [s.kind for s in build_figures(fwd)]


def test_training_groups_get_an_activation_figure_when_rows_count_them():
    rows = []
    for arch, per_token in (("softmax_attention", 4096), ("linear_attention", 64)):
        for T in (128, 512, 2048):
            rows.append(dict(key=f"{arch}{T}", arch=arch, backend="ref", family="f", mode="fwd_bwd", dtype="float32",
                             device="cpu", batch=1, seq_len=T, status="ok", time_median_s=1e-3, time_p10_s=1e-3,
                             time_p90_s=1e-3, tokens_per_s=1e3, peak_mem_bytes=1, activation_bytes=per_token * T))
    specs = build_figures(pd.DataFrame(rows))
    (fig,) = [s.figure for s in specs if s.kind == "activations"]
    assert {t.name for t in fig.data} == {"softmax_attention/ref", "linear_attention/ref"}
    assert "saved for backward" in fig.data[0].hovertemplate
    older = pd.DataFrame([{k: v for k, v in r.items() if k != "activation_bytes"} for r in rows])
    assert "activations" not in [s.kind for s in build_figures(older)]  # rows from before the field


def test_header_shows_run_warnings_and_noisy_count():
    import pandas as pd

    from archbench.report import render_html

    df = pd.DataFrame([dict(key="k", arch="a", backend="b", mode="fwd", dtype="float32", device="cpu", batch=1,
                            seq_len=8, status="ok", time_median_s=1e-3, time_p10_s=1e-3, time_p90_s=2e-3,
                            noisy=True)])
    page = render_html(df, [{"run_id": "r", "warnings": ["at start: other processes <b>x</b>"]}])
    assert "other processes &lt;b&gt;x&lt;/b&gt;" in page and "noisy (IQR/median &gt; 10%): 1" in page


def _mixed_rows():
    import pandas as pd

    rows = []
    for arch in ("softmax_attention", "linear|attention"):
        for T in (128, 512):
            rows.append(dict(key=f"{arch}{T}", run_id="r", suite="s", arch=arch, backend="ref", family="f", mode="fwd",
                             dtype="float32", device="cpu", batch=1, seq_len=T, status="ok", time_median_s=T * 1e-6,
                             time_p10_s=T * 1e-6, time_p90_s=T * 1e-6, time_samples_s=[T * 1e-6]))
    rows.append(dict(rows[0], key="x", seq_len=2048, status="oom", error="CUDA out of memory\nline two",
                     time_median_s=None))
    return pd.DataFrame(rows)


def test_markdown_summary_is_well_formed():
    from archbench.report import render_markdown

    md = render_markdown(_mixed_rows(), [{"suite": "s"}])
    first = md.split("\n\n### ")[1]  # the first group's table
    table = [line for line in first.splitlines() if line.startswith("|")]
    assert table[0] == "| arch/backend | T=128 | T=512 | T=2048 |" and table[1] == "|---|---|---|---|"
    assert all(line.count("|") - line.count("\\|") == 5 for line in table)  # escaped pipes do not split cells
    assert "### Answers" in md and "| linear|attention/ref |" not in md and "linear\\|attention" in first
    assert "| softmax_attention/ref | 0.128 | 0.512 | **oom** |" in md
    assert "### Failures" in md and "CUDA out of memory" in md


def test_write_html_also_writes_csv(tmp_path):
    import pandas as pd

    from archbench.report import write_html

    path = write_html(_mixed_rows(), [], tmp_path / "r.html")
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert len(csv) == 5 and {"arch", "seq_len", "time_median_s", "status"} <= set(csv.columns)
    assert "time_samples_s" not in csv.columns


def test_roofline_figure_when_rows_carry_intensity():
    import pandas as pd

    from archbench.report import build_figures

    rows = [dict(key=f"k{T}", arch="a", backend="b", family="f", mode="fwd", dtype="float32", device="cpu", batch=1,
                 seq_len=T, status="ok", time_median_s=1e-3, time_p10_s=1e-3, time_p90_s=1e-3,
                 arithmetic_intensity=10.0 * T, achieved_tflops=0.01 * T / 256, peak_tflops=0.3, peak_gbps=20.0)
            for T in (256, 1024)]
    kinds = [s.kind for s in build_figures(pd.DataFrame(rows))]
    assert "roofline" in kinds
    no_ai = pd.DataFrame([{k: v for k, v in r.items() if k != "arithmetic_intensity"} for r in rows])
    assert "roofline" not in [s.kind for s in build_figures(no_ai)]


def test_a_long_context_sized_run_stays_a_few_megabytes():
    """924 cells (the long-context grid: 11 archs x 3 modes x 4 batches x 7 lengths, 50 raw
    samples each): plotly.js travels gzip-compressed, the figures carry no raw samples."""
    rng = np.random.default_rng(0)
    rows = []
    for a in range(11):
        for mode in ("fwd_bwd", "prefill", "decode"):
            for b in (1, 2, 4, 8):
                for t in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
                    med = 1e-3 * t / 1024 * rng.uniform(0.9, 1.1)
                    rows.append(dict(key=f"{a}{mode}{b}{t}", run_id="r", suite="long", arch=f"arch{a}", backend="b",
                                     family="linear/x", mode=mode, dtype="bfloat16", device="cuda", batch=b, seq_len=t,
                                     status="ok", time_median_s=med, time_p10_s=med * 0.9, time_p90_s=med * 1.1,
                                     time_samples_s=list(rng.normal(med, 0.02 * med, 50)), repeats=50,
                                     tokens_per_s=b * t / med, peak_mem_bytes=t * 1e5, state_bytes=t * 1e3,
                                     expected_exponent=1))  # fmt: skip
    page = render_html(pd.DataFrame(rows), [{"run_id": "r", "suite": "long"}])
    assert len(page) < 4 * 2**20, f"{len(page) / 2**20:.1f} MiB"


def test_energy_figure_and_configurable_reference():
    rows = []
    for arch, p in (("softmax_attention", 2), ("linear_attention", 1)):
        for t in (256, 1024, 4096):
            med = (t / 1024) ** p * 1e-2
            rows.append(dict(key=f"{arch}{t}", arch=arch, backend="ref", mode="fwd", dtype="float32", device="cpu",
                             batch=1, seq_len=t, status="ok", time_median_s=med, energy_j_per_token=med / t * 30,
                             energy_source="rapl"))  # fmt: skip
    df = pd.DataFrame(rows)
    kinds = [s.kind for s in build_figures(df)]
    assert "energy" in kinds
    energy = next(s for s in build_figures(df) if s.kind == "energy").figure
    assert "rapl" in energy.layout.title.text and len(energy.data) == 2
    assert "energy" not in [s.kind for s in build_figures(df.drop(columns=["energy_j_per_token"]))]
    page = render_html(df, [], reference="linear_attention")
    assert "faster than linear_attention (T)" in page and "ratio to linear_attention" in page
    r = __import__("click.testing", fromlist=["CliRunner"]).CliRunner()
    from archbench.cli import main

    assert r.invoke(main, ["report", "--help"]).output.count("--reference") == 1


def test_results_table_says_which_kernels_ran_and_how_a_gpu_row_was_timed():
    rows = [_ok_row("gla", "fla", "decode", n) for n in SEQ_LENS]
    rows[0].update(kernels=["fla.fused_recurrent_gla"], cuda_graph=True, device="cuda")
    rows[1].update(kernels=["torch.ssd_chunked"], cuda_graph=False, cuda_graph_reason="capture failed: RuntimeError")
    rows[2].update(kernels=["torch.gla_step"])  # a CPU row: no graph field at all
    page = render_html(pd.DataFrame(rows), RUNS)
    assert "<th>ran</th>" in page
    assert "fla.fused_recurrent_gla · CUDA graph" in page
    assert "torch.ssd_chunked · eager (graph capture failed)" in page
    assert "torch.gla_step<" in page  # nothing appended
