"""``--executor ray``: the shards of a sweep as Ray tasks, on an existing cluster
(``ray.init(address=...)``: KubeRay, a cluster without Slurm) or a local Ray.

Each shard is one ``ray.remote`` task asking for ``num_gpus`` GPUs (1 for a CUDA suite: Ray sets
``CUDA_VISIBLE_DEVICES`` for the task, and the shard's process inherits it) and one CPU. A task
whose shard died is retried by Ray (``max_retries``, ``retry_exceptions``); the retry resumes the
shard. The run directory must be on storage every node sees.
"""

from __future__ import annotations

import socket
from typing import Callable
from urllib.parse import urlparse

from archbench.executors import ExecutorError, ShardDied, ShardSpec, require, run_shard

CONNECT_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """A cluster address that does not answer is one line, not a hang: connect to its port first."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ExecutorError(f"--ray-address {address!r}: expected ray://HOST:PORT or HOST:PORT (e.g. ray://head:10001)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ExecutorError(f"--ray-address {address}: nothing answers at {host}:{port} ({e.strerror or e}); "
                            "start the cluster (ray start --head) or check the address") from None  # fmt: skip


def preflight(address: str | None = None):
    """ray, and an address that answers (unless this process is already connected), before anything is written."""
    ray = require("ray", "ray")
    if address and not ray.is_initialized():
        check_address(address)
    return ray


def _shard_task(spec: ShardSpec) -> int:  # runs in a Ray worker
    return run_shard(spec)


def run(specs: list[ShardSpec], *, address: str | None = None, gpus_per_shard: int = 1, retries: int = 2,
        on_event: Callable[[str], None] = print) -> dict[int, int | str]:
    """Run ``specs`` as Ray tasks and wait for them. Uses the Ray this process is connected to
    if any, else joins ``address``, else starts a local one. Returns each shard's exit code
    (0 / 1) or why it is dead after its retries."""
    ray = preflight(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, log_to_driver=False, include_dashboard=False)
        except Exception as e:  # noqa: BLE001 - ConnectionError, a version mismatch with the cluster
            raise ExecutorError(f"--executor ray: cannot start or join Ray ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    task = ray.remote(_shard_task).options(num_gpus=gpus_per_shard, num_cpus=1, max_retries=retries,
                                           retry_exceptions=[ShardDied], name="archbench-shard")  # fmt: skip
    refs = {task.remote(spec): spec for spec in specs}
    on_event(f"started {len(refs)} shard(s) as Ray tasks: " + ", ".join(s.name for s in specs))
    outcome: dict[int, int | str] = {}
    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        spec = refs[done[0]]
        try:
            outcome[spec.index] = ray.get(done[0])
            on_event(f"shard {spec.name} finished (exit {outcome[spec.index]})")
        except Exception as e:  # noqa: BLE001 - RayTaskError around ShardDied, a lost node
            cause = getattr(e, "cause", None) or e
            outcome[spec.index] = str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else type(cause).__name__
            on_event(f"shard {spec.name} died after {retries + 1} tries: {outcome[spec.index]}")
    return outcome
