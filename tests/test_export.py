"""Results that leave archbench: export to Parquet / CSV / JSON Lines (a Parquet round trip keeps
every column and type), a DuckDB query over the file, and push to a mocked Hugging Face hub."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.export import SCHEMA_VERSION, ExportError, json_columns, push, read_export, rows_frame


def _run(tmp_path: Path, name: str = "run1") -> Path:
    """A run directory with rows of every kind a run writes: timing, checkpoint, lm-eval, a failure."""
    run = tmp_path / "checkpoints" / name
    run.mkdir(parents=True)
    env = {"torch": "2.13.0", "device_name": "cpu", "host": "h", "threads": 2}
    rows = [
        {"key": "a1", "arch": "linear_attention", "mode": "fwd", "seq_len": 256, "status": "ok", "error": None,
         "time_median_s": 0.0125, "time_samples_s": [0.012, 0.0125, 0.013], "tokens_per_s": 20480.0, "params": 1024,
         "kernels": ["chunked"], "env": env, "cuda_graph": False},
        {"key": "b2", "arch": "checkpoint", "model": "/m/llama", "mode": "bpb", "seq_len": 512, "status": "ok",
         "error": None, "bits_per_byte": 1.25, "params": 135_000_000, "kernels": [],
         "implementations": [{"mixer": "LlamaAttention", "layers": 30, "path": "sdpa"}],
         "implementation": "LlamaAttention x30: sdpa", "trust_remote_code": False, "env": env, "cuda_graph": None},
        {"key": "c3", "arch": "checkpoint", "model": "/m/llama", "mode": "lm_eval", "eval_task": "piqa", "seq_len": 512,
         "status": "ok", "error": None, "accuracy": 0.6, "eval_metrics": {"acc": 0.6, "acc_norm": 0.62},
         "eval_limit": 100, "kernels": [], "env": env},
        {"key": "d4", "arch": "checkpoint", "model": "org/x", "mode": "prefill", "seq_len": 512, "status": "unsupported",
         "error": "model 'org/x' is not a local directory ...", "env": env},
    ]  # fmt: skip
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({"suite": "checkpoints", "run_id": name, "status": "complete"}))
    return run


def test_frame_has_schema_version_and_flat_env(tmp_path):
    df = rows_frame([_run(tmp_path)])
    assert (df["schema_version"] == SCHEMA_VERSION).all() and len(df) == 4
    assert {"env_torch", "env_device_name", "env_threads", "run_dir"} <= set(df.columns) and "env" not in df.columns
    assert set(json_columns(df)) >= {"implementations", "eval_metrics"}
    assert "time_samples_s" not in json_columns(df)  # a list of numbers stays a list


def test_parquet_round_trip_keeps_every_column_and_type(tmp_path):
    pytest.importorskip("pyarrow")
    run = _run(tmp_path)
    out = tmp_path / "rows.parquet"
    r = CliRunner().invoke(main, ["export", str(run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "4 rows" in r.output
    before, after = rows_frame([run]), read_export(out)
    assert list(after.columns) == list(before.columns)
    for col in before.columns:
        assert after[col].dtype == before[col].dtype, col
        for a, b in zip(after[col], before[col]):
            assert (pd.isna(a) and pd.isna(b)) if not isinstance(b, (list, dict)) and pd.isna(b) else a == b, (col, a, b)
    assert after.loc[1, "implementations"] == [{"mixer": "LlamaAttention", "layers": 30, "path": "sdpa"}]
    assert after.loc[0, "time_samples_s"] == [0.012, 0.0125, 0.013]


def test_duckdb_reads_the_export(tmp_path):
    pytest.importorskip("pyarrow")
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "rows.parquet"
    assert CliRunner().invoke(main, ["export", str(_run(tmp_path)), "-o", str(out)]).exit_code == 0
    got = duckdb.sql(f"SELECT arch, model, mode, bits_per_byte, accuracy FROM read_parquet('{out}') "
                     "WHERE status = 'ok' ORDER BY key").fetchall()  # fmt: skip
    assert got == [("linear_attention", None, "fwd", None, None), ("checkpoint", "/m/llama", "bpb", 1.25, None),
                   ("checkpoint", "/m/llama", "lm_eval", None, 0.6)]  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_jsonl_and_csv(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    r = CliRunner().invoke(main, ["export", str(_run(tmp_path)), "-o", str(out)])
    assert r.exit_code == 0, r.output
    back = read_export(out)
    assert len(back) == 4 and (back["schema_version"] == SCHEMA_VERSION).all()
    impl = back.loc[1, "implementations"]
    assert (json.loads(impl) if suffix == ".csv" else impl)[0]["path"] == "sdpa"


@pytest.mark.parametrize("args, needle", [
    (["nope-dir", "-o", "x.parquet"], "no run found"),
    (["RUN", "-o", "x.xlsx"], "cannot tell the format"),
])  # fmt: skip
def test_export_bad_input_exits_2(tmp_path, args, needle):
    args = [str(_run(tmp_path)) if a == "RUN" else str(tmp_path / a) if a == "nope-dir" else a for a in args]
    r = CliRunner().invoke(main, ["export", *args])
    assert r.exit_code == 2 and needle in r.output


class FakeApi:
    """HfApi's two calls push makes, recorded; ``fail`` raises like a machine without a network."""

    def __init__(self, fail: bool = False):
        self.calls, self.files, self.fail = [], {}, fail

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        if self.fail:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        root = Path(folder_path)
        self.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_uploads_the_rows_and_run_json(tmp_path):
    api = FakeApi()
    url = push(_run(tmp_path), "my-org/results", api=api)
    assert url == "https://huggingface.co/datasets/my-org/results"
    assert api.calls[0] == ("create_repo", "my-org/results", "dataset", False, True)
    assert api.calls[1][:3] == ("upload_folder", "my-org/results", "dataset") and "4 rows" in api.calls[1][3]
    data = [f for f in api.files if f.startswith("data/checkpoints/run1.")]
    assert "data/checkpoints/run1.run.json" in data and any(f.endswith((".parquet", ".jsonl")) for f in data)


