"""Rows on disk: appended and flushed per cell, a torn last line tolerated, many runs in one DataFrame."""

from archbench.store import RunDir, find_run_dirs, latest_run, load, load_meta, read_rows


def _row(key, status="ok", **kw):
    return {"key": key, "arch": "a", "status": status, "seq_len": 8, "env": {"torch": "x", "host": "h"}, **kw}


def test_append_is_durable_and_torn_line_ignored(tmp_path):
    rd = RunDir(tmp_path / "suite" / "r1").create()
    rd.append(_row("k1"))
    rd.append(_row("k2", status="error", error="boom"))
    with open(rd.rows_path, "a") as f:
        f.write('{"key": "k3", "sta')  # a kill mid-write
    rows = read_rows(rd.rows_path)
    assert [r["key"] for r in rows] == ["k1", "k2"]
    assert rd.done_keys() == {"k1"}


def test_load_many_runs_flattens_env(tmp_path):
    for name, keys in (("20260101-000000", ["a", "b"]), ("20260102-000000", ["c"])):
        rd = RunDir(tmp_path / "s" / name).create()
        rd.write_meta({"run_id": name, "suite": "s"})
        for k in keys:
            rd.append(_row(k, run_id=name))
    df = load(tmp_path / "s")
    assert sorted(df["key"]) == ["a", "b", "c"]
    assert "env_torch" in df.columns and "env" not in df.columns
    assert len(find_run_dirs([tmp_path])) == 2
    assert latest_run(tmp_path / "s").name == "20260102-000000"
    assert [m["run_id"] for m in load_meta(tmp_path / "s")] == ["20260101-000000", "20260102-000000"]
    # a single run dir, or its rows.jsonl, works too
    assert len(load(tmp_path / "s" / "20260101-000000" / "rows.jsonl")) == 2


def test_rows_without_a_key_are_all_kept(tmp_path):
    from archbench.store import RunDir, load

    rd = RunDir(tmp_path / "r").create()
    for model in ("teacher", "student", "baseline"):
        rd.append({"model": model, "status": "ok"})
    rd.append({"key": "a", "status": "error"})
    rd.append({"key": "a", "status": "ok"})
    df = load(tmp_path / "r")
    assert sorted(df["model"].dropna()) == ["baseline", "student", "teacher"] and len(df) == 4
