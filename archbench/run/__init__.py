"""Executing suites: everything between a list of cells and the rows of a run directory.

    session.py      one run into one run directory: choose it (new, --out, --resume, a shard's
                    share), hold its lock, record plan / environment / outcome in run.json
    signals.py      SIGTERM and SIGHUP stop a run as Ctrl-C does
    distributed.py  --executor slurm|ray: a sweep's shards handed to an executor
    runner.py       the cell loop: schedules cells onto workers, writes a row per cell, rounds
    pool.py         worker processes as the runner sees them: slots (GPU / cores) and handles
    worker.py       the worker process itself: runs cells, classifies failures
    plan.py         expected cost, order, shards, GPU and core choice
    pooling.py      one row from a cell's rounds (run --rounds, ab)
    ab.py           interleaved A/B runs of two code versions (or two settings)
    status.py       where a run stands, read from its directory alone

The command line (``archbench.cli``) parses options, calls these, prints and chooses the exit
code; nothing here prints or exits. Errors are one line that says what to do.
"""
