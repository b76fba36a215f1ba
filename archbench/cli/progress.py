"""A run's progress on stderr, as ``archbench run`` draws it."""

from __future__ import annotations


def run_with_progress(runner):
    """Run ``runner`` under a progress display on stderr: a bar over its cells, a bar per training
    cell in flight, a line per finished cell (on a log, not a terminal, training lines are throttled)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from archbench.log_lines import Throttle

    console = Console(stderr=True)
    if not console.is_terminal:  # logs (CI, nohup): no wrapping at 80 columns
        console = Console(stderr=True, width=200)
    lines = None if console.is_terminal else Throttle()  # logs: bars draw nothing until the end
    colors = {"ok": "green", "oom": "yellow", "unsupported": "dim", "skipped": "dim"}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=runner.total_steps)
        training = {}  # a bar per task cell in flight: optimiser steps of its current run (a recipe's: of its stage)
        stages = {}  # a recipe cell's current stage

        def on_start(i, cell):
            progress.update(task, description=escape(cell.label))

        def on_progress(cell, info):
            if cell.mode == "recipe":
                return recipe_progress(cell, info)
            desc = f"  {cell.arch} train run {info.get('run', 1)}/{info.get('runs', 1)} lr={info.get('lr', 0):g} seed={info.get('seed')}  score={info.get('score', float('nan')):.3f}"
            if cell.key not in training:
                training[cell.key] = progress.add_task(desc, total=info.get("steps", 1))
            progress.update(training[cell.key], description=escape(desc), completed=info.get("step", 0), total=info.get("steps", 1))
            if lines is not None and lines.due(cell.key):
                progress.console.print(escape(f"{desc}  step {info.get('step', 0)}/{info.get('steps', 1)}  ({cell.label})"))

        def recipe_progress(cell, info):
            """A recipe's stages, one bar each (a new stage replaces the last); its other events as lines."""
            from archbench.recipes.progress import completed, event_line, stage_name

            if "step" not in info or "steps" not in info:
                progress.console.print(escape(f"  {cell.recipe}: {event_line(info)}"))
                return
            loss = f"  loss {info['loss']:.4f}" if isinstance(info.get("loss"), float) else ""
            desc, steps = f"  {cell.recipe} {stage_name(info)}{loss}", int(info["steps"])
            bar = training.get(cell.key)
            if bar is None or stages.get(cell.key) != stage_name(info):
                if bar is not None:
                    progress.remove_task(bar)
                training[cell.key], stages[cell.key] = progress.add_task(escape(desc), total=steps), stage_name(info)
            progress.update(training[cell.key], description=escape(desc), completed=completed(info), total=steps)
            if lines is not None and lines.due(cell.key):
                progress.console.print(escape(f"{desc}  step {completed(info)}/{steps}  ({cell.label})"))

        def on_row(i, cell, row):
            status = row["status"]
            detail = ""
            if cell.key in training:
                progress.remove_task(training.pop(cell.key))
            if status == "ok" and row.get("task_score") is not None:
                capped = f", {row['out_of_time']} run(s) stopped at max_train_s" if row.get("out_of_time") else ""
                detail = f"{row['task_metric']} {row['task_score']:.3f} (best lr {row.get('best_lr'):g}, {row.get('train_wall_s', 0):.0f} s training{capped})"
                if row.get("diverged"):
                    detail += f"; {row['diverged']} training run(s) diverged (loss not finite)"
            elif status == "ok" and row.get("recipe_models"):
                detail = recipe_detail(row["recipe_models"])
            elif status == "ok" and row.get("time_median_s") is not None:
                detail = f"{row['time_median_s'] * 1e3:9.3f} ms  (n={row.get('repeats')}, iqr/med={row.get('time_rel_iqr', 0):.1%})"
            elif row.get("error"):
                detail = str(row["error"]).splitlines()[0][:160]
            color = colors.get(status, "red")
            label = cell.label + (f"  [round {row['round']}/{row['rounds']}]" if row.get("round") else "")
            progress.console.print(f"[{color}]{status:>11}[/] {escape(label)}  {escape(detail)}")
            progress.advance(task)

        runner.on_start, runner.on_row, runner.on_progress = on_start, on_row, on_progress
        summary = runner.run()
        progress.update(task, description="done")
    return summary


def recipe_detail(models: list[dict]) -> str:
    """A recipe row in one line: each model's bits per byte."""
    scored = [(m.get("model"), m.get("bits_per_byte", m.get("prefix_bpb"))) for m in models]
    parts = [f"{name} {bpb:.4f}" for name, bpb in scored if isinstance(bpb, (int, float))]
    return f"bits per byte: {', '.join(parts)}" if parts else f"{len(models)} models"
