"""Interleaved A/B runs: the same suite measured by two versions of the code in one job.

On a shared machine the speed of everything drifts over minutes (other jobs, clocks,
thermals), so a suite run today against a baseline from yesterday mixes that drift into
every ratio. ``archbench ab SUITE --base REV --head REV`` removes it: each side gets its own
worker process importing its own copy of ``archbench`` (a git revision exported with ``git
archive``, or a directory holding another checkout), and every cell is measured ``rounds``
times alternately on the two workers (A B, B A, A B, ...), so both sides see the same
conditions to within seconds. On a CPU both workers are pinned to the same cores: measured on
the 2-core dev VM, two processes running identical code on the cores the OS happened to give
them differed by 25-35% in every round.

A round visits every cell once on each side (the order of the two sides alternating from cell
to cell and round to round), and **every round runs in new worker processes**: a process has
its own memory layout and its own luck with caches and cores, which shifts all its timings
alike (on the 2-core dev VM, identical code read 1.41x slower in one of two long-lived
workers, in every round), so a per-process effect must vary from round to round, as pyperf's
many worker processes make it, or the paired test below would take it for the code.

Each side's samples from all rounds are pooled into one row
per cell (median and spread recomputed, each round's median kept as ``ab_round_medians_s``),
written to ``OUT/base`` and ``OUT/head`` as ordinary run directories that share one ``ab_id``,
and compared with ``archbench.compare`` (exit 1 on a regression). Because the two sides of a
round were measured together, the comparison is *paired*: the exact Wilcoxon signed-rank test
on the per-round ratios of medians (``archbench.gate``), not a test on the pooled samples,
whose members share their round's conditions and would make one disturbed phase look
significant. At ``ab``'s alpha of 0.01 that needs at least 8 rounds; fewer are reported
underpowered.

Sides may also differ in a cell field instead of in code (``--base-set backend=sdpa
--head-set backend=flex``): both suites must expand to the same number of cells in the same
order, and the head's rows are filed under the base cell's key (their own key kept as
``ab_head_key``) so that the comparison pairs them.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from archbench.run import pooling
from archbench.run.runner import Runner
from archbench.store import RunDir, now_iso
from archbench.suite import Cell

CURRENT = (".", "current", "worktree")  # the code this process runs


class ABError(ValueError):
    """A/B inputs that cannot work; one line, says what to do."""


@dataclass
class Side:
    name: str  # base | head
    spec: str  # what the user asked for: a rev, a path, or "."
    code_path: str | None  # directory holding the archbench package, None = this process's code

    @property
    def label(self) -> str:
        return self.spec if self.code_path is None else f"{self.spec} ({self.code_path})"


def materialize(spec: str, name: str, workdir: Path, repo: Path | None = None) -> Side:
    """Resolve a side: ``.`` is this code; a directory with ``archbench/`` is used in place;
    anything else is a git revision of ``repo``, exported to ``workdir/name``."""
    if spec in CURRENT:
        return Side(name, spec, None)
    path = Path(spec)
    if path.is_dir():
        if not (path / "archbench" / "__init__.py").is_file():
            raise ABError(f"--{name} {spec}: a directory must hold the archbench package (archbench/__init__.py)")
        return Side(name, spec, str(path.resolve()))
    repo = repo or Path(__file__).resolve().parents[2]
    sha = _git(repo, "rev-parse", "--verify", f"{spec}^{{commit}}", what=f"--{name} {spec}")
    dest = workdir / name
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as tar:
        proc = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha], stdout=tar, stderr=subprocess.PIPE)
        if proc.returncode:
            raise ABError(f"--{name} {spec}: git archive failed: {proc.stderr.decode(errors='replace').strip()}")
        tar.seek(0)
        with tarfile.open(fileobj=tar) as tf:
            try:
                tf.extractall(dest, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters (our own repository's archive)
                tf.extractall(dest)
    if not (dest / "archbench" / "__init__.py").is_file():
        raise ABError(f"--{name} {spec}: revision {sha[:12]} has no archbench package")
    return Side(name, f"{spec}@{sha[:12]}", str(dest))


def _git(repo: Path, *args: str, what: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise ABError(f"{what}: git is not installed; pass a directory holding another checkout instead") from None
    if proc.returncode:
        raise ABError(f"{what}: not a revision of {repo} ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'git failed'})")
    return proc.stdout.strip()


def pinned(cell: Cell) -> Cell:
    """A/B on a CPU: both sides' workers pinned to the same cores (measure.pin_cpus), or each
    process keeps the core the OS first gave it and a slower core reads as a code change."""
    if cell.device != "cpu" or cell.measure.pin_cpus:
        return cell
    return cell.model_copy(update={"measure": cell.measure.model_copy(update={"pin_cpus": True})})


def pool_rows(rows: list[dict]) -> dict:
    """One row from the A/B rounds of a cell (``archbench.run.pooling``), its fields prefixed ``ab_``."""
    return pooling.pool_rows(rows, prefix="ab_")


def run_ab(
    base_cells: list[Cell],
    head_cells: list[Cell],
    base: Side,
    head: Side,
    out: Path,
    *,
    rounds: int = 12,
    plugins: list[str] | None = None,
    env: dict | None = None,
    meta: dict | None = None,
    on_row: Callable[[int, Cell, str, dict], None] | None = None,
) -> tuple[RunDir, RunDir]:
    """Measure every cell ``rounds`` times on each side, alternating; write the pooled rows."""
    if len(base_cells) != len(head_cells):
        raise ABError(f"the two sides expand to {len(base_cells)} and {len(head_cells)} cells; they must pair one to one")
    if rounds < 1:
        raise ABError("--rounds must be >= 1")
    dirs = {s.name: RunDir(out / s.name).create() for s in (base, head)}
    ab_id = f"{out.name}@{now_iso()}"  # both sides' run.json: compare pairs their rounds
    runners = {}
    for s in (base, head):
        runners[s.name] = Runner([], dirs[s.name], plugins=plugins, env=env, code_path=s.code_path)
        dirs[s.name].write_meta({**(meta or {}), "run_id": f"{out.name}-{s.name}", "ab_side": s.name, "ab_id": ab_id,
                                 "ab_code": s.label, "env": env or {}, "started_at": now_iso(), "status": "running"})  # fmt: skip
    got: list[dict[str, list[dict]]] = [{base.name: [], head.name: []} for _ in base_cells]
    try:
        for r in range(rounds):
            for i, (bc, hc) in enumerate(zip(base_cells, head_cells)):
                order = (base, head) if (r + i) % 2 == 0 else (head, base)  # A B, B A, ...: drift cancels
                for s in order:
                    cell = bc if s is base else hc
                    row = runners[s.name].run_one(cell)
                    got[i][s.name].append(row)
                    if on_row:
                        on_row(i, cell, s.name, {**row, "ab_round": r + 1})
            for runner in runners.values():  # a new process per side per round: see the module docstring
                runner.close()
        for i, (bc, hc) in enumerate(zip(base_cells, head_cells)):
            for s in (base, head):
                row = pool_rows(got[i][s.name])
                if s is head and hc.key != bc.key:
                    row["ab_head_key"], row["key"] = row["key"], bc.key
                row["ab_code"] = s.label
                dirs[s.name].append(row)
    finally:
        for r in runners.values():
            r.close()
    for d in dirs.values():
        m = d.read_meta()
        m.update(ended_at=now_iso(), status="complete")
        d.write_meta(m)
    return dirs[base.name], dirs[head.name]
