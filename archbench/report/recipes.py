"""Recipe rows in the report: one table per recipe run, teacher and students side by side.

A ``mode: recipe`` cell's row holds its models in ``recipe_models`` (``archbench.recipes.cell``);
each becomes one row here, labelled by the cell. Rows of runs from before recipes were cells
(one row per model) are read as they are. A model's row carries a
``recipe`` field, a ``model`` (teacher, student, baseline) and whatever that recipe measures
(bits per byte, agreement with the teacher, KL, decode state bytes, tokens, wall time), under
names that differ between recipes. Each recipe gets one readable table with the same columns:
bits per byte (the bridge recipe's prefix-only score, its clean measure), the ratio to the
teacher's, agreement with the teacher (top-1 next-byte agreement and KL; the bridge's greedy
continuation agreement), the decode state's bytes at the shortest and longest context the rows
give, decode ms per token (prefill ms for recipes that time no decode) at the longest length,
the training tokens and the wall time. Every other measurement stays one click away, in a
collapsed table of all numeric columns.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

import pandas as pd

from archbench.report.values import fmt_num, number, text

_SKIP = {"key", "cell_key", "status", "error", "recipe", "recipe_label", "model", "run_id", "suite", "started_at", "ended_at"}


def model_rows(data: pd.DataFrame) -> pd.DataFrame:
    """One row per model: recipe cells' ``recipe_models`` spread out (each model labelled by its
    cell's recipe, and by its key where one recipe ran with several settings), other rows kept."""
    if data.empty or "recipe_models" not in data:
        return data
    nested = data["recipe_models"].map(lambda v: isinstance(v, list))
    cells = data[nested]
    per_recipe = cells["recipe"].value_counts() if "recipe" in cells else pd.Series(dtype=int)
    spread = []
    for _, cell in cells.iterrows():
        name = text(cell.get("recipe"))
        label = name if per_recipe.get(name, 0) <= 1 else f"{name} ({text(cell.get('key'))[:8]})"
        for model in cell["recipe_models"]:
            spread.append({**model, "recipe": name, "recipe_label": label, "cell_key": cell.get("key")})
    rest = data[~nested].drop(columns=["recipe_models"])
    return pd.concat([rest, pd.DataFrame(spread)], ignore_index=True) if spread else rest


