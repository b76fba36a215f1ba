"""The regression gate: synthetic runs with known slowdowns and known noise, judged cell by cell."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.compare import IDENTITY_FIELDS, CompareError, compare, format_markdown, save_baseline
from archbench.measure.stats import average_ranks, bootstrap_ratio_ci, mann_whitney_p, median_ci
from archbench.store import RunDir

DEV_A = "NVIDIA H100 80GB HBM3"
DEV_B = "NVIDIA A100-SXM4-40GB"


def _row(arch, seq_len, samples, status="ok", device_name=DEV_A, mem=100e6, energy=None, key=None):
    samples = [float(s) for s in samples]
    return {
        "key": key or f"{arch}-{seq_len}",
        "arch": arch, "backend": "chunked", "level": "mixer", "mode": "fwd", "dtype": "float32", "device": "cuda",
        "batch": 1, "seq_len": seq_len, "d_model": 256, "n_heads": 4, "seed": 0,
        "status": status, "error": None if status == "ok" else f"{status}: boom",
        "time_median_s": float(np.median(samples)) if samples and status == "ok" else None,
        "time_samples_s": samples if status == "ok" else None,
        "peak_mem_bytes": mem if status == "ok" else None,
        "energy_source": "nvml" if energy else "none", "energy_j_per_call": energy,
        "env": {"device_name": device_name, "torch": "2.13.0"},
    }  # fmt: skip


def _write_run(path, rows, device_name=DEV_A, run_id="r1"):
    rd = RunDir(path).create()
    rd.write_meta({"run_id": run_id, "suite": "synthetic", "env": {"device_name": device_name, "torch": "2.13.0"}})
    for r in rows:
        rd.append(r)
    return path


def _cells(seed, n_cells=4, n=30, mean=1e-3, rel_sd=0.02, slow=None, factor=1.3):
    """``n_cells`` cells of ``n`` samples ~ N(mean, rel_sd*mean); the cell named ``slow`` is ``factor`` slower."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cells):
        arch = f"arch{i}"
        m = mean * (factor if arch == slow else 1.0)
        rows.append(_row(arch, 1024, rng.normal(m, rel_sd * mean, n), key=f"{i:016x}"))
    return rows


def _invoke(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


# ---- statistics ----------------------------------------------------------------------------


def test_mann_whitney_matches_reference_values():
    # R: wilcox.test(c(1,2,3), c(4,5,6), exact=FALSE)$p.value == 0.08086
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.08086, abs=1e-4)
    assert mann_whitney_p([4, 5, 6], [1, 2, 3]) == pytest.approx(0.08086, abs=1e-4)
    # ties: ranks 1, 2.5, 2.5, 5, 5 | 5, 7.5, 7.5, 9, 10; U = 1, tie term 36/90 -> z = 11/4.6993, p = 0.01924
    assert mann_whitney_p([1, 2, 2, 3, 3], [3, 4, 4, 5, 6]) == pytest.approx(0.01924, abs=1e-4)
    assert mann_whitney_p([2.0] * 5, [2.0] * 7) == 1.0
    assert list(average_ranks(np.array([3.0, 1.0, 2.0, 2.0]))) == [4.0, 1.0, 2.5, 2.5]


def test_median_interval_is_distribution_free_and_honest_for_small_n():
    x = np.arange(1.0, 11.0)  # n = 10: P(Bin(10, .5) = 0) < 0.005 < P(<= 1), so the extremes
    assert median_ci(x) == (1.0, 10.0)
    assert median_ci(np.arange(7.0)) == (-math.inf, math.inf)  # too few samples for 99%
    lo, hi = median_ci(np.random.default_rng(0).normal(5.0, 1.0, 400))
    assert lo < 5.0 < hi and hi - lo < 0.5


def test_bootstrap_ratio_interval_is_seeded_and_covers_the_shift():
    rng = np.random.default_rng(1)
    b, h = rng.normal(1.0, 0.02, 30), rng.normal(1.3, 0.02, 30)
    ci = bootstrap_ratio_ci(b, h)
    assert ci == bootstrap_ratio_ci(b, h)
    assert 1.25 < ci[0] < 1.3 < ci[1] < 1.35


