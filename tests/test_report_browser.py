"""The report in a real browser: headless Chromium (Debian's ``chromium``, which ``.ci/run``
installs) loads the page offline, runs plotly, and must log nothing to the console; the
first screen must answer and every figure area must have drawn (plotly's SVG layers present). A screenshot is kept as an artifact
in ``reports/test-artifacts/``."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from archbench.report import build_figures, write_html
from test_report_quality import ckpt_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "reports" / "test-artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000",
]  # fmt: skip

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def _rows():
    rows = []
    for arch, p in (("softmax_attention", 2), ("linear_attention", 1), ("<script>alert(1)</script>", 1)):
        for T in (256, 1024, 4096):
            t = (T / 1024) ** p * 1e-2
            rows.append(dict(key=f"{arch}{T}", run_id="r1", suite="browser", arch=arch, backend="ref", family="f",
                             mode="fwd", dtype="float32", device="cpu", batch=1, seq_len=T, status="ok",
                             time_median_s=t, time_p10_s=t * 0.9, time_p90_s=t * 1.1, repeats=5,
                             tokens_per_s=T / t, peak_mem_bytes=T * 1e4, mem_method="rss", expected_exponent=p,
                             arithmetic_intensity=T / 8, achieved_tflops=1e-6 * T / t, peak_tflops=0.3,
                             peak_gbps=20.0))
    rows.append(dict(rows[0], key="e", seq_len=16384, status="error", error="boom <b>bold</b>", time_median_s=None))
    for arch, acc, state in (("softmax_attention", 0.99, 65536), ("linear_attention", 0.4, 8192)):  # task rows
        rows.append(dict(key=f"t-{arch}", run_id="r1", suite="browser", arch=arch, backend="ref", mode="task",
                         task="mqar", num_kv_pairs=4, d_model=64, n_layers=2, dtype="float32", device="cpu",
                         batch=64, seq_len=64, status="ok", task_metric="accuracy", task_score=acc, accuracy=acc,
                         task_score_std=0.0, n_seeds=1, best_lr=3e-3, train_steps=500, state_bytes=state))
    rows = [dict(r, env_device_mem_bytes=2**34) for r in rows]  # the peak-memory figure draws the capacity line
    return pd.concat([pd.DataFrame(rows), ckpt_rows()], ignore_index=True)  # checkpoints: quality beside speed


# The JSON form of a two-run comparison (archbench.compare), as `archbench report A B` passes it.
COMPARISON = {
    "metric": "latency", "threshold": 1.1, "summary": "FAIL: 1 regressed", "base": {"run_id": "a"},
    "head": {"run_id": "b"}, "notes": [],
    "cells": [{"label": "x/ref fwd T=256", "outcome": "regressed", "ratio": 1.4, "ratio_ci": [1.3, 1.5],
               "p_value": 1e-6, "base_value": 1e-3, "head_value": 1.4e-3, "base_status": "ok", "head_status": "ok"},
              {"label": "<i>y</i>/ref fwd T=256", "outcome": "unchanged", "ratio": 1.01, "ratio_ci": [0.98, 1.04],
               "p_value": 0.5, "base_value": 1e-3, "head_value": 1.01e-3, "base_status": "ok", "head_status": "ok"}],
}  # fmt: skip


def _chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


def test_report_renders_in_chromium_without_console_errors(tmp_path):
    df = _rows()
    page = write_html(df, [{"run_id": "r1", "suite": "browser"}], tmp_path / "report.html", comparison=COMPARISON)
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "the page logged to the console:\n" + "\n".join(console)
    n_figures = len(build_figures(df)) + 4  # + the accuracy Pareto chart, the B/A ratio plot, 2 checkpoint charts
    drawn = len(re.findall(r'class="main-svg"', dom.stdout))
    assert drawn >= n_figures, f"{drawn} plotly SVG layers for {n_figures} figures: the plots did not draw"
    assert "<script>alert(1)</script>" not in dom.stdout.replace("\\u003c", "<")  # escaped, never live
    # the first screen answers, and every figure area drew (figures draw lazily, the rest in idle time)
    assert 'id="first-screen"' in dom.stdout and "comparable point(s)" in dom.stdout
    areas = dom.stdout.split('<div class="figure figure-')[1:]
    assert len(areas) == n_figures and all('class="main-svg"' in a.split('<div class="figure figure-')[0] for a in areas)
    assert "data-figures-drawn" in dom.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = _chromium(tmp_path, "--window-size=1300,2000", f"--screenshot={ARTIFACTS / 'report.png'}", page.as_uri())
    assert shot.returncode == 0 and (ARTIFACTS / "report.png").stat().st_size > 10_000
