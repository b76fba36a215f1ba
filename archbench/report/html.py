"""Assembly of the self-contained HTML report page.

The page is one file that opens offline: inline CSS, plotly.js embedded once inline
(only when there is something to plot), then a header (runs, environment, status
counts), the first screen (banners for incomplete or overridden runs, and per mode a
decision matrix over the measured lengths and batches), the answers, the figures per
comparable group, a plain HTML table of every cell and a "Failures" section with the full
error texts. The first screen and the answers render the objects of ``answers.py``, the same
ones ``answers.json`` holds. Every string taken from the data or the run metadata goes
through ``html.escape``.

Each figure's JSON is gzip-compressed like plotly.js (a big run's figures repeat the same
keys and hover text thousands of times). Figures are drawn when they come into view (an
IntersectionObserver; those in the first screen before it is marked ready), and the rest one
per idle period, so a report of a thousand cells answers input at once
(``benchmarks/report_scale.py`` measures it).
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from plotly.offline import get_plotlyjs

from archbench.report.accuracy import TaskGroup, training_note, pareto_figure, task_groups, task_table, zoology_facets
from archbench.report.comparison import comparison_section
from archbench.report.quality import checkpoint_groups, quality_section
from archbench.report.recipes import recipes_section
from archbench.report.analysis import REFERENCE, ratio_table
from archbench.report.answers import answers_document, answers_table, survey
from archbench.report.figures import (
    STATUSES,
    FigureSpec,
    noisy_mask,
    reference_mask,
    build_figures,
    error_excerpt,
    esc,
    fmt_num,
    fmt_time,
    groups,
    is_missing,
    mode_rank,
    prepare,
    text,
)

_MIB = float(1 << 20)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .3em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
h3 { margin: 1.2em 0 .3em; }
nav a { margin-right: 1em; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.status { font-weight: 600; padding: 0 .4em; border-radius: 3px; white-space: nowrap; }
.status-ok { color: #13612e; background: #d9f2e1; }
.status-oom { color: #8a1c1c; background: #f8d7d7; }
.status-timeout { color: #7a4a00; background: #fde7c4; }
.status-error { color: #fff; background: #b42318; }
.status-unsupported { color: #444; background: #e4e4e4; }
.status-skipped { color: #666; background: #f1f1f1; }
.status-other { color: #333; background: #e8e0f5; }
.counts .status { margin-right: .6em; }
.figure { margin: .5em 0 1.5em; }
.empty { color: #666; font-style: italic; }
.warning { color: #7a4a00; background: #fde7c4; padding: .3em .6em; border-radius: 3px; }
.warn { color: #7a4a00; font-weight: 600; }
.failure h3 { margin-bottom: .2em; } .failure .ids { margin: 0; font-size: .85em; color: #555; }
.scroll { overflow-x: auto; max-width: 100%; }
.mark { color: #7a4a00; font-weight: 600; }
.banner { color: #5c1d00; background: #fde7c4; border-left: 4px solid #d55e00; padding: .4em .8em; margin: .4em 0; }
.note { color: #333; background: #eef4fb; border-left: 4px solid #0072b2; padding: .4em .8em; margin: .4em 0; }
#first-screen td { min-width: 9em; }
#first-screen .n { color: #666; font-size: .85em; }
.failure pre { background: #f7f7f7; border: 1px solid #ddd; padding: .6em; overflow-x: auto;
               white-space: pre-wrap; font-size: .85em; }
"""


# --------------------------------------------------------------------------- small pieces


def status_badge(status: Any, label: str | None = None) -> str:
    """A coloured ``<span>`` for a status; the CSS class only ever comes from a known status."""
    s = text(status)
    cls = f"status-{s}" if s in STATUSES else "status-other"
    return f'<span class="status {cls}">{html.escape(label if label is not None else s)}</span>'


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


# --------------------------------------------------------------------------- sections


def _header(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]], title: str, extra_nav: Sequence[tuple[str, str]] = ()) -> str:
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


def _runs_section(runs: Sequence[Mapping[str, Any]]) -> str:
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


