"""The page's small inline marks: status badges, and the marks of a number that rests on a
noisy cell or on a pure-PyTorch reference backend."""

from __future__ import annotations

import html
from typing import Any

from archbench.report.rows import STATUSES
from archbench.report.values import text


def status_badge(status: Any, label: str | None = None) -> str:
    """A coloured ``<span>`` for a status; the CSS class only ever comes from a known status."""
    s = text(status)
    cls = f"status-{s}" if s in STATUSES else "status-other"
    return f'<span class="status {cls}">{html.escape(label if label is not None else s)}</span>'


NOISY_MARK, REFERENCE_MARK = "†", "‡"
MARKS_NOTE = (f"{NOISY_MARK} rests on a noisy cell (IQR / median above 10%); {REFERENCE_MARK} measured on a "
              "pure-PyTorch reference backend, not a fused kernel. In figures: hollow markers and dashed lines.")


def marks(noisy: bool, reference: bool) -> str:
    """The marks after a number: noisy, measured on a reference backend, both or none."""
    out = (NOISY_MARK if noisy else "") + (REFERENCE_MARK if reference else "")
    return f' <span class="mark">{out}</span>' if out else ""

