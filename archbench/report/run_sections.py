"""The page's header and its Runs section: which runs, suites and environment the rows come
from, when they ran, and how many cells ended in each status."""

from __future__ import annotations

import html
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from archbench.report.marks import status_badge
from archbench.report.rows import STATUSES
from archbench.report.values import fmt_time, text


def _unique(values: Iterable[Any]) -> list[str]:
    """Distinct non-empty display texts, in first-seen order."""
    seen: dict[str, None] = {}
    for v in values:
        t = text(v)
        if t:
            seen.setdefault(t, None)
    return list(seen)


def _suite_name(suite: Any) -> str:
    if isinstance(suite, Mapping):
        return text(suite.get("name"))
    return text(suite)


def _run_value(run: Mapping[str, Any], key: str) -> Any:
    """``run['env'][key]``, falling back to ``run[key]``."""
    env = run.get("env")
    if isinstance(env, Mapping) and not _blank(env.get(key)):
        return env.get(key)
    return run.get(key)


def _blank(value: Any) -> bool:
    return text(value) == "" if not isinstance(value, (list, dict, tuple)) else not value


def _env_values(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Distinct values of an environment field over the runs and the ``env_<key>`` column."""
    values = [_run_value(r, key) for r in runs]
    col = f"env_{key}"
    if col in data.columns:
        values += list(data[col])
    return _unique(values)


def suite_names(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Distinct suite names, from the runs first, then from the rows."""
    return _unique([_suite_name(r.get("suite")) for r in runs] + list(data["suite"]))


def default_title(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]]) -> str:
    """``archbench report — <suite names>`` (or just ``archbench report``)."""
    names = suite_names(data, runs)
    return "archbench report — " + ", ".join(names) if names else "archbench report"


def _dates(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]]) -> str:
    starts = [fmt_time(v) for v in [r.get("started_at") for r in runs] + list(data["started_at"])]
    ends = [fmt_time(v) for v in [r.get("ended_at") for r in runs] + list(data["ended_at"])]
    starts, ends = [s for s in starts if s], [e for e in ends if e]
    first, last = (min(starts) if starts else ""), (max(ends) if ends else "")
    return f"{first} → {last}" if first or last else ""


def status_counts(data: pd.DataFrame) -> dict[str, int]:
    """Cells per status: every known status (0 when absent), then any others found."""
    counts = data["status"].value_counts().to_dict() if len(data) else {}
    out = {s: int(counts.pop(s, 0)) for s in STATUSES}
    out.update({text(k): int(v) for k, v in sorted(counts.items())})
    return out


def page_header(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]], title: str, extra_nav: Sequence[tuple[str, str]] = ()) -> str:
    """The title, the links to the sections, the runs' facts, the cells per status and the runs' warnings."""
    fields = [
        ("Suites", ", ".join(suite_names(data, runs))),
        ("Runs", ", ".join(_unique([r.get("run_id") for r in runs] + list(data["run_id"])))),
        ("Device", ", ".join(_env_values(data, runs, "device_name") or _unique(data["device"]))),
        ("Torch", ", ".join(_env_values(data, runs, "torch"))),
        ("CUDA", ", ".join(_env_values(data, runs, "cuda"))),
        ("Python", ", ".join(_env_values(data, runs, "python"))),
        ("Host", ", ".join(_env_values(data, runs, "host"))),
        ("Git revision", ", ".join(_env_values(data, runs, "git_rev"))),
        ("Dates", _dates(data, runs)),
        ("Cells", str(len(data))),
    ]
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v) or '—'}</dd>" for k, v in fields)
    counts = "".join(status_badge(s, f"{s}: {n}") for s, n in status_counts(data).items())
    noisy = int((data["noisy"] == True).sum()) if "noisy" in data else 0  # noqa: E712 - column may hold None
    if noisy:
        counts += status_badge("timeout", f"noisy (IQR/median > 10%): {noisy}")
    warnings = _unique(w for r in runs for w in (r.get("warnings") or []))
    warn_html = "".join(f'<p class="warning">&#9888; {html.escape(w)}</p>' for w in warnings)
    nav = [*extra_nav, ("answers", "Answers"), ("figures", "Figures"), ("results", "Results"), ("survey", "Survey"),
           ("failures", "Failures"), ("runs", "Runs")]  # fmt: skip
    links = "".join(f'<a href="#{a}">{html.escape(name)}</a>' for a, name in nav)
    return (
        f"<header><h1>{html.escape(title)}</h1><nav>{links}</nav>"
        f'<dl class="summary">{rows}</dl><p class="counts">{counts}</p>{warn_html}</header>'
    )


def _counts_text(counts: Any) -> str:
    if not isinstance(counts, Mapping):
        return text(counts) if not isinstance(counts, (list, tuple)) else ""
    return ", ".join(f"{text(k)}: {text(v)}" for k, v in counts.items())


def runs_section(runs: Sequence[Mapping[str, Any]]) -> str:
    """One table row per run: its id, suite, dates, environment and cell counts."""
    head = '<section id="runs"><h2>Runs</h2>'
    if not runs:
        return head + '<p class="empty">No run metadata given.</p></section>'
    cols: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("run_id", lambda r: text(r.get("run_id"))),
        ("suite", lambda r: _suite_name(r.get("suite"))),
        ("suite_path", lambda r: text(r.get("suite_path"))),
        ("started", lambda r: fmt_time(r.get("started_at"))),
        ("ended", lambda r: fmt_time(r.get("ended_at"))),
        ("device", lambda r: text(_run_value(r, "device_name"))),
        ("torch", lambda r: text(_run_value(r, "torch"))),
        ("host", lambda r: text(_run_value(r, "host"))),
        ("git_rev", lambda r: text(_run_value(r, "git_rev"))),
        ("cpu", lambda r: text(_run_value(r, "cpu"))),
        ("threads", lambda r: text(_run_value(r, "threads"))),
        ("counts", lambda r: _counts_text(r.get("counts"))),
    ]
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _ in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(get(r))}</td>" for _, get in cols) + "</tr>"
        for r in runs if isinstance(r, Mapping)
    )
    return f"{head}<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></section>"

