"""Recipe rows in the report: one table per recipe run, teacher and students side by side.

Recipe rows (``archbench convert`` / ``archbench redundancy`` / a recipe suite) carry a
``recipe`` field, a ``model`` (teacher, student, baseline) and whatever that recipe measures
(bits per byte, agreement with the teacher, KL, decode state bytes, tokens, wall time). The
table shows every numeric measurement the recipe's rows have, in the order they first appear.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from archbench.report.figures import fmt_num, text

_SKIP = {"key", "status", "error", "recipe", "recipe_label", "model", "run_id", "suite", "started_at", "ended_at"}


def recipe_tables(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, table) per recipe run: rows = models, columns = the numeric measurements."""
    if data.empty or "recipe" not in data:
        return []
    rows = data[data["recipe"].map(lambda v: isinstance(v, str) and bool(v))]
    if rows.empty:
        return []
    label_col = rows["recipe_label"] if "recipe_label" in rows else rows["recipe"]
    out = []
    for label, group in rows.groupby(label_col.map(text), sort=False):
        cols = [c for c in group.columns if c not in _SKIP and _numeric(group[c])]
        table = group[["model", "status", *cols]] if "model" in group else group[["status", *cols]]
        out.append((label, table.reset_index(drop=True)))
    return out


def _numeric(col: pd.Series) -> bool:
    vals = [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def recipes_section(data: pd.DataFrame) -> str:
    tables = recipe_tables(data)
    if not tables:
        return ""
    parts = []
    for label, table in tables:
        head = "".join(f"<th>{html.escape(text(c))}</th>" for c in table.columns)
        body = []
        for _, r in table.iterrows():
            cells = []
            for c in table.columns:
                v = r[c]
                shown = fmt_num(v, ".4g") if isinstance(v, float) else text(v)
                cells.append(f'<td class="num">{html.escape(shown)}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(shown)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{html.escape(label)}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return (
        '<section id="recipes"><h2>Recipes: teacher and students</h2>'
        "<p>Each recipe's models side by side: quality against the teacher (bits per byte, agreement, KL), "
        "what the student's decode state costs, and the tokens and time the conversion spent.</p>" + "".join(parts) + "</section>"
    )
