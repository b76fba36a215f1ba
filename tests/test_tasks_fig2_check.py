"""benchmarks/zoology_fig2.py's logic on the CPU: its suite overrides expand, and its table puts
rows beside Figure 2's statements and lists every disagreement or protocol difference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from archbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("zoology_fig2", ROOT / "benchmarks" / "zoology_fig2.py")
fig2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fig2)


def test_overrides_select_attention_and_the_gated_convolutions():
    full = load_suite(ROOT / "suites" / "mqar.yaml", fig2.suite_overrides("cpu")).cells()
    assert {c.arch for c in full} == set(fig2.ARCHS) and {c.mode for c in full} == {"task"}
    assert len(full) == 4 * 4 * 4, "4 archs x 4 (L, kv) x 4 d_model"
    assert {(c.seq_len, c.batch) for c in full} == {(64, 512), (128, 512), (256, 256), (512, 128)}
    tiny = load_suite(ROOT / "suites" / "mqar.yaml", fig2.suite_overrides("cpu", tiny=True)).cells()
    assert len(tiny) == 8 and all(c.train.epochs == 1 and c.vocab_size == 256 for c in tiny)


def _row(arch, d, score, comparable="Zoology Fig. 2"):
    return {"mode": "task", "status": "ok", "arch": arch, "seq_len": 64, "num_kv_pairs": 4, "d_model": d,
            "task_score": score, "task_score_min": score, "task_score_max": score, "best_lr": 1e-3,
            "comparable_to": comparable}  # fmt: skip


def test_table_marks_agreement_and_lists_disagreements(tmp_path):
    rows = [_row("softmax_attention", 64, 1.0), _row("hyena", 64, 0.4), _row("h3", 64, 1.0),
            _row("softmax_attention", 128, 0.5), _row("base_conv", 256, 0.2),
            _row("hyena", 128, 0.1, "quick check, not comparable with Zoology Figure 2 (vocabulary 256, not 8192)")]  # fmt: skip
    md = fig2.table(rows)
    assert "| 64 | 4 | 64 | hyena | 0.400 (0.400..0.400) | 0.001 | Zoology Fig. 2 | below attention at this (L, d_model) | yes |" in md
    assert "| h3 | 1.000" in md and "| 64 | 4 | 64 | h3 |" in md and md.count("**no**") == 2  # h3 ties attention; attention at 128
    assert "| base_conv | 0.200 (0.200..0.200) | 0.001 | Zoology Fig. 2 | below attention at this (L, d_model) | n/a |" in md
    problems = md.split("## Disagreements")[1]
    assert "h3 L=64 d_model=64: disagrees; same protocol: to be explained" in problems
    assert "softmax_attention L=64 d_model=128: disagrees" in problems
    assert "hyena L=64 d_model=128: quick check, not comparable with Zoology Figure 2 (vocabulary 256, not 8192)" in problems
    (tmp_path / "rows.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows))
    assert fig2.main(["--rows", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "fig2.md").read_text() == md
