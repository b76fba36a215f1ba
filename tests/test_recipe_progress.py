"""The command line's view of recipe progress events (``archbench.recipes.progress``)."""

import io

from rich.console import Console

from archbench.recipes.progress import RecipeProgress, completed, event_line, stage_name


def test_stage_names_and_step_counts():
    assert stage_name({"stage": "align"}) == "align" and stage_name({"variant": "causal"}) == "causal"
    assert stage_name({"step": 3, "steps": 10}) == "teacher pre-training"
    assert completed({"step": 0, "steps": 5}) == 1 and completed({"step": 4, "steps": 5}) == 5  # counted from 0
    assert completed({"step": 5, "steps": 5}) == 5  # counted from 1: ends full, never past it


def test_events_without_steps_are_printed_as_lines():
    assert event_line({"event": "ranking", "text": "layer 2: 0.91"}) == "layer 2: 0.91"
    line = event_line({"variant": "causal", "done": True, "tf_bpb": 2.44512, "gap_bpb": 0.0})
    assert line == "causal: tf_bpb=2.445, gap_bpb=0"


def test_a_bar_per_stage_and_lines_for_events():
    buf = io.StringIO()
    with RecipeProgress(Console(file=buf, width=120, force_terminal=False)) as view:
        for i in range(3):
            view({"stage": "align", "step": i, "steps": 3, "loss": 1.0 / (i + 1)})
        for i in range(1, 3):
            view({"variant": "causal", "step": i, "steps": 2, "loss": 0.5})
        view({"event": "ranking", "text": "ranked: 3 1 2"})
        view.print("recipe 2/3: rad")
        tasks = view.progress.tasks
        assert [t.description.strip().split()[0] for t in tasks] == ["align", "causal"]
        assert [(t.completed, t.total) for t in tasks] == [(3, 3), (2, 2)]
    out = buf.getvalue()
    assert "ranked: 3 1 2" in out and "recipe 2/3: rad" in out


def test_logs_get_throttled_step_lines(monkeypatch):
    """Not a terminal: the bars draw nothing until the end, so each stage's first step prints a
    line, and later steps only once ARCHBENCH_LOG_EVERY_S has passed."""
    monkeypatch.setenv("ARCHBENCH_LOG_EVERY_S", "3600")
    buf = io.StringIO()
    with RecipeProgress(Console(file=buf, width=120, force_terminal=False)) as view:
        for i in range(5):
            view({"stage": "align", "step": i, "steps": 5, "loss": 2.0})
        view({"stage": "distil", "step": 0, "steps": 9})
    lines = [ln for ln in buf.getvalue().splitlines() if ": step " in ln]
    assert lines == ["  align: step 1/5 loss 2.0000", "  distil: step 1/9"]
    monkeypatch.setenv("ARCHBENCH_LOG_EVERY_S", "0")
    buf = io.StringIO()
    with RecipeProgress(Console(file=buf, width=120, force_terminal=False)) as view:
        for i in range(3):
            view({"stage": "align", "step": i, "steps": 3})
    assert sum(": step " in ln for ln in buf.getvalue().splitlines()) == 3


def test_a_terminal_gets_bars_only():
    buf = io.StringIO()
    with RecipeProgress(Console(file=buf, width=120, force_terminal=True)) as view:
        view({"stage": "align", "step": 0, "steps": 5})
    assert ": step " not in buf.getvalue()
