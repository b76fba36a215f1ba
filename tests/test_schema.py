"""The row contract: every column a real cell writes is described, the docs' table is the schema's,
the store refuses rows without a status or key, and the modules agree on the shared names."""

from __future__ import annotations

from pathlib import Path

import pytest

from archbench import schema
from archbench.schema import BEGIN, COLUMN_NAMES, END, check_row, doc_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "running.md"

FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "budget_s": 0.02, "decode_tokens": 4, "energy_window_s": 0.05}
SUITE = {
    "name": "schema",
    "defaults": {"d_model": 32, "n_heads": 2, "vocab_size": 64, "measure": FAST, "task": "mqar", "num_kv_pairs": 2,
                 "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "train_examples": 64, "test_examples": 16}},
    "sweep": {"arch": "softmax_attention", "backend": "reference", "seq_len": 32, "mode": ["fwd_bwd", "decode", "task"]},
}  # fmt: skip


def test_docs_column_table_is_the_schemas():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/running.md lacks the row-column markers"
    start = text.index(BEGIN)
    block = text[start : text.index(END, start) + len(END)]
    assert block == doc_block(), (
        "docs/running.md's row-column table is stale: replace the block between its markers with "
        "python -c 'from archbench.schema import doc_block; print(doc_block())'"
    )


def test_every_column_a_real_cell_row_has_is_described():
    """Rows as the runner writes them: the key, the cell's identity, status and error, then what
    ``run_cell`` measured (a timing cell of each kind and a task cell)."""
    from archbench.bench import run_cell
    from archbench.suite import parse_suite

    cells = parse_suite(SUITE).cells()
    assert sorted(c.mode for c in cells) == ["decode", "fwd_bwd", "task"]
    for cell in cells:
        row = {"key": cell.key, **cell.identity(), "status": "ok", "error": None, **run_cell(cell.model_dump())}
        check_row(row)
        missing = sorted(set(row) - set(COLUMN_NAMES))
        assert not missing, f"{cell.label}: columns with no description in archbench/schema.py: {missing}"
        if cell.mode != "task":
            for group in ("timing", "memory", "roofline", "energy"):
                described = {c.name for c in schema.COLUMNS if c.group == group}
                assert described & set(row), f"{cell.label}: no {group} column"


def test_every_cell_field_is_described():
    from archbench.fields import CELL_FIELDS

    assert [c.name for c in schema.COLUMNS if c.group == "cell"] == list(CELL_FIELDS)
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES)
    assert all(c.type and c.meaning for c in schema.COLUMNS)


@pytest.mark.parametrize(
    "row,column",
    [
        ({"key": "k"}, "'status': missing"),
        ({"key": "k", "status": "done"}, "'status': 'done' is not a status; statuses: ok, oom"),
        ({"status": "ok", "arch": "a"}, "'key': missing"),
        ({"key": "", "status": "ok"}, "'key': '' is not a cell key"),
        ({"key": None, "status": "ok", "model": "m"}, "'key': None is not a cell key"),
    ],
)
def test_check_row_names_the_column(row, column):
    with pytest.raises(ValueError) as e:
        check_row(row)
    assert column in str(e.value) and "\n" not in str(e.value)


def test_rows_without_a_key_that_name_their_recipe_or_model_are_kept():
    check_row({"recipe": "radlads", "model": "teacher", "status": "ok"})
    check_row({"model": "student", "status": "error", "error": "boom"})


def test_store_refuses_a_row_outside_the_contract(tmp_path):
    from archbench.store import RunDir

    rd = RunDir(tmp_path / "run").create()
    with pytest.raises(ValueError, match="row column 'status'"):
        rd.append({"key": "k", "status": "running"})
    assert not rd.rows_path.exists() or rd.rows() == [], "a refused row is not written"
    rd.append({"key": "k", "status": "ok"})
    assert [r["key"] for r in rd.rows()] == ["k"]


def test_modules_share_the_schemas_names():
    from archbench import bench, spec, suite

    assert suite.MODES is schema.MODES and "recipe" in schema.MODES
    assert suite.QUALITY_MODES is schema.QUALITY_MODES and bench.QUALITY_MODES is schema.QUALITY_MODES
    assert spec.DTYPES is schema.DTYPES and list(bench.DTYPES) == list(schema.DTYPES)
    assert set(schema.FAILED_STATUSES) < set(schema.STATUSES)