def _figures_section(specs: Sequence[FigureSpec]) -> str:
    head = '<section id="figures"><h2>Figures</h2>'
    if not specs:
        msg = "Nothing to plot: no successful (ok) cells with a seq_len."
        return f'{head}<p class="empty">{msg}</p></section>'
    parts, current = [head], None
    for i, spec in enumerate(specs):
        if spec.group != current:
            current = spec.group
            parts.append(f"<h3>{html.escape(spec.group)}</h3>")
        parts.append(_figure_div(spec.figure, f"fig-{i}", spec.kind))
    return "".join(parts) + "</section>"


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
    """The row's marks; ``_table_section`` puts the vectorised masks in ``_noisy`` / ``_ref``."""
    out = [f"{NOISY_MARK} noisy"] if row.get("_noisy") else []
    return ", ".join(out + ([f"{REFERENCE_MARK} reference"] if row.get("_ref") else []))


#: Results-table columns: (header, cell text getter, numeric?).
_TABLE_COLUMNS: list[tuple[str, Callable[[pd.Series], str], bool]] = [
    ("mode", lambda r: text(r["mode"]), False),
    ("arch", lambda r: text(r["arch"]), False),
    ("backend", lambda r: text(r["backend"]), False),
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


def _table_section(data: pd.DataFrame) -> str:
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


def _failures_section(data: pd.DataFrame) -> str:
    head = '<section id="failures"><h2>Failures</h2>'
    failed = data[~data["status"].isin(("ok", "skipped"))] if len(data) else data
    if failed.empty:
        return head + '<p class="empty">No failures.</p></section>'
    items = "".join(_failure_item(row) for _, row in sort_rows(failed).iterrows())
    return f"{head}<p>{len(failed)} cell(s) did not succeed.</p>{items}</section>"


PLOT_SCRIPT_TYPE = "application/x-archbench-plot"  # figure scripts wait for plotly.js under this type

_LOADER = """<script type="text/javascript">
(async () => {
  const inflate = (packed) => {
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  };
  (0, eval)(await inflate(document.getElementById("plotly-js-gzip").textContent));
  // Draw each figure when it comes into view (those in the first screen before it is marked
  // ready), the rest one by one in idle time, so the page answers input however many it holds.
  const pending = new Set(document.querySelectorAll('script[type="%s"]'));
  const drawing = [];
  const draw = (s) => {
    if (!pending.delete(s)) return null;
    const p = inflate(s.textContent).then((t) => {
      const f = JSON.parse(t);
      return Plotly.newPlot(document.getElementById(s.dataset.div), f.data, f.layout, f.config);
    });
    drawing.push(p);
    return p;
  };
  const box = (s) => s.closest(".figure") || s.parentElement;
  const near = (el) => { const r = el.getBoundingClientRect(); return r.top < innerHeight + 400 && r.bottom > -400; };
  await Promise.all([...pending].filter((s) => near(box(s))).map(draw));
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) if (e.isIntersecting) { seen.unobserve(e.target); draw(e.target._plot); }
  }, { rootMargin: "400px" });
  for (const s of pending) { const b = box(s); b._plot = s; seen.observe(b); }
  const idle = window.requestIdleCallback || ((f) => setTimeout(f, 30));
  const drain = async () => {  // one figure per idle period: input waits at most one figure's drawing
    while (pending.size) {
      await new Promise((resolve) => idle(resolve));
      const next = pending.values().next().value;
      if (next) await draw(next);
    }
    await Promise.all(drawing);
    document.body.dataset.figuresDrawn = String(performance.now());
  };
  requestAnimationFrame(() => { document.body.dataset.firstScreen = String(performance.now()); drain(); });
})().catch((e) => {
  document.body.insertAdjacentHTML("afterbegin",
    '<p class="warning">The figures need a browser with DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or later).</p>');
  console.warn(e);
});
</script>""" % PLOT_SCRIPT_TYPE


@functools.lru_cache(maxsize=1)
def _plotly_gzip_b64() -> str:
    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)).decode("ascii")