def test_push_failures_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="push to my-org/results failed .*Failed to resolve") as e:
        push(_run(tmp_path), "my-org/results", api=FakeApi(fail=True))
    assert "\n" not in str(e.value)
    with pytest.raises(ExportError, match="ORG/NAME"):
        push(_run(tmp_path, "run2"), "no-slash", api=FakeApi())
    import archbench.export as export_mod

    monkeypatch.setattr(export_mod, "push", lambda *a, **k: (_ for _ in ()).throw(ExportError("offline: one line")))
    r = CliRunner().invoke(main, ["push", str(tmp_path), "--repo-id", "a/b"])
    assert r.exit_code == 2 and "offline: one line" in r.output


def test_export_and_compare_name_the_lines_they_skipped(tmp_path):
    """A rows file with a line that is not JSON: export says so on stderr, compare in its notes."""
    import json

    from click.testing import CliRunner

    from archbench.cli import main
    from archbench.compare import compare

    runs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        row = {"key": "k1", "arch": "softmax_attention", "backend": "sdpa", "mode": "fwd", "status": "ok",
               "time_median_s": 0.01, "time_samples_s": [0.01] * 10, "suite": "s", "device": "cpu"}
        (d / "rows.jsonl").write_text(json.dumps(row) + "\n" + "{not json\n" + json.dumps(row | {"key": "k2"}) + "\n")
        runs.append(d)
    r = CliRunner().invoke(main, ["export", str(runs[0]), "-o", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable line(s)" in r.stderr and "rows.jsonl" in r.stderr
    notes = compare(runs[0], runs[1]).notes
    assert any(n.startswith("base: skipped 1 unreadable line(s)") for n in notes), notes
