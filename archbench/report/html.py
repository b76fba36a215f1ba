"""Assembly of the self-contained HTML report page.

The page is one file that opens offline: inline CSS, plotly.js embedded once inline
(only when there is something to plot, ``embed.py``), then a header (runs, environment, status
counts), the first screen (banners for incomplete or overridden runs, and per mode a
decision matrix over the measured lengths and batches), the answers, the figures per
comparable group, a plain HTML table of every cell and a "Failures" section with the full
error texts. The first screen and the answers render the objects of ``answers.py``, the same
ones ``answers.json`` holds (``answer_sections.py``); the header and the Runs section are
``run_sections.py``, the Results and Failures sections ``results_sections.py``. Every string
taken from the data or the run metadata goes through ``html.escape``.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import pandas as pd

from archbench.report.accuracy import TaskGroup, training_note, pareto_figure, task_groups, task_table, zoology_facets
from archbench.report.analysis import REFERENCE
from archbench.report.answer_sections import answers_section, first_screen, ratios_section, survey_section
from archbench.report.answers import answers_document
from archbench.report.comparison import comparison_section
from archbench.report.embed import PLOT_SCRIPT_TYPE, figure_div, plotly_script
from archbench.report.figures import FigureSpec, build_figures
from archbench.report.quality import checkpoint_groups, quality_section
from archbench.report.recipes import recipes_section
from archbench.report.results_sections import failures_section, results_section
from archbench.report.rows import prepare
from archbench.report.run_sections import default_title, page_header, runs_section
from archbench.report.values import fmt_num, text

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
        parts.append(figure_div(spec.figure, f"fig-{i}", spec.kind))
    return "".join(parts) + "</section>"


def _accuracy_section(groups_: Sequence[TaskGroup]) -> str:
    """Per task group: the score table (best in bold) and the Pareto charts; MQAR's facets first."""
    if not groups_:
        return ""
    facets = zoology_facets(pd.concat([g.rows for g in groups_]))
    parts = [figure_div(facets, "task-facets", "facets")] if facets is not None else []
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
                parts.append(figure_div(fig, f"task-{gi}-{x}", "pareto"))
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
    comparison_html = comparison_section(comparison, figure_div)
    recipes_html = recipes_section(data)
    checkpoints_html = quality_section(checkpoint_groups(data), figure_div)
    extra_nav = ([("first-screen", "At a glance")] if doc.get("decisions") or doc.get("banners") or doc.get("skipped_lines") else [])
    extra_nav += ([("comparison", "Comparison")] if comparison_html else []) + ([("accuracy", "Accuracy")] if tasks else [])
    extra_nav += [("recipes", "Recipes")] if recipes_html else []
    extra_nav += [("checkpoints", "Checkpoints")] if checkpoints_html else []
    body = "".join([
        page_header(data, run_list, page_title, extra_nav),
        first_screen(doc, reference),
        answers_section(doc, reference),
        ratios_section(data, reference),
        _accuracy_section(tasks),
        checkpoints_html,
        recipes_html,
        _figures_section(specs),
        comparison_html,
        survey_section(data, doc),
        results_section(data),
        failures_section(data),
        runs_section(run_list),
    ])
    body = body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(page_title)}</title><style>{_CSS}</style>",
        "</head><body>",
        body,
        plotly_script() if f'<script type="{PLOT_SCRIPT_TYPE}"' in body else "",  # only where a figure waits for it
        "</body></html>\n",
    ])
