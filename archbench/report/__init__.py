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

from archbench.report.figures import build_figures
from archbench.report.html import render_page
from archbench.report.summary import render_markdown, write_csv

__all__ = ["render_html", "write_html", "build_figures", "render_markdown", "write_csv"]


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
    """Write the report page to ``path`` (parent folders are created) and the plotted data
    next to it as ``<stem>.csv``; return the page's path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(df, runs, title, comparison, reference), encoding="utf-8")
    write_csv(df, out.with_suffix(".csv"))
    return out
