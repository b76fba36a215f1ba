"""Cell values as the report shows them: display text, escaped text, times and numbers.

Every function takes any value a result row may hold (None, NaN, pandas' NA, numbers, text,
lists) and never raises on it: a missing value shows as "".
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd


def is_missing(value: Any) -> bool:
    """True for None, NaN/NaT and pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays, dicts
        return False


def text(value: Any) -> str:
    """Plain display text for any cell value ("" when missing; 2.0 -> "2")."""
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def esc(value: Any) -> str:
    """HTML-escaped display text of a value."""
    return html.escape(text(value), quote=True)


def fmt_time(value: Any) -> str:
    """A timestamp as text: epoch seconds become UTC ISO strings, strings pass through."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not is_missing(value):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return text(value)
    return text(value)


def fmt_num(value: Any, spec: str = ".4g", scale: float = 1.0) -> str:
    """A number formatted with ``spec`` after multiplying by ``scale``; "" when missing."""
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return ""
    return format(v, spec) if math.isfinite(v) else ""


def error_excerpt(error: Any, limit: int = 120) -> str:
    """One telling line of an error text, cut to ``limit`` characters (plain text).

    For a Python traceback that is its last line (the exception), otherwise the first.
    """
    lines = [ln.strip() for ln in text(error).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    cut = line if len(line) <= limit else line[: limit - 1] + "…"
    return cut + (" …" if len(lines) > 1 else "")


def number(v: Any) -> float | None:
    """``v`` as a finite float; None when it is missing, not a number, NaN or infinite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
