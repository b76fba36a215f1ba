"""Stop a run on SIGTERM (a CI timeout, Slurm, ``kill``) and SIGHUP (a closed terminal) as on
Ctrl-C: ``KeyboardInterrupt`` in the main thread, so the runner keeps its rows and kills its
workers. A second signal while stopping is ignored, so the stop completes. The exit status of a
stopped run is 128 + the first signal's number, as a shell reports it.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopOnSignals:
    """While entered, each of ``STOP_SIGNALS`` raises ``KeyboardInterrupt`` once; ``signal`` holds
    the first one's number (None when none came). The previous handlers are restored on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signal is not None:
            return
        self.signal = signum
        raise KeyboardInterrupt

    def __enter__(self) -> "StopOnSignals":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def signal_name(signum: int) -> str:
    """How a stop signal is named to users: ``Ctrl-C (SIGINT)``, ``SIGTERM``, ``SIGHUP``."""
    return {signal.SIGINT: "Ctrl-C (SIGINT)"}.get(signum) or signal.Signals(signum).name
