"""Answers you can trust: comparable groups, honest statistics, banners, the first screen and
answers.json, on small hand-built rows (hostile strings included) and on the committed GPU rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archbench.report import render_html, render_markdown, write_html
from archbench.report.analysis import crossover, decode_exponent, exponent_fit
from archbench.report.answers import answers_document
from archbench.report.groups import comparable_groups, latest_rows
from archbench.report.figures import build_figures
from archbench.report.rows import prepare
from archbench.report.palette import arch_color

ROOT = Path(__file__).resolve().parent.parent
XSS = "<img src=x onerror=alert(1)>*[md](http://x)*|"


def _row(arch, backend, T, t, **kw):
    r = dict(key=f"{arch}/{backend}/{T}/{kw.get('mode', 'prefill')}/{kw.get('env_device_name', 'GPU A')}", run_id="r",
             suite="s", arch=arch, backend=backend, family=kw.pop("family", "full/softmax"), mode="prefill",
             dtype="bfloat16", device="cuda", batch=1, seq_len=T, d_model=256, n_heads=4, window=64, chunk_size=64,
             level="mixer", status="ok", time_median_s=t, time_p10_s=t, time_p90_s=t, time_rel_iqr=0.01,
             tokens_per_s=T / t, peak_mem_bytes=1e6 * T, env_device_name="GPU A")  # fmt: skip
    r.update(kw)
    return r


def _sweep(device="GPU A", lens=(1024, 2048, 4096, 8192), **kw):
    rows = []
    for T in lens:
        rows.append(_row("softmax_attention", "sdpa", T, 1e-3 * (T / 1024) ** 2, env_device_name=device, **kw))
        rows.append(_row("linear_attention", "fla", T, 2e-3 * T / 1024, family="linear/linear-attention",
                         env_device_name=device, peak_mem_bytes=2e5 * T, **kw))  # fmt: skip
    return rows


def test_devices_and_timings_are_never_merged():
    df = pd.DataFrame(_sweep("GPU A") + _sweep("GPU B") + _sweep("GPU A", cuda_graph=True))
    groups = comparable_groups(prepare(df))
    assert len(groups) == 3
    labels = [g.label for g in groups]
    assert all("device=GPU" in lab for lab in labels) and sum("timing=graph" in lab for lab in labels) == 1
    doc = answers_document(df)
    assert "device (GPU A, GPU B)" in doc["note"] and "timing (eager, graph)" in doc["note"]
    lin = [a for a in doc["answers"] if a["arch"] == "linear_attention"]
    assert len(lin) == 3 and {a["group"]["device"] for a in lin} == {"GPU A", "GPU B"}
    # each group's crossover against its own softmax: 2x slower at 1024, 2x faster at 4096 -> 2048
    assert all(a["crossover"]["value"] == pytest.approx(2048) for a in lin)
    # a linear row on GPU B alone has no reference in its group, though GPU A has one
    lone = pd.DataFrame(_sweep("GPU A") + [_row("mamba2", "fla", 4096, 1e-3, env_device_name="GPU B")])
    m = next(a for a in answers_document(lone)["answers"] if a["arch"] == "mamba2")
    assert m["crossover"]["verdict"] == "no reference in this group"
    # figures are drawn per group too: one latency figure per device / timing
    assert sum(s.kind == "latency" for s in build_figures(df)) == 3


def test_shapes_split_groups_and_missing_kv_heads_mean_one_per_head():
    rows = _sweep() + [dict(r, d_model=512) for r in _sweep()] + [dict(r, n_kv_heads=4) for r in _sweep()]
    assert len(comparable_groups(prepare(pd.DataFrame(rows)))) == 2  # n_kv_heads=4 == n_heads: same as missing


def test_latest_rows_keeps_eager_and_graph_rows_of_one_key():
    eager = _row("gla", "fla", 4096, 1e-3, mode="decode", run_dir="d")
    retry = dict(eager, time_median_s=2e-3)
    graph = dict(eager, cuda_graph=True, time_median_s=5e-4)
    kept = latest_rows(pd.DataFrame([eager, graph, retry]))
    assert len(kept) == 2 and sorted(kept["time_median_s"]) == [5e-4, 2e-3]


def test_no_crossover_from_one_length():
    c = crossover(pd.Series({16384: 1.0}), pd.Series({16384: 1.9}))
    assert c["value"] is None and c["single_length"] and c["verdict"] == "one length measured: 1.9x faster at T=16384"
    assert "slower" in crossover(pd.Series({16384: 2.0}), pd.Series({16384: 1.0}))["verdict"]
    doc = answers_document(pd.DataFrame(_sweep(lens=(16384,))))
    lin = next(a for a in doc["answers"] if a["arch"] == "linear_attention")
    assert lin["flags"]["single_length"] and lin["crossover"]["verdict"].startswith("one length measured")
    assert lin["crossover"]["lengths"] == [16384] and lin["exponent"]["value"] is None
    # faster only at short lengths is not a crossover to a win
    assert crossover(pd.Series({1: 1.0, 2: 3.0}), pd.Series({1: 2.0, 2: 2.0}))["value"] is None


def test_exponent_interval_and_points():
    T = np.array([1024, 2048, 4096, 8192, 16384, 32768])
    exact = exponent_fit(pd.Series(1e-9 * T**2.0, index=T))
    assert exact["value"] == pytest.approx(2.0) and exact["n_points"] == 3 and exact["ci95"] == pytest.approx([2, 2])
    noisy = exponent_fit(pd.Series(1e-9 * T**1.0 * np.array([1, 1.3, 0.8, 1.2, 0.9, 1.1]), index=T))
    lo, hi = noisy["ci95"]
    assert lo < noisy["value"] < hi and hi - lo > 0.1
    two = exponent_fit(pd.Series([1.0, 2.0], index=[1024, 2048]))
    assert two["value"] == pytest.approx(1.0) and two["ci95"] is None and two["n_points"] == 2


def test_expected_exponent_per_mode():
    assert decode_exponent("O(T d) per token, O(T d) KV cache") == 1.0
    assert decode_exponent("O(W d) per token, O(W d) ring KV cache") == 0.0
    assert decode_exponent("O(d N) per token, O(d N) state") == 0.0
    assert decode_exponent("O((S/l + n l + W) d) per token") == 1.0
    rows = []
    for arch, claim, train in (("softmax_attention", "O(T d) per token", 2.0), ("mamba", "O(d N) per token", 1.0),
                               ("sliding_window_attention", "O(W d) per token", 1.0)):  # fmt: skip
        for mode in ("prefill", "decode"):
            rows += [_row(arch, "x", T, 1e-3 * T, mode=mode, decode_complexity=claim, expected_exponent=train)
                     for T in (1024, 4096)]  # fmt: skip
    got = {(a["arch"], a["group"]["mode"]): a["expected_exponent"] for a in answers_document(pd.DataFrame(rows))["answers"]}
    assert got[("softmax_attention", "prefill")] == 2.0 and got[("softmax_attention", "decode")] == 1.0
    assert got[("mamba", "decode")] == 0.0 and got[("sliding_window_attention", "decode")] == 0.0


def test_noisy_and_reference_cells_are_flagged_everywhere():
    rows = _sweep()
    rows[3]["time_rel_iqr"] = 0.4  # linear_attention at 2048: noisy
    rows += [_row("linear_attention", "chunked", T, 5e-3 * T / 1024, family="linear/linear-attention",
                  reference_backend=True) for T in (1024, 2048, 4096, 8192)]  # fmt: skip
    df = pd.DataFrame(rows)
    doc = answers_document(df)
    by = {(a["arch"], a["backend"]): a for a in doc["answers"]}
    assert by[("linear_attention", "fla")]["flags"]["noisy"] and by[("linear_attention", "fla")]["flags"]["noisy_lengths"] == [2048]
    assert by[("linear_attention", "chunked")]["flags"]["reference"] and not by[("linear_attention", "fla")]["flags"]["reference"]
    fig = next(s for s in build_figures(df) if s.kind == "latency").figure
    traces = {t.name: t for t in fig.data}
    assert traces["linear_attention/chunked"].line.dash == "dash" and traces["linear_attention/fla"].line.dash == "solid"
    assert list(traces["linear_attention/fla"].marker.symbol).count("square-open") + list(
        traces["linear_attention/fla"].marker.symbol).count("circle-open") == 1  # the noisy point is hollow
    page = render_html(df, [])
    assert "† noisy" in page and "‡ reference" in page


def test_banner_for_incomplete_and_overridden_runs():
    df = pd.DataFrame(_sweep())
    runs = [{"run_id": "r", "n_cells": 33, "status": "running", "overrides": ["sweep.batch=[1]"]}]
    doc = answers_document(df, runs)
    (b,) = doc["banners"]
    assert b["incomplete"] and b["cells_planned"] == 33 and b["cells_measured"] == 8 and b["overrides"] == ["sweep.batch=[1]"]
    page = render_html(df, runs)
    assert "8 of 33 planned cells measured, status running" in page and "--set sweep.batch=[1]" in page
    assert answers_document(df, [{"run_id": "r", "n_cells": 8, "status": "complete"}])["banners"] == []
    df.attrs["skipped_note"] = "skipped 1 unreadable line(s) of rows files: rows.jsonl:3 (torn <b>)"
    assert answers_document(df)["skipped_lines"].startswith("skipped 1")
    assert "rows.jsonl:3 (torn &lt;b&gt;)" in render_html(df, [])


def test_decision_matrix_over_lengths_and_batches():
    rows = _sweep() + [dict(r, batch=4, key=r["key"] + "b4") for r in _sweep()]
    rows.append(dict(_row("softmax_attention", "sdpa", 16384, 1.0, batch=4), status="oom", key="oom", time_median_s=None))
    doc = answers_document(pd.DataFrame(rows))
    (m,) = doc["decisions"]
    assert m["batches"] == [1, 4] and m["seq_lens"] == [1024, 2048, 4096, 8192]
    cell = next(c for c in m["cells"] if c["seq_len"] == 8192 and c["batch"] == 1)
    assert cell["fastest"]["arch"] == "linear_attention" and cell["fastest"]["ratio_to_reference"] == pytest.approx(4.0)
    assert cell["n_points"] == 2 and cell["leanest"]["arch"] == "linear_attention"
    fr = {f["batch"]: f for f in m["frontier"]}
    assert fr[4]["first_oom"] == 16384 and fr[4]["oom_archs"] == ["softmax_attention"] and fr[1]["first_oom"] is None
    page = render_html(pd.DataFrame(rows), [])
    first = page[page.index('<section id="first-screen">'):]
    assert page.index('id="first-screen"') < page.index('id="answers"') < page.index('id="figures"')
    assert "2 comparable point(s)" in first and "4x vs softmax_attention" in first and "out of memory from T=16,384" in first


def test_answers_json_is_what_the_page_renders(tmp_path):
    df = pd.DataFrame(_sweep() + _sweep("GPU B", lens=(16384,)))
    page = write_html(df, [{"run_id": "r", "n_cells": 10}], tmp_path / "report.html").read_text()
    doc = json.loads((tmp_path / "answers.json").read_text())
    assert doc == json.loads(json.dumps(answers_document(df, [{"run_id": "r", "n_cells": 10}]), default=float))
    for a in doc["answers"]:
        v = a["crossover"]
        shown = f"{v['value']:,.0f}" if v["value"] is not None else v["verdict"]
        assert shown in page
        assert set(a) >= {"group", "arch", "backend", "crossover", "exponent", "flags"}
        assert set(a["flags"]) >= {"noisy", "reference", "single_length"} and "ci95" in a["exponent"]


def test_hostile_strings_stay_inert():
    rows = _sweep()
    for r in rows[:4]:
        r["arch"] = XSS
    rows.append(dict(rows[0], key="bad", status="error", error=f"boom {XSS}", time_median_s=None))
    df = pd.DataFrame(rows)
    page = render_html(df, [{"run_id": XSS, "overrides": [XSS], "status": "running", "n_cells": 99}])
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    md = render_markdown(df, [])
    assert not re.search(r"(?<!\\)<img", md)
    assert "\\<img src=x onerror=alert\\(1\\)\\>\\*\\[md\\]\\(http://x\\)\\*\\|" in md
    assert "boom \\<img" in md  # the error's line, escaped too
    table = [line for line in md.split("\n\n### ")[1].splitlines() if line.startswith("|")]
    assert len({line.count("|") - line.count("\\|") for line in table}) == 1  # escaped pipes split no cell


def test_csv_integers_and_survey_first_row(tmp_path):
    rows = _sweep()
    failed = dict(rows[0], key="f", status="error", family=None, paper=None, seq_len=32768, time_median_s=None)
    df = pd.DataFrame([failed] + [dict(r, paper="P") for r in rows])
    path = write_html(df, [], tmp_path / "r.html")
    csv = (tmp_path / "r.csv").read_text().splitlines()
    head = csv[0].split(",")
    first = csv[1].split(",")
    assert first[head.index("seq_len")] == "32768" and first[head.index("batch")] == "1"
    page = path.read_text()
    survey = page[page.index('<section id="survey">'):]
    assert "<td>full/softmax</td><td>softmax_attention</td><td>P</td>" in survey  # not the failed row's blanks
    assert (tmp_path / "r.answers.json").is_file()


def test_palette_is_stable_and_keyed_by_family():
    assert arch_color("mamba2", "ssm/ssd") == arch_color("mamba2", "ssm/ssd")
    assert arch_color("softmax_attention", "full/softmax") == "#D55E00"
    fig = next(s for s in build_figures(pd.DataFrame(_sweep())) if s.kind == "latency").figure
    xaxis = fig.layout.xaxis
    assert list(xaxis.tickvals) == [1000.0, 10000.0] and list(xaxis.ticktext) == ["1k", "10k"]
    assert all(t.endswith("ms") for t in fig.layout.yaxis.ticktext) and fig.layout.legend.orientation == "h"
    bars = next(s for s in build_figures(pd.DataFrame(_sweep(lens=(16384,)))) if s.kind == "latency").figure
    assert {t.type for t in bars.data} == {"bar"}


# ---- the committed GPU rows ---------------------------------------------------------------

GPU_DIRS = [ROOT / "results" / "baselines" / "nvidia-h100", ROOT / "results" / "baselines" / "nvidia-h200"]


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory):
    if not all(any(d.rglob("rows.jsonl")) for d in GPU_DIRS):
        pytest.skip("the committed H100 / H200 rows are not in this checkout")
    from click.testing import CliRunner

    from archbench.cli import main

    out = tmp_path_factory.mktemp("gpu") / "report.html"
    res = CliRunner().invoke(main, ["report", *map(str, GPU_DIRS), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out.read_text(), json.loads((out.parent / "answers.json").read_text())


def test_committed_gpu_rows_h100_and_h200_apart(gpu_report):
    page, doc = gpu_report
    for a in doc["answers"]:
        assert a["group"]["device"] in ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
    h200 = [a for a in doc["answers"] if a["group"]["device"] == "NVIDIA H200"]
    h100 = [a for a in doc["answers"] if a["group"]["device"] != "NVIDIA H200"]
    assert h200 and h100 and "device=NVIDIA H200" in page and "device=NVIDIA H100 80GB HBM3" in page
    assert "NVIDIA H100 80GB HBM3, NVIDIA H200" in doc["note"]
    # no H100 row is compared with the H200's softmax attention: the H100 groups at d_model 1024 hold none
    for a in h100:
        if a["group"]["d_model"] == "1024" and a["arch"] != "softmax_attention":
            assert a["crossover"]["verdict"] == "no reference in this group"
    assert len(doc["banners"]) == 3 and any(b["incomplete"] for b in doc["banners"])


def test_committed_gpu_rows_eager_and_graph_apart_and_no_single_length_crossover(gpu_report):
    page, doc = gpu_report
    decode = [a for a in doc["answers"] if a["group"]["mode"] == "decode" and a["group"]["d_model"] == "512"]
    timings = {a["group"]["timing"] for a in decode if a["arch"] == "gla" and a["backend"] == "chunked"}
    assert timings == {"eager", "graph"}
    for a in doc["answers"]:
        c = a["crossover"]
        if len(c["lengths"]) == 1 and c["verdict"] != "reference":
            assert c["value"] is None and c["verdict"].startswith("one length measured")
        assert c["verdict"] not in ("always", "never in range") or len(c["lengths"]) >= 2
    refs = {(a["arch"], a["backend"]) for a in doc["answers"] if a["flags"]["reference"]}
    assert ("mamba", "chunked") in refs and ("gla", "chunked") in refs and ("gla", "fla") not in refs
    assert "‡" in page and "timing=graph" in page


def test_committed_gpu_rows_advise_per_gpu():
    from click.testing import CliRunner

    from archbench.cli import main

    if not all(any(d.rglob("rows.jsonl")) for d in GPU_DIRS):
        pytest.skip("the committed H100 / H200 rows are not in this checkout")
    r = CliRunner()
    out = r.invoke(main, ["advise", *map(str, GPU_DIRS), "--seq-len", "16384", "--batch", "1", "--json"])
    assert out.exit_code == 0, out.output
    groups = json.loads(out.output)["groups"]
    devices = {g["group"]["device"] for g in groups}
    assert devices == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}
    for g in groups:
        assert all(e["how"] == "measured" for e in g["entries"])
    h200 = next(g for g in groups if g["group"]["device"] == "NVIDIA H200")
    assert {e["arch"] for e in h200["entries"]} == {"softmax_attention", "sliding_window_attention", "gated_deltanet"}
    never = r.invoke(main, ["advise", str(GPU_DIRS[1]), "--seq-len", "3000", "--batch", "1", "--json"])
    assert never.exit_code == 0
    assert all(e["flags"]["extrapolated"] for g in json.loads(never.output)["groups"] for e in g["entries"])
    none = r.invoke(main, ["advise", str(GPU_DIRS[1]), "--seq-len", "16384", "--batch", "8"])
    assert none.exit_code == 2 and "no rows measured prefill at batch 8" in none.output