def test_identity_fields_are_the_suite_cell_fields():
    from archbench.suite import CELL_FIELDS

    assert IDENTITY_FIELDS == CELL_FIELDS


# ---- the gate through the CLI --------------------------------------------------------------


def test_identical_runs_pass(tmp_path):
    rows = _cells(seed=0)
    base, head = _write_run(tmp_path / "b", rows), _write_run(tmp_path / "h", rows, run_id="r2")
    r = _invoke(base, head)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "4 unchanged" in r.output and "regressed" not in r.output


def test_thirty_percent_slowdown_is_caught(tmp_path):
    base = _write_run(tmp_path / "b", _cells(seed=1))
    head = _write_run(tmp_path / "h", _cells(seed=2, slow="arch2"))
    r = _invoke(base, head)
    assert r.exit_code == 1, r.output
    regressed = [line for line in r.output.splitlines() if line.startswith("regressed")]
    assert len(regressed) == 1 and "arch2/chunked" in regressed[0] and f"{2:016x}" in regressed[0]
    cmp = compare(base, head)
    (c,) = cmp.regressions
    assert c.ratio == pytest.approx(1.3, abs=0.03) and c.p_value < 1e-6
    assert 1.1 < c.ratio_ci[0] < c.ratio < c.ratio_ci[1]
    assert {x.outcome for x in cmp.cells if x is not c} == {"unchanged"}
    # the other way round it is an improvement, and the gate passes
    back = compare(head, base)
    assert [x.key for x in back.improvements] == [c.key] and back.passed


