"""Interleaved A/B runs: the same suite measured by two versions of the code in one job.

On a shared machine the speed of everything drifts over minutes (other jobs, clocks,
thermals), so a suite run today against a baseline from yesterday mixes that drift into
every ratio. ``archbench ab SUITE --base REV --head REV`` removes it: each side gets its own
worker process importing its own copy of ``archbench`` (a git revision exported with ``git
archive``, or a directory holding another checkout), and every cell is measured ``rounds``
times alternately on the two workers (A B, B A, A B, ...), so both sides see the same
conditions to within seconds. On a CPU both workers are pinned to the same cores: measured on
the 2-core dev VM, two processes running identical code on the cores the OS happened to give
them differed by 25-35% in every round. Each side's samples from all rounds are pooled into one row
per cell (median and spread recomputed), written to ``OUT/base`` and ``OUT/head`` as ordinary
run directories, and compared with ``archbench.compare`` (exit 1 on a regression), with one
more condition: every round must agree on the direction of the change (each round's B median
above its A median for a regression), since samples within one round share its conditions
and a single disturbed phase could otherwise make the pooled test confident.

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

from archbench import pooling
from archbench.runner import Runner
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
    repo = repo or Path(__file__).resolve().parent.parent
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


def pool_rows(rows: list[dict]) -> dict:
    """One row from the A/B rounds of a cell (``archbench.pooling``), its fields prefixed ``ab_``."""
    return pooling.pool_rows(rows, prefix="ab_")


def require_consistent_rounds(cmp, base_rows: dict[str, dict], head_rows: dict[str, dict]) -> None:
    """Downgrade a regressed / improved verdict to insignificant unless every round agrees on
    its direction (each round's head median above, or below, the same round's base median).
    Pooled samples of one round share that round's conditions, so a single disturbed phase
    can make the pooled test confident; drift that cancels across A B / B A rounds cannot."""
    for c in cmp.cells:
        if c.outcome not in ("regressed", "improved"):
            continue
        b = (base_rows.get(c.key) or {}).get("ab_round_medians_s") or []
        h = (head_rows.get(c.key) or {}).get("ab_round_medians_s") or []
        pairs = [(x, y) for x, y in zip(b, h) if x and y]
        if len(pairs) < 2:
            continue
        worse = [y > x for x, y in pairs]
        if not (all(worse) if c.outcome == "regressed" else not any(worse)):
            c.outcome = "insignificant"
            c.note = f"rounds disagree on the direction ({sum(worse)} of {len(pairs)} slower)"


def run_ab(
    base_cells: list[Cell],
    head_cells: list[Cell],
    base: Side,
    head: Side,
    out: Path,
    *,
    rounds: int = 3,
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
    runners = {}
    for s in (base, head):
        runners[s.name] = Runner([], dirs[s.name], plugins=plugins, env=env, code_path=s.code_path)
        dirs[s.name].write_meta({**(meta or {}), "run_id": f"{out.name}-{s.name}", "ab_side": s.name,
                                 "ab_code": s.label, "env": env or {}, "started_at": now_iso(), "status": "running"})  # fmt: skip
    try:
        for i, (bc, hc) in enumerate(zip(base_cells, head_cells)):
            got: dict[str, list[dict]] = {base.name: [], head.name: []}
            for r in range(rounds):
                order = (base, head) if r % 2 == 0 else (head, base)  # A B, B A, ...: drift cancels
                for s in order:
                    cell = bc if s is base else hc
                    got[s.name].append(runners[s.name].run_one(cell))
            for s, cell in ((base, bc), (head, hc)):
                row = pool_rows(got[s.name])
                if s is head and hc.key != bc.key:
                    row["ab_head_key"], row["key"] = row["key"], bc.key
                row["ab_code"] = s.label
                dirs[s.name].append(row)
                if on_row:
                    on_row(i, cell, s.name, row)
    finally:
        for r in runners.values():
            r.close()
    for d in dirs.values():
        m = d.read_meta()
        m.update(ended_at=now_iso(), status="complete")
        d.write_meta(m)
    return dirs[base.name], dirs[head.name]
