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


def test_torn_last_line_is_set_aside_on_acquire_and_appends_resume_cleanly(tmp_path):
    from archbench.store import describe_skipped, scan_rows

    rd = RunDir(tmp_path / "r").create()
    rd.append(_row("k1"))
    with open(rd.rows_path, "a") as f:
        f.write('{"key": "k2", "sta')
    rows, skipped = scan_rows(rd.rows_path)
    assert [r["key"] for r in rows] == ["k1"] and [(s.line, s.reason) for s in skipped] == [(2, "torn last line")]
    warning = RunDir(rd.path).acquire()
    assert "line 2 was torn" in warning and "rows.jsonl.torn" in warning
    assert (rd.path / "rows.jsonl.torn").read_text() == '{"key": "k2", "sta\n'
    rd.append(_row("k3"))
    assert [r["key"] for r in read_rows(rd.rows_path)] == ["k1", "k3"]
    assert scan_rows(rd.rows_path)[1] == [] and describe_skipped([]) is None


def test_a_whole_last_row_missing_only_its_newline_is_kept(tmp_path):
    import json

    rd = RunDir(tmp_path / "r").create()
    rd.rows_path.write_text(json.dumps(_row("k1")))  # no newline
    with rd:
        assert rd.repair() is None
        rd.append(_row("k2"))
    assert [r["key"] for r in read_rows(rd.rows_path)] == ["k1", "k2"] and not (rd.path / "rows.jsonl.torn").exists()


def test_bad_lines_are_counted_and_named_by_every_reader(tmp_path):
    from archbench.store import describe_skipped, skipped_lines

    rd = RunDir(tmp_path / "r").create()
    rd.append(_row("k1"))
    with open(rd.rows_path, "a") as f:
        f.write("garbage\n[1, 2]\n")
    rd.append(_row("k2"))
    df = load(rd.path)
    assert sorted(df["key"]) == ["k1", "k2"]
    where = [(s["line"], s["reason"]) for s in df.attrs["skipped_lines"]]
    assert where == [(2, "not JSON"), (3, "a JSON list, not an object")]
    assert [s.line for s in skipped_lines(tmp_path)] == [2, 3]
    rd.rows()
    text = describe_skipped(rd.skipped_lines)
    assert text.startswith("skipped 2 unreadable line(s)") and f"{rd.rows_path}:2 (not JSON)" in text


def test_one_writer_per_run_directory(tmp_path):
    import os
    import socket

    import pytest

    from archbench.store import RunLocked

    first = RunDir(tmp_path / "r").create()
    first.acquire()
    with pytest.raises(RunLocked) as e:
        RunDir(tmp_path / "r").acquire()  # a flock is per open file: refused even within one process
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value) and "\n" not in str(e.value)
    first.release()
    with RunDir(tmp_path / "r"):  # released: the next writer gets it
        pass


def test_shard_rows_files_are_merged_by_readers(tmp_path):
    from archbench.store import rows_files

    for shard, keys in ((None, ["a"]), ((0, 2), ["b", "c"]), ((1, 2), ["d"])):
        rd = RunDir(tmp_path / "run", shard=shard).create()
        with rd:
            for k in keys:
                rd.append(_row(k))
    assert [p.name for p in rows_files(tmp_path / "run")] == ["rows.jsonl", "rows-0of2.jsonl", "rows-1of2.jsonl"]
    assert sorted(load(tmp_path).key) == ["a", "b", "c", "d"]
    assert RunDir(tmp_path / "run").done_keys() == {"a", "b", "c", "d"}
    only_shard = tmp_path / "shard-only"
    with RunDir(only_shard, shard=(2, 3)).create() as rd:
        rd.append(_row("e"))
    assert find_run_dirs([tmp_path]) == [tmp_path / "run", only_shard]
    assert list(load(only_shard / "rows-2of3.jsonl").key) == ["e"]
