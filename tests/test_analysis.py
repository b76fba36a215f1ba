"""Crossover lengths and scaling exponents, on synthetic curves with known answers."""

import pandas as pd
import pytest

from archbench.report.analysis import crossover_length, fitted_exponent
from archbench.report.answers import answers


def test_crossover_interpolates_in_log_log():
    ref = pd.Series({1024: 1.0, 4096: 16.0})  # quadratic
    lin = pd.Series({1024: 4.0, 4096: 16.0 / 4})  # linear, 4x slower at 1024
    # log ratio: ln 4 at 1024, ln(1/4) at 4096 -> crosses half way in log space: 2048
    assert crossover_length(lin, ref) == pytest.approx(2048.0)
    assert crossover_length(pd.Series({1024: 0.5, 4096: 1.0}), ref) == "always"
    assert crossover_length(pd.Series({1024: 2.0, 4096: 40.0}), ref) == "never in range"


def test_fitted_exponent_uses_the_top_of_the_range():
    T = [256, 512, 1024, 2048, 4096]
    curve = pd.Series({t: (1.0 if t <= 512 else (t / 1024) ** 2) for t in T})  # flat, then quadratic
    assert fitted_exponent(curve) == pytest.approx(2.0)
    assert fitted_exponent(pd.Series({1: 1.0})) is None


def test_answers_table():
    rows = []
    for T in (512, 1024, 2048, 4096):
        rows.append(dict(arch="softmax_attention", backend="sdpa", seq_len=T, time_median_s=(T / 1024) ** 2,
                         peak_mem_bytes=T * T, expected_exponent=2.0))
        rows.append(dict(arch="linear_attention", backend="chunked", seq_len=T, time_median_s=2 * T / 1024,
                         peak_mem_bytes=1000 * T, expected_exponent=1.0))
    df = pd.DataFrame(rows).assign(status="ok", mode="fwd", batch=1, dtype="float32", device="cpu", family="f",
                                   time_p10_s=None, time_p90_s=None, key=lambda d: d.index.astype(str))
    a = answers(df).set_index("arch")
    assert a.loc["linear_attention", "faster_from"] == pytest.approx(2048.0)
    assert a.loc["linear_attention", "leaner_from"] == pytest.approx(1000.0, rel=1e-6) or a.loc["linear_attention", "leaner_from"] == "always"
    assert a.loc["linear_attention", "fitted_exponent"] == pytest.approx(1.0)
    assert a.loc["softmax_attention", "fitted_exponent"] == pytest.approx(2.0)
    assert a.loc["softmax_attention", "faster_from"] == "reference"
    assert a.loc["softmax_attention", "activation_exponent"] is None  # these rows do not count activations
    saved = df.assign(mode="fwd_bwd", activation_bytes=lambda d: d["peak_mem_bytes"])
    b = answers(saved).set_index("arch")
    assert b.loc["softmax_attention", "activation_exponent"] == pytest.approx(2.0)
    assert b.loc["linear_attention", "activation_exponent"] == pytest.approx(1.0)


def test_ratio_table_and_html_section():
    from archbench.report import render_html
    from archbench.report.analysis import ratio_table

    rows = []
    for T in (1024, 4096):
        rows.append(dict(arch="softmax_attention", backend="sdpa", seq_len=T, time_median_s=(T / 1024) ** 2 * 1e-3))
        rows.append(dict(arch="softmax_attention", backend="naive", seq_len=T, time_median_s=(T / 1024) ** 2 * 3e-3))
        rows.append(dict(arch="linear_attention", backend="chunked", seq_len=T, time_median_s=2e-3 * T / 1024))
    df = pd.DataFrame(rows).assign(status="ok", mode="fwd", batch=1, dtype="float32", device="cpu", family="f",
                                   key=lambda d: d.index.astype(str))
    from archbench.report.rows import prepare

    t = ratio_table(prepare(df))
    assert t.loc["linear_attention/chunked", 1024] == pytest.approx((2e-3, 2.0))
    assert t.loc["linear_attention/chunked", 4096] == pytest.approx((8e-3, 0.5))
    assert t.loc["softmax_attention/naive", 1024][1] == pytest.approx(3.0)  # vs the reference's best backend
    page = render_html(df, [])
    assert 'id="ratios"' in page and "<b>8 ms (0.50x)</b>" in page and "2 ms (2.00x)" in page


def test_survey_puts_claims_beside_evidence():
    from archbench.report import render_html
    from archbench.report.answers import survey

    rows = []
    for arch, fam, p, state in (("softmax_attention", "full/softmax", 2, None), ("mamba2", "ssm/ssd", 1, 4096)):
        for T in (512, 1024, 2048):
            rows.append(dict(arch=arch, family=fam, backend="b", seq_len=T, time_median_s=(T / 512) ** p * 1e-3,
                             expected_exponent=float(p), paper=f"{arch} paper", train_complexity="O(T)",
                             decode_complexity="O(1)", state_bytes=state if state else 2 * T * 64))
    df = pd.DataFrame(rows).assign(status="ok", mode="fwd", batch=1, dtype="float32", device="cpu",
                                   key=lambda d: d.index.astype(str))
    s = survey(df).set_index("arch")
    assert s.loc["mamba2", "family"] == "ssm/ssd" and s.loc["mamba2", "fitted_exponent"] == pytest.approx(1.0)
    assert s.loc["softmax_attention", "state_bytes"] == 2 * 2048 * 64 and s.loc["softmax_attention", "state_at_T"] == "2048"
    page = render_html(df, [])
    assert 'id="survey"' in page and "mamba2 paper" in page
