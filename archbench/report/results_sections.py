"""The page's Results table (every cell, one row each) and its Failures section (the full
error text of every cell that did not succeed)."""

from __future__ import annotations

import html
from typing import Any, Callable

import numpy as np
import pandas as pd

from archbench.report.marks import NOISY_MARK, REFERENCE_MARK, status_badge
from archbench.report.rows import mode_rank, noisy_mask, reference_mask
from archbench.report.values import error_excerpt, esc, fmt_num, is_missing, text

_MIB = float(1 << 20)


def sort_rows(data: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by mode (pipeline order), arch, backend, batch, seq_len."""
    if data.empty:
        return data
    order = sorted(
        data.index,
        key=lambda i: (
            mode_rank(data.at[i, "mode"]), text(data.at[i, "arch"]), text(data.at[i, "backend"]),
            _num_key(data.at[i, "batch"]), _num_key(data.at[i, "seq_len"]),
        ),
    )
    return data.loc[order]


def _num_key(value: Any) -> float:
    v = pd.to_numeric(value, errors="coerce")
    return float("inf") if pd.isna(v) else float(v)


def ran_text(row: pd.Series) -> str:
    """What ran: the kernels the row names (``torch.*`` = a reference), then how a GPU row was
    timed: as CUDA-graph replays, or eagerly because the capture failed (its reason is in the CSV)."""
    kernels = row.get("kernels")
    if isinstance(kernels, (list, tuple, np.ndarray)):
        names = ", ".join(str(k) for k in kernels)
    else:
        names = text(kernels)
    graph = row.get("cuda_graph")  # absent unless the cell asked for graphs on a GPU
    if is_missing(graph):
        return names
    return names + (" · CUDA graph" if bool(graph) else " · eager (graph capture failed)")


def _row_flags(row: pd.Series) -> str:
    """The row's marks; ``results_section`` puts the vectorised masks in ``_noisy`` / ``_ref``."""
    out = [f"{NOISY_MARK} noisy"] if row.get("_noisy") else []
    return ", ".join(out + ([f"{REFERENCE_MARK} reference"] if row.get("_ref") else []))


#: Results-table columns: (header, cell text getter, numeric?).
_TABLE_COLUMNS: list[tuple[str, Callable[[pd.Series], str], bool]] = [
    ("mode", lambda r: text(r["mode"]), False),
    ("arch", lambda r: text(r["arch"]) or (f"recipe {text(r.get('recipe'))}" if text(r["mode"]) == "recipe" else ""), False),
    ("backend", lambda r: "" if text(r["mode"]) == "recipe" else text(r["backend"]), False),
    ("family", lambda r: text(r["family"]), False),
    ("dtype", lambda r: text(r["dtype"]), False),
    ("device", lambda r: text(r["device"]), False),
    ("batch", lambda r: text(r["batch"]), True),
    ("seq_len", lambda r: text(r["seq_len"]), True),
    ("status", lambda r: text(r["status"]), False),
    ("median ms", lambda r: fmt_num(r["time_median_s"], ".4g", 1e3), True),
    ("p10 ms", lambda r: fmt_num(r["time_p10_s"], ".4g", 1e3), True),
    ("p90 ms", lambda r: fmt_num(r["time_p90_s"], ".4g", 1e3), True),
    ("repeats", lambda r: text(r["repeats"]), True),
    ("tokens/s", lambda r: fmt_num(r["tokens_per_s"], ",.0f"), True),
    ("peak MiB", lambda r: fmt_num(r["peak_mem_bytes"], ",.1f", 1 / _MIB), True),
    ("mem_method", lambda r: text(r["mem_method"]), False),
    ("ran", lambda r: ran_text(r), False),
    ("flags", lambda r: _row_flags(r), False),
    ("run_id", lambda r: text(r["run_id"]), False),
    ("error", lambda r: error_excerpt(r["error"]), False),
]


def _table_row(row: pd.Series) -> str:
    cells = []
    for name, get, numeric in _TABLE_COLUMNS:
        value = get(row)
        if name == "status":
            cells.append(f"<td>{status_badge(value)}</td>")
        else:
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(value)}</td>")
    return f'<tr title="{esc(row["key"])}">' + "".join(cells) + "</tr>"


def results_section(data: pd.DataFrame) -> str:
    """Every cell as one table row, in ``sort_rows`` order."""
    head = '<section id="results"><h2>Results</h2>'
    if data.empty:
        return head + '<p class="empty">No rows.</p></section>'
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in _TABLE_COLUMNS)
    data = data.assign(_noisy=noisy_mask(data), _ref=reference_mask(data))
    body = "".join(_table_row(row) for _, row in sort_rows(data).iterrows())
    return f"{head}<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></section>"


def _failure_item(row: pd.Series) -> str:
    where = ", ".join(
        f"{k}={text(row[k])}" for k in ("mode", "batch", "seq_len", "dtype", "device") if text(row[k])
    )
    title = f"{text(row['arch']) or '?'}/{text(row['backend']) or '?'} ({where})"
    error = text(row["error"]) or "(no error text)"
    ids = " ".join(f"{k}: <code>{esc(row[k])}</code>" for k in ("key", "run_id") if text(row[k]))
    return (
        f'<div class="failure"><h3>{status_badge(row["status"])} {html.escape(title)}</h3>'
        + (f'<p class="ids">{ids}</p>' if ids else "")
        + f"<pre>{html.escape(error)}</pre></div>"
    )


def failures_section(data: pd.DataFrame) -> str:
    """Every cell that did not succeed (nor was skipped), with its full error text."""
    head = '<section id="failures"><h2>Failures</h2>'
    failed = data[~data["status"].isin(("ok", "skipped"))] if len(data) else data
    if failed.empty:
        return head + '<p class="empty">No failures.</p></section>'
    items = "".join(_failure_item(row) for _, row in sort_rows(failed).iterrows())
    return f"{head}<p>{len(failed)} cell(s) did not succeed.</p>{items}</section>"

