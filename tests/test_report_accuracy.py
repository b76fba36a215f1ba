"""Accuracy vs efficiency in the report: Pareto front, task tables, charts, escaping."""

from __future__ import annotations

import math

import pandas as pd

from archbench.report import render_html
from archbench.report.accuracy import pareto_front, task_groups, task_table


def test_pareto_front_keeps_only_undominated_points():
    xs = [10, 20, 30, 40, 15, math.nan]
    ys = [0.2, 0.5, 0.4, 0.9, 0.2, 1.0]
    assert pareto_front(xs, ys) == [0, 1, 3]  # (15, .2) dominated by (10, .2); (30, .4) by (20, .5)
    assert pareto_front(xs, [3.0, 2.0, 2.5, 1.0, 3.5, 0.0], higher_is_better=False) == [0, 1, 3]
    assert pareto_front([], []) == []


def _task_row(arch, d, score, state, kv=4, **extra):
    return {
        "key": f"{arch}-{d}-{kv}", "arch": arch, "backend": "ref", "mode": "task", "status": "ok", "task": "mqar",
        "seq_len": 64, "num_kv_pairs": kv, "d_model": d, "n_layers": 2, "batch": 64, "dtype": "float32",
        "device": "cpu", "task_metric": "accuracy", "task_score": score, "accuracy": score, "task_score_std": 0.01,
        "n_seeds": 2, "best_lr": 3e-3, "train_steps": 500, "state_bytes": state,
        "task_by_group": {"kv=4": score, "kv=8": score / 2}, **extra,
    }  # fmt: skip


def test_task_groups_tables_and_decode_join():
    rows = [
        _task_row("softmax_attention", 64, 0.99, 65536),
        _task_row("mamba2", 64, 0.4, 8192),
        _task_row("mamba2", 128, 0.6, 16384),
        _task_row("mamba2", 64, 0.3, 8192, kv=8),
        {"key": "d", "arch": "mamba2", "backend": "ref", "mode": "decode", "status": "ok", "seq_len": 64,
         "d_model": 64, "batch": 1, "time_median_s": 1e-3, "latency_per_token_s": 2e-4},
    ]  # fmt: skip
    groups = task_groups(pd.DataFrame(rows))
    assert [g.label for g in groups] == ["task=mqar, T=64, kv=4", "task=mqar, T=64, kv=8"]
    table = task_table(groups[0])
    assert list(table["arch"]) == ["softmax_attention", "mamba2", "mamba2"]  # by width, best first
    assert "[kv=8]" in table.columns
    dec = dict(zip(zip(table["arch"], table["d_model"]), table["decode_ms"]))
    assert dec[("mamba2", 64)] == 0.2 and math.isnan(dec[("mamba2", 128)])


def test_report_has_accuracy_section_with_pareto_and_escapes():
    evil = "<script>alert(1)</script>"
    rows = [_task_row("softmax_attention", 64, 0.99, 65536), _task_row(evil, 64, 0.5, 4096)]
    page = render_html(pd.DataFrame(rows), [])
    assert 'id="accuracy"' in page and "Pareto front" in page and "task-0-state_bytes" in page
    assert evil not in page and "&lt;script&gt;" in page
    assert "<b>0.9900 ± 0.010</b>" in page  # best score in bold, with its spread over seeds


def test_diverged_training_is_flagged_in_table_page_and_summary():
    grid = [{"lr": 3e-3, "scores": [0.0, 0.2], "mean": 0.1, "steps": [118, 500], "diverged": 1}]
    rows = [_task_row("mamba2", 128, 0.1, 16384, diverged=1, lr_grid=grid), _task_row("softmax_attention", 128, 0.99, 65536)]
    table = task_table(task_groups(pd.DataFrame(rows))[0]).set_index("arch")
    assert table.loc["mamba2", "diverged"] == 1 and table.loc["mamba2", "runs"] == 2
    assert table.loc["softmax_attention", "diverged"] == 0
    page = render_html(pd.DataFrame(rows), [])
    assert "diverged in 1 of 2 runs" in page and page.count("diverged in") == 1
    from archbench.report.summary import render_markdown

    assert "0.1000 ± 0.010, diverged in 1 of 2 runs" in render_markdown(pd.DataFrame(rows), [])


def test_report_without_task_rows_has_no_accuracy_section():
    row = {"key": "a", "arch": "x", "backend": "b", "mode": "fwd", "status": "ok", "seq_len": 64, "batch": 1,
           "time_median_s": 1e-3}  # fmt: skip
    assert 'id="accuracy"' not in render_html(pd.DataFrame([row]), [])


def test_runs_stopped_by_the_time_cap_are_flagged_in_page_and_summary():
    from archbench.report.summary import render_markdown

    rows = [_task_row("mamba2", 64, 0.4, 16384, out_of_time=1), _task_row("softmax_attention", 64, 0.99, 65536)]
    table = task_table(task_groups(pd.DataFrame(rows))[0]).set_index("arch")
    assert table.loc["mamba2", "out_of_time"] == 1 and table.loc["softmax_attention", "out_of_time"] == 0
    page = render_html(pd.DataFrame(rows), [])
    assert "stopped at max_train_s in 1 of 2 runs" in page and page.count("stopped at max_train_s") == 1
    assert "0.4000 ± 0.010, stopped at max_train_s in 1 of 2 runs" in render_markdown(pd.DataFrame(rows), [])


def test_comparable_to_reaches_headings_tables_and_the_zoology_facets():
    from archbench.report.accuracy import zoology_facets

    fig2 = {"comparable_to": "Zoology Fig. 2"}
    rows = [
        _task_row("softmax_attention", 64, 0.99, 65536, task_score_min=0.98, task_score_max=1.0, **fig2),
        _task_row("softmax_attention", 128, 1.0, 131072, task_score_min=1.0, task_score_max=1.0, **fig2),
        _task_row("hyena", 64, 0.3, 4096, task_score_min=0.2, task_score_max=0.45, **fig2),
        _task_row("hyena", 128, 0.7, 8192, task_score_min=0.6, task_score_max=0.8, **fig2),
    ]
    long = dict(rows[0], key="long", seq_len=128, num_kv_pairs=8, comparable_to="quick check, not comparable with Zoology Figure 2 (vocabulary 256, not 8192)")
    groups = task_groups(pd.DataFrame(rows + [long]))
    assert [g.comparable for g in groups] == ["Zoology Fig. 2", "quick check, not comparable with Zoology Figure 2"]
    assert groups[0].label.endswith("— Zoology Fig. 2")
    assert task_table(groups[1])["comparable_to"].iloc[0].endswith("(vocabulary 256, not 8192)")
    fig = zoology_facets(pd.DataFrame(rows + [long]))
    assert [a["text"] for a in fig.layout.annotations] == ["L=64, kv=4", "L=128, kv=8"], "one panel per length"
    hyena = next(t for t in fig.data if t.name == "hyena")
    assert list(hyena.x) == [64, 128] and list(hyena.y) == [0.3, 0.7]
    assert [round(v, 6) for v in hyena.error_y.array] == [0.15, 0.1] and [round(v, 6) for v in hyena.error_y.arrayminus] == [0.1, 0.1]
    assert zoology_facets(pd.DataFrame(rows[:1])) is None, "one width is no curve"
    page = render_html(pd.DataFrame(rows + [long]), [])
    assert 'id="task-facets"' in page and "not comparable with Zoology Figure 2" in page
