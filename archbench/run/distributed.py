"""``--executor slurm|ray``: a sweep split into shards, each run by an executor's task.

The shards' plan goes into one run directory first (``session.claim_sharded_plan``); each shard
not yet complete becomes a task that runs ``archbench run --shard i/N --out DIR`` and is resumed
and retried by its executor (``archbench.executors``) when it dies. What comes back per shard is
its exit code, or why it is still dead after its retries.
"""

from __future__ import annotations

from pathlib import Path

from archbench.run.session import RunError, Say, claim_sharded_plan, silent
from archbench.store import RunDir, create_run_dir, shard_metas


def run_distributed(executor: str, suite, suite_path, cells, *, overrides=(), device=None, out_dir=None,
                    results_dir="results", resume: bool = False, n_shards: int, gpus_per_shard: int | None = None,
                    retries: int = 2, slurm_opts: dict | None = None, ray_address: str | None = None,
                    say: Say = silent) -> tuple[Path, dict]:
    """Plan ``cells`` into ``n_shards`` shards of one run directory (``out_dir``, or a new one
    under ``results_dir``) and hand each incomplete shard to ``executor``; returns the run
    directory and, per shard, its exit code or why it died. Raises ``RunError``, the store's
    ``StoreError`` or ``ExecutorError`` (the extra missing, no sbatch, no Ray cluster)."""
    from archbench.executors import ShardSpec

    slurm_opts = dict(slurm_opts or {})
    if executor == "slurm":
        from archbench.executors import slurm

        slurm.preflight(slurm_opts.get("local", False))
    else:
        from archbench.executors import ray as ray_exec

        ray_exec.preflight(ray_address)
    if out_dir:
        base = RunDir(out_dir)
        if (base.has_rows() or base.run_path.is_file()) and not resume:
            raise RunError(f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out")
    else:
        base = RunDir(create_run_dir(Path(results_dir) / suite.name))
    base.create()
    claim_sharded_plan(base, suite, suite_path, cells, (0, n_shards), overrides)
    done = {i for (i, n), m in shard_metas(base.path).items() if n == n_shards and m.get("status") == "complete"}
    gpus = gpus_per_shard if gpus_per_shard is not None else int(any(c.device.startswith("cuda") for c in cells))
    specs = [ShardSpec(str(Path(suite_path).resolve()), str(base.path.resolve()), i, n_shards, tuple(overrides), device)
             for i in range(n_shards) if i not in done]  # fmt: skip
    say(f"archbench: suite {suite.name!r}, {len(cells)} cells in {n_shards} shards ({len(done)} complete), "
        f"run dir {base.path}, executor {executor}")  # fmt: skip

    def event(line: str) -> None:
        say(f"archbench: {line}")

    if executor == "slurm":
        opts = suite.model.slurm.model_dump()
        opts.update({k: v for k, v in slurm_opts.items() if k != "local" and v is not None})
        params = slurm.parameters(opts, gpus, name=f"archbench-{suite.name}")
        outcome = slurm.run(specs, folder=base.path / "slurm", params=params, local=slurm_opts.get("local", False),
                            retries=retries, on_event=event)  # fmt: skip
    else:
        outcome = ray_exec.run(specs, address=ray_address, gpus_per_shard=gpus, retries=retries, on_event=event)
    return base.path, outcome
