"""The regression gate: synthetic runs with known slowdowns and known noise, judged cell by cell."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.compare import compare
from archbench.compare_format import format_markdown
from archbench.compare_sides import IDENTITY_FIELDS, CompareError, save_baseline
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


def test_rows_without_samples_are_bad_input(tmp_path):
    base = _write_run(tmp_path / "b", [{**_row("a", 64, [1e-3] * 5, key="k1"), "time_samples_s": None}])
    head = _write_run(tmp_path / "h", [_row("a", 64, [1.3e-3] * 5, key="k1")])
    r = _invoke(base, head)
    assert r.exit_code == 2 and "BASE cell k1" in r.output and "no time_samples_s" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert _invoke(base, head, "--metric", "memory").exit_code == 0  # memory needs no samples


# ---- underpowered: a comparison that cannot decide says so ---------------------------------


def test_two_samples_per_cell_are_underpowered_not_passed(tmp_path):
    base = _write_run(
        tmp_path / "b", [_row("a", 64, [1.0e-3, 1.01e-3], key="k1"), _row("b", 64, [1e-3, 1e-3], key="k2")]
    )
    head = _write_run(
        tmp_path / "h", [_row("a", 64, [2.0e-3, 2.02e-3], key="k1"), _row("b", 64, [1e-3, 1e-3], key="k2")]
    )
    cmp = compare(base, head)
    assert {c.outcome for c in cmp.cells} == {"underpowered"}  # a 2x change and no change alike: cannot tell
    assert "needs >= 8 per side" in cmp.cells[0].note and cmp.verdict == "UNDERPOWERED" and not cmp.passed
    r = _invoke(base, head)
    assert r.exit_code == 3, r.output
    assert r.output.startswith("archbench compare: UNDERPOWERED: 2 underpowered")
    assert _invoke(base, head, "--allow-underpowered").exit_code == 0
    # a regression elsewhere wins: exit 1
    slow = _write_run(tmp_path / "s", [_row("a", 64, [1e-3, 1e-3], key="k1"), _row("c", 64, [2e-3] * 30, key="k3")])
    fast = _write_run(tmp_path / "f", [_row("a", 64, [1e-3, 1e-3], key="k1"), _row("c", 64, [1e-3] * 30, key="k3")])
    assert _invoke(fast, slow).exit_code == 1
    md = format_markdown(compare(base, head))
    assert "**UNDERPOWERED**" in md and "#### Underpowered (2)" in md


def test_the_minimum_sample_size_follows_alpha(tmp_path):
    from archbench import gate

    assert gate.unpaired_powered(8, 8, 0.002) and not gate.unpaired_powered(7, 7, 0.002)
    assert gate.unpaired_powered(4, 4, 0.05) and not gate.unpaired_powered(3, 3, 0.05)
    rows = lambda scale: [_row("a", 64, [scale * (1 + i / 100) for i in range(5)], key="k1")]  # noqa: E731
    base, head = _write_run(tmp_path / "b", rows(1e-3)), _write_run(tmp_path / "h", rows(1.3e-3))
    assert compare(base, head).cells[0].outcome == "underpowered"  # 5 vs 5: the smoke suite's old floor
    (c,) = compare(base, head, alpha=0.05).cells
    assert c.outcome == "regressed" and c.p_value < 0.05


def test_smoke_sized_runs_pass_identical_and_fail_a_scaled_cell(tmp_path):
    """The done-when of the gate: two runs of the same code pass; one cell's samples x 1.3 fails."""
    from archbench.suite import load_suite

    smoke = load_suite(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")
    n = smoke.cells()[0].measure.min_repeats
    assert n >= 8, "the smoke suite must collect the samples the test needs at alpha 0.002"
    rng = np.random.default_rng(20)
    cells = [(a, t) for a in ("sdpa", "chunked", "naive") for t in (256, 1024, 4096)]
    noise = lambda: rng.normal(1.0, 0.03, n)  # noqa: E731
    base = _write_run(tmp_path / "b", [_row(a, t, t * 1e-6 * noise(), key=f"{a}{t}") for a, t in cells])
    same = _write_run(tmp_path / "s", [_row(a, t, t * 1e-6 * noise(), key=f"{a}{t}") for a, t in cells])
    rows = RunDir(same).rows()
    scaled = _write_run(tmp_path / "x", [{**r, "time_samples_s": [1.3 * s for s in r["time_samples_s"]],
                                          "time_median_s": 1.3 * r["time_median_s"]} if r["key"] == "chunked1024" else r
                                         for r in rows])  # fmt: skip
    assert _invoke(base, same).exit_code == 0
    r = _invoke(base, scaled)
    assert r.exit_code == 1 and "1 regressed" in r.output


def test_mismatched_suites_refuse_unless_forced(tmp_path):
    rows = _cells(seed=15)
    base = _write_run(tmp_path / "b", rows)
    other = RunDir(tmp_path / "h").create()
    other.write_meta({"run_id": "r2", "suite": "another", "env": {"device_name": DEV_A}})
    for r in rows:
        other.append(r)
    r = _invoke(base, tmp_path / "h")
    assert r.exit_code == 2 and "'synthetic'" in r.output and "'another'" in r.output and "--force" in r.output
    assert len(r.output.strip().splitlines()) == 1
    forced = _invoke(base, tmp_path / "h", "--force")
    assert forced.exit_code == 0 and "different suites" in forced.output


def test_paired_rounds_of_one_ab_run_use_the_signed_rank_test(tmp_path):
    """Both sides of an A/B run share an ab_id: the per-round medians are compared in pairs."""
    rng = np.random.default_rng(16)
    drift = rng.uniform(0.7, 1.4, 12)  # each round's conditions, shared by both sides of the round

    def side(path, scale, rounds):
        rd = RunDir(path).create()
        rd.write_meta({"run_id": path.name, "suite": "synthetic", "ab_id": "ab-1", "env": {"device_name": DEV_A}})
        meds = [scale * d * rng.normal(1.0, 0.01) for d in drift[:rounds]]
        for key, f in (("k1", 1.0), ("k2", scale)):
            rd.append({**_row("x", 64, [m for m in meds for _ in range(3)], key=key),
                       "ab_round_medians_s": [m * f / scale for m in meds]})  # fmt: skip
        return path

    base, head = side(tmp_path / "b", 1.0, 12), side(tmp_path / "h", 1.0, 12)
    cmp = compare(base, head)
    assert {c.test for c in cmp.cells} == {"signed-rank"} and cmp.passed
    slow = side(tmp_path / "s", 1.25, 12)  # k2 is 1.25x slower in every round; k1 is unchanged
    out = {c.key: c for c in compare(base, slow).cells}
    assert out["k2"].outcome == "regressed" and out["k2"].ratio == pytest.approx(1.25, rel=0.03)
    assert out["k2"].p_value == pytest.approx(2 / 2**12) and out["k2"].note == "12 of 12 rounds slower"
    assert out["k1"].outcome == "unchanged"
    # without a shared ab_id the same rows are two independent runs: the pooled samples are tested unpaired
    unpaired = compare(_strip_ab(base, tmp_path / "b2"), _strip_ab(slow, tmp_path / "s2"))
    assert {c.test for c in unpaired.cells} == {"mann-whitney"} and not any("paired" in n for n in unpaired.notes)
    few_b, few_h = side(tmp_path / "fb", 1.0, 6), side(tmp_path / "fh", 1.25, 6)
    (c, _) = compare(few_b, few_h).cells
    assert c.outcome == "underpowered" and "needs >= 10 rounds" in c.note


def _strip_ab(path, dest):
    rd = RunDir(dest).create()
    rd.write_meta({"run_id": dest.name, "suite": "synthetic", "env": {"device_name": DEV_A}})
    for r in RunDir(path).rows():
        rd.append(r)
    return dest


# ---- the report of two runs ----------------------------------------------------------------


def test_report_of_two_runs_shows_b_over_a_with_significance(tmp_path):
    a = _write_run(tmp_path / "a", _cells(1), run_id="run-a")
    b = _write_run(tmp_path / "b", _cells(2, slow="arch2", factor=1.5), run_id="run-b")
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", "--compare", str(a), str(b), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert 'id="comparison"' in page and "comparison-ratios" in page and "run-a" in page and "run-b" in page
    section = page[page.index('id="comparison"') :]
    first_row = section[section.index("<tbody>") : section.index("</tr>", section.index("<tbody>"))]
    assert "regressed" in first_row and "arch2" in first_row, "regressions lead the table"
    md = CliRunner().invoke(main, ["report", "--compare", str(a), str(b), "--format", "md"])
    assert md.exit_code == 0 and "arch2" in md.output and "regress" in md.output.lower()
    one = CliRunner().invoke(main, ["report", str(a), "-o", str(tmp_path / "one.html")])
    assert one.exit_code == 0 and 'id="comparison"' not in (tmp_path / "one.html").read_text()


# ---- the shared statistics (archbench.gate, archbench.measure.stats) --------------------------


def test_signed_rank_is_exact_and_its_floor_sets_the_rounds_needed():
    from archbench.measure.stats import min_n_mann_whitney, min_n_signed_rank, signed_rank_min_p, signed_rank_p

    # R: wilcox.test(c(1,-2,3,4,5,6), exact=TRUE)$p.value == 0.09375 (W+ = 19 of 21; 3 of 64 patterns as extreme)
    assert signed_rank_p([1.0, -2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(0.09375)
    assert signed_rank_p([-x for x in (1.0, -2.0, 3.0, 4.0, 5.0, 6.0)]) == pytest.approx(0.09375)
    assert signed_rank_p(np.arange(1.0, 11.0)) == pytest.approx(2 / 1024) == signed_rank_min_p(10)
    # ties share mid-ranks (1.5, 1.5, 3): W+ = 4.5; patterns with W+ >= 4.5: {1.5,3},{1.5',3},{all} -> 3/8 -> p = 0.75
    assert signed_rank_p([1.0, -1.0, 2.0]) == pytest.approx(0.75)
    assert signed_rank_p([0.0, 0.0]) == 1.0  # zero differences are dropped
    assert min_n_signed_rank(0.002) == 10 and min_n_signed_rank(0.05) == 6
    assert min_n_mann_whitney(0.002) == 8 and min_n_mann_whitney(0.05) == 4


def test_gate_decision_and_exit_codes_are_shared():
    from archbench import gate
    from archbench.cli import exits

    assert gate.decide(1.2, 1.1, True) == "regressed" and gate.decide(1.2, 1.1, False) == "insignificant"
    assert gate.decide(0.8, 1.1, True) == "improved" and gate.decide(1.05, 1.1, True) == "unchanged"
    assert gate.gate_exit_code(["unchanged", "underpowered"]) == 3 == exits.EXIT_UNDERPOWERED
    assert gate.gate_exit_code(["underpowered", "regressed"]) == 1 == exits.EXIT_REGRESSED
    assert gate.gate_exit_code(["underpowered"], allow_underpowered=True) == 0
    j = gate.judge_paired([1.0] * 9, [1.3] * 9, 1.1, 0.002)
    assert j.verdict == "underpowered" and "needs >= 10 rounds" in j.note
    j = gate.judge_paired([1.0, 2.0, 1.5] * 4, [1.3, 2.6, 1.95] * 4, 1.1, 0.002)
    assert j.verdict == "regressed" and j.ratio == pytest.approx(1.3) and j.test == "signed-rank"
    with pytest.raises(ValueError, match="same number of rounds"):
        gate.judge_paired([1.0], [1.0, 2.0], 1.1, 0.002)
    with pytest.raises(ValueError, match="threshold must be a ratio above 1"):
        gate.judge_unpaired([1.0], [1.0], 1.0, 0.002)


# ---- run-to-run noise -------------------------------------------------------------------


def test_run_noise_measures_the_spread_of_cell_ratios_and_ignores_a_few_changed_cells():
    from archbench import gate

    rng = np.random.default_rng(3)
    ratios = list(np.exp(rng.normal(0.0, 0.05, 40)))
    noise = gate.run_noise(ratios + [3.0, 4.0], alpha=0.002)  # two real changes do not widen it
    assert abs(noise.spread - 0.05) < 0.015 and noise.n_cells == 42
    assert noise.floor == pytest.approx(math.exp(3.0902 * noise.spread), rel=1e-3)
    assert gate.run_noise(ratios[:7], alpha=0.002) is None, "fewer than 8 cells: not measured"


def _drifting_runs(tmp_path, cell_sd, slow=None, seed=30, n_cells=12, n=20):
    """Two runs of ``n_cells`` cells whose medians move between runs by N(0, cell_sd) in log
    (run-to-run noise the per-call samples do not show) with tight samples (0.5%)."""
    rng = np.random.default_rng(seed)
    runs = []
    for side in ("a", "b"):
        rows = []
        for i in range(n_cells):
            m = 1e-3 * (1 + i) * math.exp(rng.normal(0.0, cell_sd)) * (1.3 if side == "b" and i == slow else 1.0)
            rows.append(_row(f"arch{i}", 1024, rng.normal(m, 0.005 * m, n), key=f"{i:016x}"))
        runs.append(_write_run(tmp_path / side, rows))
    return runs


def test_two_runs_inside_their_own_noise_are_underpowered_not_failed(tmp_path):
    a, b = _drifting_runs(tmp_path, cell_sd=0.15)
    c = compare(a, b)
    assert not c.regressions and c.exit_code == 3, c.summary
    assert any("run-to-run noise from 12 cells" in n for n in c.notes)
    assert all("use archbench ab" in x.note for x in c.of("underpowered"))


def test_quiet_runs_pass_identical_code_and_catch_one_cell_at_1_3x(tmp_path):
    a, b = _drifting_runs(tmp_path / "same", cell_sd=0.01)
    assert compare(a, b).exit_code == 0
    a, b = _drifting_runs(tmp_path / "slow", cell_sd=0.01, slow=5)
    c = compare(a, b)
    assert c.exit_code == 1 and [x.identity["arch"] for x in c.regressions] == ["arch5"]
