"""results/baselines/<machine>/SUMMARY.md is generated from the committed rows (benchmarks/summaries.py):
the committed summaries are current, ``check`` catches a stale or missing one, ``write`` includes the
hand-written NOTES.md verbatim and the tool's own report tables."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import summaries  # noqa: E402

SMALL_RUN = summaries.BASELINES / "nvidia-h200" / "mqar-gpu"  # two rows: one task cell, one decode cell


def test_committed_summaries_match_their_rows(capsys):
    assert summaries.main(["check"]) == 0, capsys.readouterr().err


def _machine(tmp_path: Path) -> Path:
    machine = tmp_path / "some-gpu"
    shutil.copytree(SMALL_RUN, machine / "mqar-gpu")
    (machine / "NOTES.md").write_text("Hand-written: attention reached 0.258 here.\n")
    (machine / "pytest.txt").write_text("1 passed\n")
    return machine


def test_write_then_check_and_a_stale_summary_fails(tmp_path, capsys):
    machine = _machine(tmp_path)
    assert summaries.main(["check", "--root", str(tmp_path)]) == 1  # no SUMMARY.md yet
    assert "stale: " in capsys.readouterr().err
    assert summaries.main(["write", "--root", str(tmp_path)]) == 0
    text = (machine / "SUMMARY.md").read_text()
    assert text.startswith("# some-gpu: measured results")
    assert "| device | NVIDIA H200 |" in text  # header read from the rows' env
    assert "Hand-written: attention reached 0.258 here." in text  # NOTES.md verbatim
    assert "| mq | mqar-gpu | 2 | 2026-11-26 | 58 s | 3bfba16dfbc4+dirty | NVIDIA H200 |" in text  # as recorded
    assert "| softmax_attention/sdpa | 64 | 0.2579 |" in text  # archbench report's task table
    assert "[`pytest.txt`](pytest.txt)" in text  # other committed output, linked
    assert summaries.main(["check", "--root", str(tmp_path)]) == 0
    (machine / "SUMMARY.md").write_text(text.replace("0.2579", "0.2600"))
    assert summaries.main(["check", "--root", str(tmp_path)]) == 1
    (machine / "NOTES.md").write_text("Changed notes.\n")  # notes are part of what is generated
    assert summaries.main(["write", "--root", str(tmp_path)]) == 0
    assert "Changed notes." in (machine / "SUMMARY.md").read_text()
    assert summaries.main(["check", "--root", str(tmp_path)]) == 0


def test_every_cell_lists_what_the_grouped_tables_leave_out(tmp_path):
    machine = _machine(tmp_path)
    text = summaries.render(machine)
    cells = text[text.index("### Every cell") :]
    assert "| training s |" in cells.splitlines()[2] and "| 49 |" in cells  # train_wall_s of the task row
    assert "| decode |" in cells and "| eager |" in cells  # the decode row, timed eagerly on CUDA


def test_missing_results_folder_is_a_usage_error(tmp_path, capsys):
    assert summaries.main(["check", "--root", str(tmp_path / "nowhere")]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_rows_of_another_command_are_not_credited_to_the_run(tmp_path):
    """A recipe row without a run id, beside rows that name theirs, is listed as its recipe, not
    as run.json's run; its table is the report's recipe table."""
    machine = _machine(tmp_path)
    row = {"recipe": "radlads", "model": "teacher", "status": "ok", "bits_per_byte": 2.5}
    with open(machine / "mqar-gpu" / "rows.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    (machine / "mqar-gpu" / "run.json").write_text(json.dumps({"run_id": "mq", "suite": "mqar-gpu"}))
    text = summaries.render(machine)
    assert "| (not recorded) | recipe radlads | 1 |" in text
    assert "| mq | mqar-gpu | 2 |" in text
    assert "### Recipe radlads" in text and "| teacher | ok | 2.5000 |" in text
