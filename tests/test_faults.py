"""The fault-injection matrix (docs/reliability.md): each fault a cluster or CI machine produces,
driven through the real CLI in subprocesses, and after each the invariant: once a final
``--resume`` has run, every planned cell has exactly one row, no cell was measured twice, no row
belongs to another plan, and no process of the run is left behind.

The runs use ``tests/fault_plugin.py``, named by file path, whose cells sleep a little per call
so that a signal lands mid-run. Processes of a run are found by a marker in their environment
(spawned workers inherit it), so "no process left behind" checks every descendant, however deep.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from archbench.cli import main
from archbench.store import RunDir, load, read_rows
from archbench.suite import load_suite

TESTS = Path(__file__).resolve().parent
PLUGIN = TESTS / "fault_plugin.py"
FAST = {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.01, "energy": False, "roofline": False}
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")


def _suite(path: Path, archs, seq_lens, plugin: str = str(PLUGIN), name: str = "faults") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            plugins: [{json.dumps(plugin)}]
            defaults: {{d_model: 16, n_heads: 2, timeout_s: 60, measure: {json.dumps(FAST)}}}
            sweep:
              arch: {json.dumps(archs)}
              seq_len: {json.dumps(seq_lens)}
            """
        )
    )
    return path


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "archbench.cli", "run", *args, "--no-report"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _cli(args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archbench.cli", "run", *args, "--no-report"], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(read_rows(path)) < n:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before writing {n} rows: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {n} rows in {timeout} s"
        time.sleep(0.05)


def _wait_holder(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``proc`` holds the run directory's lock (it writes its pid into the lock file)."""
    lock = out / "rows.jsonl.lock"
    deadline = time.monotonic() + timeout
    while not (lock.is_file() and f"pid {proc.pid} " in lock.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.05)


def _procs_with(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (zombies excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f"ARCHBENCH_FAULT_MARK={marker}".encode() in (d / "environ").read_bytes().split(b"\0"):
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(d.name))
        except OSError:
            continue
    return found


def _none_left(marker: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _procs_with(marker):
        assert time.monotonic() < deadline, f"processes left behind: {_procs_with(marker)}"
        time.sleep(0.1)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def test_kill_torn_line_concurrent_run_term_hup_changed_suite_then_resume(tmp_path, cli_env):
    """Every row of the matrix that concerns a live run, in sequence on one run directory:
    SIGKILL of the runner (its worker dies with it), a torn last line, a second run into the
    locked directory, SIGTERM (exit 143) and SIGHUP (exit 129), a changed suite (refused, then
    --allow-changed); the final resume leaves exactly one ok row per planned cell."""
    rng = random.Random(21)
    marker = uuid.uuid4().hex
    env = dict(cli_env, ARCHBENCH_FAULT_MARK=marker, ARCHBENCH_FAULT_SLEEP_S="0.2")
    lens = [8, 16, 24, 32, 40, 48, 56, 64]
    suite = _suite(tmp_path / "s.yaml", ["fault_sleep"], lens)
    out = tmp_path / "run"
    rows = out / "rows.jsonl"

    # SIGKILL to the runner alone, at a random point after its first row: the worker must not survive it
    a = _start([str(suite), "--out", str(out)], env)
    _wait_rows(rows, 1, a)
    time.sleep(rng.uniform(0, 0.3))
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    _none_left(marker)
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # nobody could say otherwise

    # a crash mid-write leaves a torn last line
    kept = read_rows(rows)
    with open(rows, "a") as f:
        f.write('{"key": "torn", "stat')

    # --resume sets it aside; a second run into the same directory meanwhile is refused, naming the holder
    b = _start([str(suite), "--out", str(out), "--resume"], env)
    _wait_holder(out, b)
    c = _cli([str(suite), "--out", str(out), "--resume"], env)
    assert c.returncode == 2, c.stderr
    line = _one_line(c.stderr)
    assert f"pid {b.pid}" in line and socket.gethostname() in line and "another --out" in line
    assert (out / "rows.jsonl.torn").read_text() == '{"key": "torn", "stat\n'
    now = read_rows(rows)  # the resumed run may have appended rows meanwhile: the kept ones come first, intact
    assert now[: len(kept)] == kept and all(r.get("key") != "torn" for r in now)
    _wait_rows(rows, len(kept) + 1, b)
    time.sleep(rng.uniform(0, 0.3))
    os.kill(b.pid, signal.SIGTERM)  # what a CI timeout or Slurm sends
    assert b.wait(timeout=60) == 143, b.stderr.read()[-2000:]
    assert "set aside" in b.stderr.read()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    _none_left(marker)

    d = _start([str(suite), "--out", str(out), "--resume"], env)
    n = len(read_rows(rows))
    _wait_rows(rows, n + 1, d)
    os.kill(d.pid, signal.SIGHUP)  # the terminal went away
    assert d.wait(timeout=60) == 129
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    _none_left(marker)
    assert len(read_rows(rows)) < len(lens), "the signals should land before the last cell"

    # the suite changed: refused, then accepted with --allow-changed, new cells run beside the old rows
    changed = _suite(tmp_path / "s2.yaml", ["fault_sleep"], [16, 24, 32, 40, 48, 56, 64, 72])
    e = _cli([str(changed), "--out", str(out), "--resume"], env)
    assert e.returncode == 2 and "1 cell(s) added, 1 removed" in _one_line(e.stderr) and "--allow-changed" in e.stderr
    f = _cli([str(changed), "--out", str(out), "--resume", "--allow-changed"], env)
    assert f.returncode == 0, f.stderr[-3000:]

    planned = {c.key for c in load_suite(changed).cells()}
    old_key = next(c.key for c in load_suite(suite).cells() if c.seq_len == 8)
    df = load(out)
    assert df.attrs["skipped_lines"] == []
    current = df[df["key"].isin(planned)]
    assert sorted(current["key"]) == sorted(planned) and set(current["status"]) == {"ok"}  # one row per planned cell
    ok_keys = [r["key"] for r in read_rows(rows) if r["status"] == "ok"]
    assert len(ok_keys) == len(set(ok_keys)), "a finished cell was measured again"
    assert set(ok_keys) <= planned | {old_key}
    stale = df[df["key"] == old_key]
    assert len(stale) == 1 and bool(stale["stale"].iloc[0])  # the old cell's row is kept, labelled
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["stale_keys"] == [old_key] and set(meta["cell_keys"]) == planned
    _none_left(marker)


def test_segfaulting_and_raising_cells_leave_actionable_errors(tmp_path, cli_env):
    """A plugin named by a path relative to the suite file; its segfaulting cell's row quotes the
    fatal error and the crashing frame (not faulthandler's module list) and names the full log; the
    raising cell's row quotes the failing line; the run goes on and exits 1."""
    marker = uuid.uuid4().hex
    env = dict(cli_env, ARCHBENCH_FAULT_MARK=marker)
    suite = _suite(tmp_path / "s.yaml", ["fault_segv", "fault_raise", "fault_sleep"], [8], plugin=os.path.relpath(PLUGIN, tmp_path))
    r = _cli([str(suite), "--out", str(tmp_path / "run")], dict(env, ARCHBENCH_FAULT_SLEEP_S="0"))
    assert r.returncode == 1, r.stderr[-3000:]
    rows = {row["arch"]: row for row in read_rows(tmp_path / "run" / "rows.jsonl")}
    segv = rows["fault_segv"]["error"]
    assert "SIGSEGV" in segv and "Fatal Python error: Segmentation fault" in segv
    assert "fault_plugin.py" in segv and "Extension modules" not in segv
    log = segv.rsplit("full log: ", 1)[1].strip()
    assert Path(log).is_file() and "Segmentation fault" in Path(log).read_text()
    raised = rows["fault_raise"]["error"]
    assert raised.startswith("RuntimeError: fault_plugin: the failing line")
    assert 'raise RuntimeError("fault_plugin: the failing line")' in raised and "fault_plugin.py" in raised
    assert Path(raised.rsplit("full traceback: ", 1)[1].strip()).is_file()
    assert rows["fault_sleep"]["status"] == "ok"
    _none_left(marker)


def test_unwritable_output_and_bad_suites_are_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    suite = _suite(tmp_path / "s.yaml", ["fault_sleep"], [8])
    for args in (["--out", str(blocker / "run")], ["--results-dir", str(blocker / "results")]):
        r = CliRunner().invoke(main, ["run", str(suite), *args, "--no-report"])
        assert r.exit_code == 2, r.output
        assert "cannot" in _one_line(r.output) and "Traceback" not in r.output
    cases = {
        "sweep:\n  arch: fault_sleep\n  seq_len: [8]\n  seq_len: [16]\n": "sweep.seq_len: key given twice",
        "sweep: {arch: fault_sleep, seq_len: true}\n": "sweep.seq_len: must be an integer (got True)",
        "sweep: {arch: fault_sleep, seq_len: '64'}\n": "sweep.seq_len: must be an integer (got '64')",
        "sweep: {arch: fault_sleep, seq_len: 1180591620717411303424}\n": "sweep.seq_len: must be <= 16777216",
        "defaults: {batch: 2000000}\nsweep: {arch: fault_sleep}\n": "defaults.batch: must be <= 1048576",
    }
    for body, expect in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"name: bad\nplugins: [{json.dumps(str(PLUGIN))}]\n{body}")
        r = CliRunner().invoke(main, ["run", str(bad), "--results-dir", str(tmp_path / "r")])
        assert r.exit_code == 2 and expect in _one_line(r.output), r.output
    assert not (tmp_path / "r").exists()


def test_runs_started_together_get_their_own_directories(tmp_path, monkeypatch):
    from archbench import store

    monkeypatch.setattr(store, "new_run_id", lambda: "20260101-120000")  # all in the same second
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(store.create_run_dir(tmp_path / "s"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 4
    assert sorted(p.name for p in made) == ["20260101-120000", "20260101-120000-2", "20260101-120000-3", "20260101-120000-4"]
    for p in made:  # the latest run is the last one made, "-10" after "-9"
        RunDir(p).write_meta({"run_id": p.name})
    for n in range(5, 11):
        (tmp_path / "s" / f"20260101-120000-{n}").mkdir()
        RunDir(tmp_path / "s" / f"20260101-120000-{n}").write_meta({})
    assert store.latest_run(tmp_path / "s").name == "20260101-120000-10"


def test_lifeline_alone_ends_a_worker_whose_runner_is_gone():
    """The fallback where no death signal exists: the watchdog exits once the lifeline closes."""
    import multiprocessing as mp

    import fault_plugin

    ctx = mp.get_context("spawn")
    read_end, write_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=fault_plugin.lifeline_child, args=(read_end, os.getpid()), daemon=True)
    child.start()
    read_end.close()
    time.sleep(0.5)
    assert child.is_alive()
    write_end.close()  # as the kernel does when the runner dies
    child.join(timeout=20)
    assert child.exitcode == 1


def test_noise_is_said_out_loud(monkeypatch):
    from archbench.measure import env as env_mod
    from archbench.run.session import noise_report

    rows = [{"status": "ok", "time_median_s": 1.0, "time_rel_iqr": 0.3 if i < 24 else 0.01} for i in range(30)]
    rows.append({"status": "error", "time_median_s": None})
    monkeypatch.setattr(env_mod, "load_average", lambda: (7.5, 2))
    said: list[str] = []
    warning = noise_report(rows, "cpu", said.append)
    assert "24 of 30 timed cell(s) noisy" in said[0] and "the machine looks busy (load average 7.5 on 2 CPU(s))" in said[1]
    assert said[1].startswith("warning: ") and warning and "--rounds" in warning
    said.clear()
    assert noise_report(rows[24:], "cpu", said.append) is None and len(said) == 1 and "0 of 6" in said[0]
    assert env_mod.busy_signs("cuda:0", load=(0.5, 8), gpu={"gpu_other_processes": [42]}) == "other processes on the GPU: pids 42"
    assert env_mod.busy_signs("cpu", load=(0.5, 8)) is None