def recipe_tables(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, table) per recipe run: rows = models, columns = the numeric measurements."""
    data = model_rows(data)
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


#: (field, header) candidates for the curated columns, in order of preference.
_BPB = (("bits_per_byte", "bits per byte"), ("prefix_bpb", "bits per byte (prefix only)"))
_AGREE = (("top1_agreement", "top-1 agreement with the teacher"), ("gen_agree", "greedy agreement with the teacher"))
_KL = ("kl", "kl_vs_teacher")


def _num(v: Any) -> float | None:
    """A measurement as a finite float (a flag, True or False, is not one)."""
    return None if isinstance(v, bool) else number(v)


def _first_field(table: pd.DataFrame, candidates) -> tuple[str, str] | None:
    for name, header in candidates:
        if name in table and table[name].map(_num).notna().any():
            return name, header
    return None


def _by_length(table: pd.DataFrame, pattern: str) -> dict[int, str]:
    """T -> column for the columns named like ``pattern`` (a regex with one group: the length)
    that hold a number in some row."""
    out = {}
    for c in table.columns:
        m = re.fullmatch(pattern, str(c))
        if m and table[c].map(_num).notna().any():
            out[int(m.group(1))] = c
    return out


def curated_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of one recipe's readable table (see the module docstring), one row per
    model, from its full table (``recipe_tables``)."""
    cols: list[tuple[str, Any]] = [("model", lambda r: text(r.get("model"))), ("status", lambda r: text(r.get("status")))]
    bpb = _first_field(table, _BPB)
    if bpb:
        field, header = bpb
        teacher = [_num(v) for m, v in zip(table.get("model", []), table[field]) if text(m) == "teacher"]
        ref = next((v for v in teacher if v), None)
        cols.append((header, lambda r: fmt_num(r.get(field), ".4f")))
        if ref:
            cols.append(("ratio to teacher", lambda r: (fmt_num(_num(r.get(field)) / ref, ".3f") + "x")
                         if _num(r.get(field)) is not None else ""))  # fmt: skip
    agree = _first_field(table, _AGREE)
    kl = next((k for k in _KL if k in table and table[k].map(_num).notna().any()), None)
    if agree:
        a_field, a_header = agree
        cols.append((a_header + (" (KL)" if kl else ""), lambda r: fmt_num(r.get(a_field), ".3f") + (
            f" ({fmt_num(r.get(kl), '.3g')})" if kl and _num(r.get(kl)) is not None else "")))  # fmt: skip
    states = _by_length(table, r"state_bytes_(\d+)")
    if states:
        for T in sorted({min(states), max(states)}):
            cols.append((f"decode state bytes at T={T:,}", lambda r, c=states[T]: fmt_num(r.get(c), ",.0f")))
    elif "state_bytes" in table and table["state_bytes"].map(_num).notna().any():
        cols.append(("decode state bytes", lambda r: fmt_num(r.get("state_bytes"), ",.0f")))
    decode, prefill = _by_length(table, r"decode_s_per_token_(\d+)"), _by_length(table, r"prefill_s_(\d+)")
    if decode:
        T = max(decode)
        cols.append((f"decode ms/token at T={T:,}", lambda r, c=decode[T]: fmt_num(r.get(c), ".3g", 1e3)))
    elif prefill:
        T = max(prefill)
        cols.append((f"prefill ms at T={T:,}", lambda r, c=prefill[T]: fmt_num(r.get(c), ".3g", 1e3)))
    if "tokens" in table and table["tokens"].map(_num).notna().any():
        cols.append(("training tokens", lambda r: fmt_num(r.get("tokens"), ",.0f")))
    if "wall_s" in table and table["wall_s"].map(_num).notna().any():
        cols.append(("time (s)", lambda r: fmt_num(r.get("wall_s"), ".3g")))
    rows = [[get(r) for _, get in cols] for _, r in table.iterrows()]
    return [h for h, _ in cols], rows


def recipes_section(data: pd.DataFrame) -> str:
    tables = recipe_tables(data)
    if not tables:
        return ""
    parts = []
    for label, table in tables:
        headers, rows = curated_table(table)
        tds = ("".join(f"<td>{html.escape(c)}</td>" if j < 2 else f'<td class="num">{html.escape(c)}</td>'
                       for j, c in enumerate(row)) for row in rows)  # fmt: skip
        parts.append(f"<h3>{html.escape(label)}</h3><table><thead><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"
                     + "".join(f"<tr>{cells}</tr>" for cells in tds) + "</tbody></table>")  # fmt: skip
        head = "".join(f"<th>{html.escape(text(c))}</th>" for c in table.columns)
        body = []
        for _, r in table.iterrows():
            cells = []
            for c in table.columns:
                v = r[c]
                shown = fmt_num(v, ".4g") if isinstance(v, float) else text(v)
                cells.append(f'<td class="num">{html.escape(shown)}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(shown)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<details><summary>every measurement of {html.escape(label)} ({len(table.columns)} columns)</summary>"
                     f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></details>")
    return (
        '<section id="recipes"><h2>Recipes: teacher and students</h2>'
        "<p>Each recipe's models side by side: quality against the teacher (bits per byte, lower is better, and "
        "its ratio to the teacher's; agreement with the teacher's next byte, with the KL divergence in brackets), "
        "what the decode state costs at the shortest and longest context measured, decode speed, and the "
        "tokens and time the conversion spent. Every other measurement is in the collapsed table below each.</p>"
        + "".join(parts) + "</section>"
    )
