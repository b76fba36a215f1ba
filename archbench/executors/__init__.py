"""Run the shards of a sweep elsewhere: a Slurm array job (``slurm``, through submitit) or Ray
tasks (``ray``). Both are in the optional ``dist`` extra and imported only when asked for.

Every executor hands a shard the same command line, ``archbench run SUITE --out DIR --shard i/N
--resume --no-report`` (``shard_argv``), run in a subprocess (``run_shard``). A shard therefore
keeps every promise of a local run (its own rows file and lock, signals, torn lines; see
docs/reliability.md), and a shard that is run again, after a crash, a preemption or a timeout,
resumes: the cells it finished are skipped. The executor only decides where and when a shard
runs, and runs a dead one again (``--retries``).

A shard's exit code says how it ended: 0 every cell ran, 1 some cells failed (both finished:
the rows are there); anything else (killed, 2, 143) is ``ShardDied``, which executors retry.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DIST_PIP = "pip install 'archbench[dist]'"
FINISHED = (0, 1)  # exit codes of a shard that ran every cell (1: some failed)


class ExecutorError(Exception):
    """An executor that cannot be used here; the message is one line and says what to do."""


class ShardDied(RuntimeError):
    """A shard's process ended without finishing its cells (killed, crashed, refused)."""


@dataclass(frozen=True)
class ShardSpec:
    """One shard's command: the suite and run directory (absolute: a cluster node's working
    directory is not the submitter's), the shard, and the ``--set`` / ``--device`` of the run."""

    suite_path: str
    out: str
    index: int
    count: int
    overrides: tuple[str, ...] = ()
    device: str | None = None
    env: tuple[tuple[str, str], ...] = field(default=())  # extra environment for the shard's process

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def log_path(self) -> Path:
        return Path(self.out) / "logs" / f"shard-{self.index}of{self.count}.log"


def shard_argv(spec: ShardSpec) -> list[str]:
    """The ``archbench run`` arguments of one shard (always ``--resume``: a rerun goes on)."""
    argv = ["run", spec.suite_path, "--out", spec.out, "--shard", spec.name, "--resume", "--no-report"]
    for o in spec.overrides:
        argv += ["--set", o]
    if spec.device:
        argv += ["--device", spec.device]
    return argv


def start_shard(spec: ShardSpec) -> subprocess.Popen:
    """Start one shard's ``archbench run`` in a subprocess, its output appended to its log."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(spec.log_path, "ab")
    try:
        env = {**os.environ, **dict(spec.env)}
        return subprocess.Popen([sys.executable, "-m", "archbench.cli", *shard_argv(spec)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    finally:
        log.close()


def finish_shard(spec: ShardSpec, proc: subprocess.Popen) -> int:
    """Wait for a shard started by ``start_shard``: its exit code when it finished its cells,
    else ``ShardDied`` with the tail of its log."""
    rc = proc.wait()
    if rc in FINISHED:
        return rc
    tail = ""
    try:
        tail = spec.log_path.read_text(errors="replace").strip().splitlines()[-1][:300]
    except (OSError, IndexError):
        pass
    how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    raise ShardDied(f"shard {spec.name} ended without finishing ({how}){': ' + tail if tail else ''}; log: {spec.log_path}")


def run_shard(spec: ShardSpec) -> int:
    """Run one shard to its end (see ``finish_shard``)."""
    return finish_shard(spec, start_shard(spec))


def require(executor: str, module: str):
    """Import ``module`` for ``--executor executor``, or say which pip line installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExecutorError(f"--executor {executor} needs the {module} package: {DIST_PIP}") from None