def test_noisy_but_unchanged_cells_do_not_regress(tmp_path):
    base = _write_run(tmp_path / "b", _cells(seed=10, n_cells=20, rel_sd=0.10))
    head = _write_run(tmp_path / "h", _cells(seed=11, n_cells=20, rel_sd=0.10))
    r = _invoke(base, head, "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["passed"] and len(out["cells"]) == 20
    assert not {c["outcome"] for c in out["cells"]} & {"regressed", "improved"}


def test_beyond_threshold_but_not_significant_does_not_fail(tmp_path):
    b = [0.5, 1.0, 1.5, 0.7, 1.3, 0.9, 1.1, 1.0]
    h = [x * 1.2 for x in reversed(b)]
    base = _write_run(tmp_path / "b", [_row("wobbly", 64, b, key="k1")])
    head = _write_run(tmp_path / "h", [_row("wobbly", 64, h, key="k1")])
    (c,) = compare(base, head).cells
    assert c.outcome == "insignificant" and c.ratio == pytest.approx(1.2) and c.p_value > 0.002
    assert _invoke(base, head).exit_code == 0


def test_mismatched_devices_refuse_unless_forced(tmp_path):
    rows = _cells(seed=3)
    base = _write_run(tmp_path / "b", rows, device_name=DEV_A)
    head = _write_run(tmp_path / "h", [{**r, "env": {"device_name": DEV_B}} for r in rows], device_name=DEV_B)
    r = _invoke(base, head)
    assert r.exit_code == 2
    assert DEV_A in r.output and DEV_B in r.output and "--force" in r.output
    assert len(r.output.strip().splitlines()) == 1
    forced = _invoke(base, head, "--force")
    assert forced.exit_code == 0, forced.output
    assert "different devices" in forced.output and "4 unchanged" in forced.output


def test_bad_inputs_are_one_line_errors(tmp_path):
    base = _write_run(tmp_path / "b", _cells(seed=4))
    missing = _invoke(base, tmp_path / "nope")
    assert missing.exit_code == 2 and "nothing at" in missing.output and "baseline save" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    other = _write_run(tmp_path / "o", [_row("x", 8, [1e-3] * 10, key="ffff000000000000")])
    none = _invoke(base, other)
    assert none.exit_code == 2 and "no common cells" in none.output
    assert len(none.output.strip().splitlines()) == 1
    _write_run(tmp_path / "many" / "r1", _cells(seed=5))
    _write_run(tmp_path / "many" / "r2", _cells(seed=6))
    many = _invoke(tmp_path / "many", base)
    assert many.exit_code == 2 and "holds 2 runs" in many.output
    not_json = tmp_path / "x.json"
    not_json.write_text("{}")
    assert _invoke(not_json, base).exit_code == 2
    assert _invoke(base, base, "--threshold", "0.9").exit_code == 2
    with pytest.raises(CompareError, match="no common ok cell has energy_j_per_call"):
        compare(base, base, metric="energy")


def test_baseline_save_then_compare(tmp_path):
    base = _write_run(tmp_path / "b", _cells(seed=7), run_id="base-run")
    path = tmp_path / "baselines" / "ci.json"
    r = CliRunner().invoke(main, ["baseline", "save", str(base), str(path)])
    assert r.exit_code == 0, r.output
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["device"] == DEV_A and data["source_run"]["run_id"] == "base-run"
    assert data["created_at"] and data["env"]["torch"] == "2.13.0"
    cell = data["cells"][f"{0:016x}"]
    assert cell["status"] == "ok" and len(cell["time_samples_s"]) == 30 and cell["identity"]["arch"] == "arch0"
    assert cell["peak_mem_bytes"] == 100e6 and "energy_j_per_call" in cell

    same = _write_run(tmp_path / "same", _cells(seed=8))
    slow = _write_run(tmp_path / "slow", _cells(seed=9, slow="arch1"))
    assert _invoke(path, same).exit_code == 0
    r = _invoke(path, slow)
    assert r.exit_code == 1 and "arch1/chunked" in r.output
    assert _invoke(slow, path).exit_code == 0  # a baseline works on the HEAD side too (an improvement)
    # the baseline judged from its file equals the run it came from
    assert [c.outcome for c in compare(path, slow).cells] == [c.outcome for c in compare(base, slow).cells]
    with pytest.raises(CompareError, match="is a file"):
        save_baseline(path, tmp_path / "again.json")
    bad = CliRunner().invoke(main, ["baseline", "save", str(tmp_path / "nope"), str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and not (tmp_path / "x.json").exists()


def _md_columns(line: str) -> int:
    """Cells of a Markdown table row: its pipes, escaped ones (backslash pairs) left out, minus one."""
    return re.sub(r"\\.", "", line.strip()).count("|") - 1


def test_markdown_is_well_formed(tmp_path):
    rng = np.random.default_rng(12)
    b = [
        _row("pipe|arch", 64, rng.normal(1e-3, 2e-5, 30), key="k0"),
        _row("fast", 64, rng.normal(1e-3, 2e-5, 30), key="k1"),
        _row("same", 64, rng.normal(1e-3, 2e-5, 30), key="k2"),
        _row("gone", 64, rng.normal(1e-3, 2e-5, 30), key="k3"),
        _row("<b>oom</b>", 64, rng.normal(1e-3, 2e-5, 30), key="k4"),
    ]
    h = [
        _row("pipe|arch", 64, rng.normal(1.3e-3, 2e-5, 30), key="k0"),
        _row("fast", 64, rng.normal(0.7e-3, 2e-5, 30), key="k1"),
        _row("same", 64, rng.normal(1e-3, 2e-5, 30), key="k2"),
        _row("new", 64, rng.normal(1e-3, 2e-5, 30), key="k5"),
        _row("<b>oom</b>", 64, [], status="oom", key="k4"),
    ]
    base, head = _write_run(tmp_path / "b", b), _write_run(tmp_path / "h", h)
    r = _invoke(base, head, "--format", "md", "-o", tmp_path / "comment.md")
    assert r.exit_code == 1 and "FAIL" in r.output
    md = (tmp_path / "comment.md").read_text()
    assert md == format_markdown(compare(base, head))
    assert "**FAIL**" in md and "1 regressed" in md and "1 improved" in md
    assert "pipe\\|arch" in md and "pipe|arch" not in md.replace("pipe\\|arch", "")
    assert "<b>" not in md and "&lt;b&gt;oom" in md
    assert md.index("#### Regressions") < md.index("#### Now failing") < md.index("#### Improvements")
    assert md.index("#### Improvements") < md.index("<details>") < md.index("</details>")
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = [*tables, current], []
    assert len(tables) == 4  # regressions, now failing, improvements, the rest
    for t in tables:
        assert re.fullmatch(r"\|(---\|)+", t[1])
        widths = {_md_columns(line) for line in t}
        assert widths == {8}, t
    rest = "\n".join(tables[3])
    assert "added" in rest and "removed" in rest and "unchanged" in rest


def test_memory_metric_uses_the_threshold_alone(tmp_path):
    samples = np.random.default_rng(13).normal(1e-3, 2e-5, 30)
    base = _write_run(tmp_path / "b", [_row("m", 64, samples, mem=100e6, key="k1"), _row("n", 64, samples, key="k2")])
    head = _write_run(tmp_path / "h", [_row("m", 64, samples, mem=115e6, key="k1"), _row("n", 64, samples, key="k2")])
    assert _invoke(base, head).exit_code == 0  # same latency
    r = _invoke(base, head, "--metric", "memory")
    assert r.exit_code == 1 and "m/chunked" in r.output and "1.150x" in r.output
    assert _invoke(base, head, "--metric", "memory", "--threshold", "1.2").exit_code == 0
    (c, _) = compare(base, head, metric="memory").cells
    assert c.outcome == "regressed" and c.p_value is None and c.ratio_ci is None


def test_failed_cells_are_reported_not_gated(tmp_path):
    samples = np.random.default_rng(14).normal(1e-3, 2e-5, 30)
    base = _write_run(tmp_path / "b", [_row("a", 64, samples, key="k1"), _row("b", 64, [], status="error", key="k2")])
    head = _write_run(tmp_path / "h", [_row("a", 64, [], status="oom", key="k1"), _row("b", 64, samples, key="k2")])
    r = _invoke(base, head)
    assert r.exit_code == 0, r.output
    outcomes = {c.key: (c.outcome, c.note) for c in compare(base, head).cells}
    assert outcomes["k1"][0] == "broken" and outcomes["k1"][1].startswith("ok -> oom")
    assert outcomes["k2"] == ("fixed", "error -> ok")


@pytest.mark.parametrize("cmd", [["compare"], ["baseline"], ["baseline", "save"]])
def test_help(cmd):
    r = CliRunner().invoke(main, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_rows_without_samples_are_judged_by_the_threshold(tmp_path):
    base = _write_run(tmp_path / "b", [{**_row("a", 64, [1e-3] * 5, key="k1"), "time_samples_s": None}])
    head = _write_run(tmp_path / "h", [{**_row("a", 64, [1.3e-3] * 5, key="k1"), "time_samples_s": None}])
    (c,) = compare(base, head).cells
    assert c.outcome == "regressed" and c.p_value is None and "threshold alone" in c.note


# ---- the report of two runs ----------------------------------------------------------------


def test_report_of_two_runs_shows_b_over_a_with_significance(tmp_path):
    a = _write_run(tmp_path / "a", _cells(1), run_id="run-a")
    b = _write_run(tmp_path / "b", _cells(2, slow="arch2", factor=1.5), run_id="run-b")
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", str(a), str(b), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert 'id="comparison"' in page and "comparison-ratios" in page and "run-a" in page and "run-b" in page
    section = page[page.index('id="comparison"') :]
    first_row = section[section.index("<tbody>") : section.index("</tr>", section.index("<tbody>"))]
    assert "regressed" in first_row and "arch2" in first_row, "regressions lead the table"
    md = CliRunner().invoke(main, ["report", str(a), str(b), "--format", "md"])
    assert md.exit_code == 0 and "arch2" in md.output and "regress" in md.output.lower()
    one = CliRunner().invoke(main, ["report", str(a), "-o", str(tmp_path / "one.html")])
    assert one.exit_code == 0 and 'id="comparison"' not in (tmp_path / "one.html").read_text()
