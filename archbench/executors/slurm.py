"""``--executor slurm``: the shards of a sweep as one Slurm array job, through submitit.

One array task per shard, each asking for ``gpus_per_node`` GPUs (1 for a CUDA suite: Slurm
sets ``CUDA_VISIBLE_DEVICES``, the shard's cells run on ``cuda:0``), with the partition, time
limit and account of the suite's ``slurm:`` section or the command line. A task that Slurm
preempts or that reaches its time limit is requeued by submitit (``ShardJob`` is
``Checkpointable``): the shard's process is stopped with SIGTERM, which keeps its rows, and the
requeued task resumes it. A task that dies otherwise is submitted again, up to ``retries``
times, and resumes too. ``local=True`` runs the array on this machine as subprocesses
(submitit's local executor): the same code path, without a cluster.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

from archbench.executors import ExecutorError, ShardSpec, finish_shard, require, start_shard

STOP_GRACE_S = 60  # a preempted shard's time to write its state after SIGTERM


try:  # this module is imported only for --executor slurm; run() says which pip line is missing
    from submitit.helpers import Checkpointable as _Requeueable
except ImportError:  # pragma: no cover - without the dist extra
    _Requeueable = object


class ShardJob(_Requeueable):
    """One array task: run a shard; on preemption or timeout stop it (rows kept) and requeue."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def __call__(self, spec: ShardSpec) -> int:
        self._proc = start_shard(spec)
        return finish_shard(spec, self._proc)

    def checkpoint(self, spec: ShardSpec):
        """submitit calls this on preemption or timeout: stop the shard (SIGTERM: the CLI keeps its
        rows and exits 143), then requeue a fresh job that resumes it."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        return DelayedSubmission(ShardJob(), spec)

    def __getstate__(self):
        return {}  # a process handle does not travel; the requeued task starts its own

    def __setstate__(self, state):
        self._proc = None


def parameters(slurm: dict, gpus_per_shard: int, name: str) -> dict:
    """submitit's parameters from the suite's ``slurm:`` values overridden by the command line
    (None values left out)."""
    keys = {
        "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
        "constraint": "slurm_constraint", "array_parallelism": "slurm_array_parallelism",
        "time_min": "timeout_min", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "setup": "slurm_setup",
    }  # fmt: skip
    out = {keys[k]: v for k, v in slurm.items() if k in keys and v is not None}
    out.update(gpus_per_node=gpus_per_shard, tasks_per_node=1, nodes=1, name=name)
    return out


def preflight(local: bool = False):
    """submitit, and for a real cluster ``sbatch`` on PATH, before anything is written."""
    submitit = require("slurm", "submitit")
    if not local and shutil.which("sbatch") is None:
        raise ExecutorError("--executor slurm: sbatch is not on PATH (no Slurm client on this machine); submit from a login node, "
                            "or add --slurm-local to run the array here")  # fmt: skip
    return submitit


def run(specs: list[ShardSpec], *, folder: str | Path, params: dict, local: bool = False, retries: int = 2,
        on_event: Callable[[str], None] = print, on_submit: Callable[[ShardSpec, str], None] | None = None) -> dict[int, int | str]:
    """Submit ``specs`` as an array job and wait for it; shards that died are submitted again (a
    new array) up to ``retries`` times. Returns each shard's exit code (0 / 1) or why it is dead."""
    submitit = preflight(local)
    executor = submitit.AutoExecutor(folder=str(folder), cluster="local" if local else "slurm")
    executor.update_parameters(**params)
    outcome: dict[int, int | str] = {}
    tries = {s.index: 0 for s in specs}
    pending = list(specs)
    while pending:
        try:
            jobs = executor.map_array(ShardJob(), pending)
        except Exception as e:  # noqa: BLE001 - sbatch refused (partition, account, limits)
            raise ExecutorError(f"--executor slurm: submitting failed: {str(e).strip().splitlines()[-1][:300]}") from None
        for spec, job in zip(pending, jobs):
            tries[spec.index] += 1
            if on_submit:
                on_submit(spec, str(job.job_id))
        on_event(f"submitted {len(jobs)} shard(s) as job {jobs[0].job_id.split('_')[0]}: " + ", ".join(s.name for s in pending))
        again = []
        for spec, job in zip(pending, jobs):
            try:
                outcome[spec.index] = job.result()
                on_event(f"shard {spec.name} finished (exit {outcome[spec.index]})")
            except Exception as e:  # noqa: BLE001 - FailedJobError, UncompletedJobError: the shard died
                why = _last_line(e)
                if tries[spec.index] <= retries:
                    on_event(f"shard {spec.name} died ({why}); submitting it again to resume (try {tries[spec.index] + 1} of {retries + 1})")
                    again.append(spec)
                else:
                    outcome[spec.index] = why
                    on_event(f"shard {spec.name} died after {tries[spec.index]} tries: {why}")
        pending = again
    return outcome


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    shard = [ln for ln in lines if "ShardDied" in ln or "ended without finishing" in ln]
    return (shard or lines or [type(e).__name__])[-1][:300]
