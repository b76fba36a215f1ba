"""Where a run stands, read from its directory alone: per shard, how many of its cells have a
row, how they ended, whether its process is running, finished or dead, and the failed cells.

Everything comes from files every node of a cluster sees: run.json (the whole plan),
``shard-<i>of<N>.json`` (each shard's cells and state), the rows files, and the rows files'
locks, which the kernel drops when a writer dies. A shard whose state says ``running`` while
nobody holds its lock is *dead* (killed, its node lost) and resumes with the command printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from archbench.store import LOCK, RunDir, lock_held, rows_file_name, shard_metas


@dataclass
class ShardState:
    shard: tuple[int, int] | None  # None: the run's unsharded rows.jsonl
    cells: int | None  # planned cells (None: not known until the shard starts)
    done: int = 0  # planned cells with a row
    counts: dict[str, int] = field(default_factory=dict)  # latest row's status -> cells
    state: str = "not started"  # not started | running | complete | interrupted | dead
    where: str = ""  # pid and host of its last writer

    @property
    def name(self) -> str:
        return "run" if self.shard is None else f"shard {self.shard[0]}/{self.shard[1]}"


@dataclass
class RunStatus:
    path: Path
    suite: str | None
    n_cells: int | None
    shards: list[ShardState]
    failures: list[dict]  # latest rows in error / timeout

    @property
    def done(self) -> int:
        return sum(s.done for s in self.shards)


def _state(meta: dict, lock: Path) -> str:
    status = meta.get("status")
    if not meta:
        return "not started"
    held = lock_held(lock)
    if held:
        return "running"
    if status == "running":
        return "dead"  # nobody holds the lock it would hold while running
    return status or "unknown"


def read_status(run_dir: str | Path) -> RunStatus:
    """The status of the run in ``run_dir`` (see the module docstring)."""
    d = Path(run_dir)
    if not (d / "run.json").is_file() and not list(d.glob("rows*.jsonl")):
        raise FileNotFoundError(f"no run found at {d} (expected a run directory holding run.json)")
    base = RunDir(d)
    plan = base.read_meta()
    latest: dict[str, dict] = {}
    for r in base.rows():
        if r.get("key"):
            latest[r["key"]] = r
    shards: list[ShardState] = []
    n = plan.get("shards")
    metas = shard_metas(d)
    if n:
        counts = plan.get("shard_counts") or [None] * n
        for i in range(n):
            meta = metas.get((i, n), {})
            keys = meta.get("cell_keys")
            st = ShardState((i, n), len(keys) if keys is not None else counts[i])
            lock = d / (rows_file_name((i, n)) + LOCK)
            st.state = _state(meta, lock)
            st.where = f"pid {meta['pid']} on {meta.get('host') or 'unknown host'}" if meta.get("pid") else ""
            for k in keys or ():
                if k in latest:
                    st.done += 1
                    status = latest[k].get("status", "?")
                    st.counts[status] = st.counts.get(status, 0) + 1
            shards.append(st)
    else:
        keys = plan.get("cell_keys") or list(latest)
        st = ShardState(None, len(keys), state=_state(plan, d / (rows_file_name() + LOCK)))
        st.where = f"pid {plan['pid']} on {plan.get('host') or plan.get('env', {}).get('host') or 'unknown host'}" if plan.get("pid") else ""
        for k in keys:
            if k in latest:
                st.done += 1
                st.counts[latest[k].get("status", "?")] = st.counts.get(latest[k].get("status", "?"), 0) + 1
        shards.append(st)
    planned = set(plan.get("cell_keys") or latest)
    failures = [r for k, r in latest.items() if k in planned and r.get("status") in ("error", "timeout")]
    return RunStatus(d, plan.get("suite"), plan.get("n_cells"), shards, failures)


def render(status: RunStatus, suite_path: str | None = None, limit: int = 20) -> list[str]:
    """The lines ``archbench status`` prints."""
    n = len(status.shards)
    total = status.n_cells if status.n_cells is not None else sum(s.cells or 0 for s in status.shards)
    head = f"{status.path}: suite {status.suite!r}, {status.done}/{total} cells with a row"
    lines = [head + (f", {n} shards" if status.shards and status.shards[0].shard else "")]
    for s in status.shards:
        counts = " ".join(f"{k}={v}" for k, v in sorted(s.counts.items()))
        cells = "?" if s.cells is None else s.cells
        line = f"  {s.name:<12} {s.state:<12} {s.done:>6}/{cells:<6} {counts}"
        if s.where and s.state in ("running", "dead"):
            line += f"  ({s.where})"
        if s.state in ("dead", "interrupted", "not started") and s.shard:
            line += f"  resume: archbench run {suite_path or 'SUITE'} --out {status.path} --shard {s.shard[0]}/{s.shard[1]} --resume"
        elif s.state in ("dead", "interrupted"):
            line += f"  resume: archbench run {suite_path or 'SUITE'} --out {status.path} --resume"
        lines.append(line)
    if status.failures:
        lines.append(f"failures ({len(status.failures)}):")
        for r in status.failures[:limit]:
            first = str(r.get("error") or "").strip().splitlines()
            what = f"{r.get('arch')}/{r.get('backend')} {r.get('mode')} B={r.get('batch')} T={r.get('seq_len')}"
            lines.append(f"  {r.get('status'):<8} {what}  {first[0][:160] if first else ''}")
        if len(status.failures) > limit:
            lines.append(f"  ... and {len(status.failures) - limit} more (archbench report {status.path})")
    return lines
