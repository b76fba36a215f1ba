"""The page's sections that render the answers (``answers.py``): the first screen's decision
matrices, the Answers table, the per-group ratio tables and the Survey view."""

from __future__ import annotations

import html
from typing import Any, Mapping

import pandas as pd

from archbench.report.analysis import REFERENCE, ratio_table
from archbench.report.answers import answers_table, survey
from archbench.report.figures import groups
from archbench.report.marks import MARKS_NOTE, marks
from archbench.report.rows import noisy_mask, reference_mask
from archbench.report.values import fmt_num, text

_MIB = float(1 << 20)


def ratios_section(data: pd.DataFrame, reference: str = REFERENCE) -> str:
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
                mark = marks(*marked.get((text(name), int(t)), (False, False)))
                cells.append(f'<td class="num">{"<b>" + txt + "</b>" if v[0] == best[t] else txt}{mark}</td>')
            body.append(f"<tr><td>{html.escape(text(name))}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(g.label)}</h3><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>")
    if not parts:
        return ""
    return (
        f'<section id="ratios"><h2>Median latency by length, and ratio to {html.escape(reference)}</h2>'
        f"<p>Each cell: the median, and in brackets the ratio to {html.escape(reference)}'s best backend at that "
        f"length (below 1 = faster). The fastest in each column is in bold. {html.escape(MARKS_NOTE)}</p>"
        + "".join(parts) + "</section>"
    )


def survey_section(data: pd.DataFrame, doc: Mapping[str, Any] | None = None) -> str:
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


def answers_section(doc: Mapping[str, Any], reference: str = REFERENCE) -> str:
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
        cells = [html.escape(a["group_label"]), html.escape(a["arch"]) + marks(False, f["reference"]),
                 html.escape(a["backend"]), html.escape(fmt_crossover(a["crossover"])) + marks(f["noisy"], f["against_reference_backend"]),
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
        f"the same fit of the bytes autograd keeps for backward (fwd_bwd). {html.escape(MARKS_NOTE)}</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def _pick_text(p: Mapping[str, Any] | None, value: str) -> str:
    if not p:
        return "—"
    return f"<b>{html.escape(p['arch'])}</b>/{html.escape(p['backend'])} {html.escape(value)}" + marks(p["noisy"], p["reference"])


def first_screen(doc: Mapping[str, Any], reference: str = REFERENCE) -> str:
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
        f"comparable rows the cell rests on; the last column is the OOM frontier. {html.escape(MARKS_NOTE)}</p>"
        + "".join(parts) + "</section>"
    )

