"""Exit codes of the ``archbench`` commands, and the one way a command stops on bad input.

Exit codes: 0 success; 1 the run finished but some cells failed (error / timeout; see
``--allow-failures``), or ``compare`` / ``ab`` found a regressed cell; 2 bad input (a suite error,
an unknown architecture, a missing run, runs that cannot be compared, ``advise`` finding nothing
comparable for its point); 3 ``compare`` / ``ab``
found no regression but some cell's samples are too few to show one (``underpowered``; see
``--allow-underpowered``); 130 interrupted with Ctrl-C (rows already written are kept).

``run`` also exits 2 when its output cannot be written, when another run holds the run
directory (the line names its pid and host), and when ``--resume`` finds the suite changed
(``--allow-changed``); it exits 143 on SIGTERM (a CI timeout, Slurm) and 129 on SIGHUP, handled
as Ctrl-C is: rows kept, run.json ``interrupted``, ``--resume`` finishes the run
(docs/reliability.md).
"""

from __future__ import annotations

import sys

import click

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SIGHUP, EXIT_SIGTERM = 129, 143  # 128 + the signal's number, as a shell reports it
EXIT_REGRESSED = EXIT_FAILED_CELLS  # compare: some cell got slower (or bigger) beyond the threshold
EXIT_UNDERPOWERED = 3  # compare / ab: no regression, but some cell's samples could not show one (archbench.gate)


def fail(message: str) -> "None":
    """Print ``error: message`` (one line) to stderr and exit 2 (bad input)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)
