"""Self-contained HTML report from a DataFrame of result rows.

``render_html(df, runs)`` returns the page as a string; ``write_html(df, runs, path)``
writes it. ``df`` has one row per measured cell (as produced by the result store),
``runs`` is a list of run.json dicts. The page embeds plotly.js once, inline, and
opens offline. This package reads only what it is given: it imports nothing else
from archbench.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from archbench.report.answers import answers_document, write_answers
from archbench.report.figures import build_figures
from archbench.report.html import render_page
from archbench.report.summary import render_markdown, write_csv

__all__ = ["render_html", "write_html", "build_figures", "render_markdown", "write_csv", "answers_document",
           "write_answers"]


def render_html(
    df: pd.DataFrame | None,
    runs: Sequence[Mapping[str, Any]] | None,
    title: str | None = None,
    comparison: Mapping[str, Any] | None = None,
    reference: str = "softmax_attention",
) -> str:
    """The report page for ``df`` (result rows) and ``runs`` (run metadata) as HTML.

    ``title`` defaults to ``archbench report — <suite names>``; ``comparison`` (the JSON form of
    ``archbench.compare.compare(A, B)``) adds a B/A section; ``reference`` is the arch that
    crossovers and ratio tables are measured against.
    """
    return render_page(df, runs, title, comparison, reference)


def write_html(
    df: pd.DataFrame | None,
    runs: Sequence[Mapping[str, Any]] | None,
    path: str | Path,
    title: str | None = None,
    comparison: Mapping[str, Any] | None = None,
    reference: str = "softmax_attention",
) -> Path:
    """Write the report page to ``path`` (parent folders are created), the plotted data next to
    it as ``<stem>.csv`` and its answers as ``answers.json`` (``<stem>.answers.json`` when the page
    is not named report.html); return the page's path. The page and the JSON render one object."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = answers_document(df, runs, reference)
    out.write_text(render_page(df, runs, title, comparison, reference, doc), encoding="utf-8")
    write_csv(df, out.with_suffix(".csv"))
    write_answers(doc, answers_path(out))
    return out


def answers_path(page: str | Path) -> Path:
    """Where ``write_html`` puts the answers beside ``page``."""
    p = Path(page)
    return p.with_name("answers.json") if p.name == "report.html" else p.with_suffix(".answers.json")