def _plotly_script() -> str:
    """plotly.js inline, gzip-compressed and base64-encoded (1.9 MB instead of 4.8 MB), unpacked
    by the browser's DecompressionStream, after which the figures' scripts run in order. Put
    at the end of the body, so every figure's div and script exist when it runs."""
    return f'<script id="plotly-js-gzip" type="application/octet-stream">{_plotly_gzip_b64()}</script>{_LOADER}'


# --------------------------------------------------------------------------- page


def _ratios_section(data: pd.DataFrame, reference: str = REFERENCE) -> str:
    """Per group, a table like LRA's: one column per seq_len, each cell the median and its
    ratio to the reference arch's best backend; the fastest in each column in bold."""
    parts = []
    for g in groups(data):
        ok = g.ok
        marked = {(f"{text(a)}/{text(b)}", int(t)): (bool(n), bool(r)) for a, b, t, n, r in
                  zip(ok["arch"], ok["backend"], ok["seq_len"], noisy_mask(ok), reference_mask(ok))}  # fmt: skip
        table = ratio_table(ok, reference)
        if table.empty:
            continue
        best = {t: min((v[0] for v in table[t] if isinstance(v, tuple)), default=None) for t in table.columns}
        head = "<tr><th>arch/backend</th>" + "".join(f"<th>T={t}</th>" for t in table.columns) + "</tr>"
        body = []
        for name, row in table.iterrows():
            cells = []
            for t in table.columns:
                v = row[t]
                if not isinstance(v, tuple):
                    cells.append("<td></td>")
                    continue
                ratio = f" ({v[1]:.2f}x)" if v[1] is not None else ""
                txt = html.escape(f"{fmt_num(v[0], '.3g', 1e3)} ms{ratio}")
                mark = _marks(*marked.get((text(name), int(t)), (False, False)))
                cells.append(f'<td class="num">{"<b>" + txt + "</b>" if v[0] == best[t] else txt}{mark}</td>')
            body.append(f"<tr><td>{html.escape(text(name))}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(g.label)}</h3><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>")
    if not parts:
        return ""
    return (
        f'<section id="ratios"><h2>Median latency by length, and ratio to {html.escape(reference)}</h2>'
        f"<p>Each cell: the median, and in brackets the ratio to {html.escape(reference)}'s best backend at that "
        f"length (below 1 = faster). The fastest in each column is in bold. {html.escape(_MARKS_NOTE)}</p>"
        + "".join(parts) + "</section>"
    )


def _survey_section(data: pd.DataFrame, doc: Mapping[str, Any] | None = None) -> str:
    """The registry's claims (family, paper, complexity) beside this run's evidence."""
    table = survey(data, answers_table(doc["answers"]) if doc is not None else None)
    if table.empty:
        return ""
    head = ("<tr><th>family</th><th>arch</th><th>paper</th><th>claimed: train / decode</th>"
            "<th>expected exponent</th><th>fitted exponent (max over fwd / fwd_bwd / prefill)</th><th>decode state</th></tr>")  # fmt: skip
    body = []
    for _, r in table.iterrows():
        exp = r["expected_exponent"]
        fit = r["fitted_exponent"]
        state = "—" if r["state_bytes"] is None or r["state_bytes"] != r["state_bytes"] else f"{r['state_bytes'] / _MIB:,.3g} MiB at T={r['state_at_T']}"
        cells = [r["family"], r["arch"], r["paper"], r["claimed"],
                 "—" if exp is None or exp != exp else f"{float(exp):g}",
                 "—" if fit is None or fit != fit else f"{fit:.2f}", state]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(text(c)) or '—'}</td>" for c in cells) + "</tr>")
    return (
        '<section id="survey"><h2>Survey view</h2><p>Each architecture\'s taxonomy entry and claimed '
        "complexity, beside what this run measured.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></section>"
    )


NOISY_MARK, REFERENCE_MARK = "†", "‡"
_MARKS_NOTE = (f"{NOISY_MARK} rests on a noisy cell (IQR / median above 10%); {REFERENCE_MARK} measured on a "
               "pure-PyTorch reference backend, not a fused kernel. In figures: hollow markers and dashed lines.")


