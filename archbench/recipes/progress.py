"""A live view of a recipe's progress events, for the command line.

Recipes report through one callback, ``progress(info: dict)``. Training loops send
``{"step", "steps", "loss", ...}`` with the stage's name in ``stage`` (RADLADS, RAD), ``variant``
(bridge) or neither (the default teacher's pre-training, from ``tasks.train``); other events
(RAD's layer ranking, a finished bridge variant) carry no step count. ``RecipeProgress`` turns
the first kind into one progress bar per stage (a new stage ends the previous bar) and prints
the second kind as a line, so a first run that pre-trains the teacher for minutes shows it.
Where stderr is not a terminal the bars draw nothing until the end, so steps also print as
throttled lines (``archbench.log_lines``).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from archbench.log_lines import Throttle

_SHOWN = ("tf_bpb", "prefix_bpb", "gap_bpb", "greedy", "bo")


def stage_name(info: dict) -> str:
    return str(info.get("stage") or info.get("variant") or "teacher pre-training")


def completed(info: dict) -> int:
    """Steps done: loops count from 0 or from 1; either way the bar ends full."""
    step, steps = int(info["step"]), int(info["steps"])
    return steps if step >= steps else step + 1


def event_line(info: dict) -> str:
    if "text" in info:
        return str(info["text"])
    parts = [f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}" for k in _SHOWN if k in info]
    return f"{stage_name(info)}: " + ", ".join(parts)


class RecipeProgress:
    """``with RecipeProgress() as on_progress: run_recipe(..., progress=on_progress)``."""

    def __init__(self, console: Console | None = None):
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # logs: no wrapping at 80 columns
                console = Console(stderr=True, width=200)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console)  # fmt: skip
        self.bar, self.stage = None, None
        self.lines = None if console.is_terminal else Throttle()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, info: dict) -> None:
        if "step" in info and "steps" in info:
            name = stage_name(info)
            desc = escape(f"  {name}  loss {info['loss']:.4f}" if isinstance(info.get("loss"), float) else f"  {name}")
            if name != self.stage:
                if self.bar is not None:
                    self.progress.stop_task(self.bar)
                self.bar, self.stage = self.progress.add_task(desc, total=int(info["steps"])), name
            self.progress.update(self.bar, description=desc, completed=completed(info), total=int(info["steps"]))
            if self.lines is not None and self.lines.due(name):
                loss = f" loss {info['loss']:.4f}" if isinstance(info.get("loss"), float) else ""
                self.progress.console.print(escape(f"  {name}: step {completed(info)}/{int(info['steps'])}{loss}"))
        else:
            self.progress.console.print(escape(event_line(info)))

    def print(self, line: str) -> None:
        self.progress.console.print(escape(line))