def _marks(noisy: bool, reference: bool) -> str:
    out = (NOISY_MARK if noisy else "") + (REFERENCE_MARK if reference else "")
    return f' <span class="mark">{out}</span>' if out else ""


def _fmt_exponent(e: Mapping[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "—"
    ci = e.get("ci95")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " (no interval: 2 points)"
    return f"{e['value']:.2f}{interval}, n={e['n_points']}"


def fmt_crossover(c: Mapping[str, Any]) -> str:
    """A crossover object as text: a length, or its verdict."""
    if c.get("value") is not None:
        return f"{c['value']:,.0f}"
    return text(c.get("verdict")) or "—"


def _answers_section(doc: Mapping[str, Any], reference: str = REFERENCE) -> str:
    """Crossover lengths vs the reference arch and fitted vs expected scaling exponents."""
    items = doc.get("answers") or []
    if not items:
        return ""
    ref = html.escape(reference)
    head = (f"<tr><th>group</th><th>arch</th><th>backend</th><th>faster than {ref} (T)</th>"
            f"<th>leaner than {ref} (T)</th><th>scaling exponent [95% CI], points</th><th>expected</th>"
            "<th>saved-activation exponent</th><th>measured T</th></tr>")  # fmt: skip
    body = []
    for a in items:
        f = a["flags"]
        expected = "—" if a["expected_exponent"] is None else f"{a['expected_exponent']:g}"
        lens = a["lengths"]
        cells = [html.escape(a["group_label"]), html.escape(a["arch"]) + _marks(False, f["reference"]),
                 html.escape(a["backend"]), html.escape(fmt_crossover(a["crossover"])) + _marks(f["noisy"], f["against_reference_backend"]),
                 html.escape(fmt_crossover(a["leaner"])), html.escape(_fmt_exponent(a["exponent"])), expected,
                 html.escape(_fmt_exponent(a["activation_exponent"])),
                 html.escape(f"{min(lens)}..{max(lens)}" if len(lens) > 1 else f"{lens[0]} only")]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<section id="answers"><h2>Answers</h2>'
        "<p>Crossover: the sequence length from which each architecture is faster (leaner in peak memory) "
        f"than {ref}'s best backend in the same group, interpolated between two or more lengths both measured; "
        "from one common length there is only a ratio. Scaling exponent: the least-squares slope of log latency "
        "vs log length over the top half of the measured range, with its 95% interval and the number of "
        "points; expected is what the complexity predicts for that mode (decode is per generated token: 1 for "
        "attention's growing KV cache, 0 for recurrent and windowed mixers). The saved-activation exponent is "
        f"the same fit of the bytes autograd keeps for backward (fwd_bwd). {html.escape(_MARKS_NOTE)}</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def _pick_text(p: Mapping[str, Any] | None, value: str) -> str:
    if not p:
        return "—"
    return f"<b>{html.escape(p['arch'])}</b>/{html.escape(p['backend'])} {html.escape(value)}" + _marks(p["noisy"], p["reference"])


def _first_screen(doc: Mapping[str, Any], reference: str = REFERENCE) -> str:
    """Banners, the configurations note, and per mode a decision matrix over (T, B)."""
    parts = []
    for b in doc.get("banners") or []:
        what = []
        if b["incomplete"]:
            planned = b["cells_planned"] if b["cells_planned"] is not None else "?"
            what.append(f"incomplete: {b['cells_measured']} of {planned} planned cells measured, status {b['status']}")
        if b["overrides"]:
            what.append("overridden with --set " + " ".join(b["overrides"]))
        where = b["run_dir"] or b["run_id"]
        parts.append(f'<p class="banner">&#9888; Run {html.escape(where)}: {html.escape("; ".join(what))}.</p>')
    if doc.get("skipped_lines"):
        parts.append(f'<p class="banner">&#9888; {html.escape(doc["skipped_lines"])}.</p>')
    if doc.get("note"):
        parts.append(f'<p class="note">{html.escape(doc["note"])}</p>')
    ref = html.escape(reference)
    for m in doc.get("decisions") or []:
        by = {(c["batch"], c["seq_len"]): c for c in m["cells"]}
        head = "<tr><th>batch \\ T</th>" + "".join(f"<th>T={t:,}</th>" for t in m["seq_lens"]) + "<th>fits in memory up to</th></tr>"
        rows = []
        frontier = {f["batch"]: f for f in m["frontier"]}
        for b in m["batches"]:
            tds = []
            for t in m["seq_lens"]:
                c = by.get((b, t))
                if c is None:
                    tds.append('<td class="empty">not measured</td>')
                    continue
                f = c["fastest"]
                ratio = f.get("ratio_to_reference") if f else None
                speed = f"{fmt_num(f['time_median_s'], '.3g', 1e3)} ms" if f else ""
                if ratio:
                    speed += f", {ratio:.2g}x vs {reference}"
                lean = c["leanest"]
                lean_txt = f"{fmt_num(lean['peak_mem_bytes'], '.3g', 1 / 2**30)} GiB" if lean else ""
                tds.append(f"<td>fastest: {_pick_text(f, speed)}<br>leanest: {_pick_text(lean, lean_txt)}"
                           f'<br><span class="n">{c["n_points"]} comparable point(s)</span></td>')
            fr = frontier.get(b, {})
            fit = f"T={fr['longest_fit']:,}" if fr.get("longest_fit") else "—"
            if fr.get("reference_longest_fit"):
                fit += f" ({ref}: T={fr['reference_longest_fit']:,})"
            if fr.get("first_oom"):
                fit += f"; out of memory from T={fr['first_oom']:,} ({html.escape(', '.join(fr['oom_archs']))})"
            rows.append(f"<tr><th>B={b}</th>{''.join(tds)}<td>{fit}</td></tr>")
        parts.append(f"<h3>{html.escape(m['group_label'])}</h3><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    if not parts:
        return ""
    return (
        '<section id="first-screen"><h2>At a glance</h2>'
        f"<p>Per mode and configuration, at each measured length and batch: the fastest architecture/backend "
        f"(and how many times faster than {ref}'s best backend there), the leanest in peak memory, and how many "
        f"comparable rows the cell rests on; the last column is the OOM frontier. {html.escape(_MARKS_NOTE)}</p>"
        + "".join(parts) + "</section>"
    )


_FIG_CONFIG = json.dumps({"displaylogo": False, "responsive": True})


def _figure_div(fig, div_id: str, kind: str) -> str:
    """A figure's box: an empty plot div sized to the figure, and the figure's plotly JSON
    (``{"data", "layout", "config"}``), gzip-compressed and base64-encoded, in a script the
    loader unpacks and draws when the box comes into view. Figures of a big run repeat the same
    keys, template and hover text thousands of times: compressed they take a tenth of the bytes."""
    spec = fig.to_json()  # plotly's encoder: arrays as typed base64, < > / escaped
    payload = spec[: spec.rindex("}")] + f',"config":{_FIG_CONFIG}}}'
    packed = base64.b64encode(gzip.compress(payload.encode(), compresslevel=9, mtime=0)).decode("ascii")
    height = fig.layout.height or 450
    return (f'<div class="figure figure-{kind}" style="min-height:{int(height)}px">'
            f'<div id="{html.escape(div_id)}" class="plotly-graph-div" style="height:{int(height)}px; width:100%;"></div>'
            f'<script type="{PLOT_SCRIPT_TYPE}" data-div="{html.escape(div_id)}">{packed}</script></div>')  # fmt: skip


def _accuracy_section(groups_: Sequence[TaskGroup]) -> str:
    """Per task group: the score table (best in bold) and the Pareto charts; MQAR's facets first."""
    if not groups_:
        return ""
    facets = zoology_facets(pd.concat([g.rows for g in groups_]))
    parts = [_figure_div(facets, "task-facets", "facets")] if facets is not None else []
    for gi, g in enumerate(groups_):
        table = task_table(g)
        cols = [c for c in table.columns if c not in ("std", "n_seeds", "diverged", "out_of_time", "runs")]
        best = table["score"].max() if g.higher_is_better else table["score"].min()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = []
        for _, r in table.iterrows():
            cells = []
            for c in cols:
                v = r[c]
                if c == "score":
                    spread = f" ± {r['std']:.3f}" if isinstance(r["std"], float) and r["n_seeds"] and r["n_seeds"] > 1 else ""
                    txt = html.escape(f"{v:.4f}{spread}")
                    txt = "<b>" + txt + "</b>" if v == best else txt
                    note = training_note(r)
                    if note:
                        txt += f' <span class="warn" title="loss not finite: training stopped">{html.escape(note[2:])}</span>'
                    cells.append(f'<td class="num">{txt}</td>')
                elif c == "state_bytes":
                    cells.append(f'<td class="num">{html.escape(fmt_num(v, ",.0f"))}</td>')
                elif isinstance(v, float):
                    cells.append(f'<td class="num">{html.escape(fmt_num(v, ".4g"))}</td>')
                else:
                    cells.append(f"<td>{html.escape(text(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{html.escape(g.label)} ({html.escape(g.metric)})</h3>"
                     f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")  # fmt: skip
        for x in ("state_bytes", "decode_s_per_token"):
            fig = pareto_figure(g, x)
            if fig is not None:
                parts.append(_figure_div(fig, f"task-{gi}-{x}", "pareto"))
    return (
        '<section id="accuracy"><h2>Accuracy vs efficiency</h2>'
        "<p>Task cells: small models of each architecture trained on the task; the score is the held-out "
        "metric at the best learning rate of the grid (mean ± spread over seeds). Bracketed columns break "
        "the score down by evaluation group. The charts put the score against the decode state's size and, "
        "where this run measured it, decode latency per token; the dashed line is the Pareto front.</p>"
        + "".join(parts) + "</section>"
    )


def render_page(
    df: pd.DataFrame | None,
    runs: Sequence[Mapping[str, Any]] | None,
    title: str | None = None,
    comparison: Mapping[str, Any] | None = None,
    reference: str = REFERENCE,
    doc: Mapping[str, Any] | None = None,
) -> str:
    """The whole report page as one HTML string; ``comparison`` (``Comparison.to_json()`` of two
    runs) adds the B/A section; ``reference`` is the arch crossovers and ratios are taken against;
    ``doc`` is ``answers.answers_document`` of the same rows (computed here when not given)."""
    data = prepare(df)
    run_list = [r for r in (runs or []) if isinstance(r, Mapping)]
    page_title = title if title is not None else default_title(data, run_list)
    doc = doc if doc is not None else answers_document(data, run_list, reference)
    specs = build_figures(data)
    tasks = task_groups(data)
    comparison_html = comparison_section(comparison, _figure_div)
    recipes_html = recipes_section(data)
    checkpoints_html = quality_section(checkpoint_groups(data), _figure_div)
    extra_nav = ([("first-screen", "At a glance")] if doc.get("decisions") or doc.get("banners") or doc.get("skipped_lines") else [])
    extra_nav += ([("comparison", "Comparison")] if comparison_html else []) + ([("accuracy", "Accuracy")] if tasks else [])
    extra_nav += [("recipes", "Recipes")] if recipes_html else []
    extra_nav += [("checkpoints", "Checkpoints")] if checkpoints_html else []
    body = "".join([
        _header(data, run_list, page_title, extra_nav),
        _first_screen(doc, reference),
        _answers_section(doc, reference),
        _ratios_section(data, reference),
        _accuracy_section(tasks),
        checkpoints_html,
        recipes_html,
        _figures_section(specs),
        comparison_html,
        _survey_section(data, doc),
        _table_section(data),
        _failures_section(data),
        _runs_section(run_list),
    ])
    body = body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(page_title)}</title><style>{_CSS}</style>",
        "</head><body>",
        body,
        _plotly_script() if f'<script type="{PLOT_SCRIPT_TYPE}"' in body else "",  # only where a figure waits for it
        "</body></html>\n",
    ])
