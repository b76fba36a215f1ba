"""Results summaries generated from committed rows: results/baselines/<machine>/SUMMARY.md.

    python benchmarks/summaries.py write    # regenerate every machine's SUMMARY.md
    python benchmarks/summaries.py check    # exit 1 when a SUMMARY.md differs from what write would give

Written figures drift from the rows they came from unless a program writes them. So every table of a
machine's SUMMARY.md comes from the rows committed beside it: per run directory, the runs it holds
(suite, run id, dates, git revision as the rows recorded it), the Markdown that
``archbench report DIR --format md`` prints for it (called in-process through the CLI, so the tables
are the tool's own), the recipe tables of the HTML report (``archbench.report.recipes``) in Markdown,
and a per-cell listing of the measurements the grouped tables leave out (energy, power, peak memory,
roofline, training time, seed spread). The header names the machine's devices, library versions and
dates, read from the rows' ``env``.

What the numbers mean is written by hand in NOTES.md beside SUMMARY.md; the generator includes it
verbatim under "Notes". A number a note quotes is one of the generated tables' (or computed from
them, saying so). Other committed tool outputs of a machine (pytest logs, ``benchmarks/op_speed.py``
text) are listed with links, not rendered.

Exit codes: 0 done / up to date, 1 ``check`` found a stale or missing SUMMARY.md, 2 bad usage or
unreadable rows (no results folder, an unknown command, a run directory ``archbench report`` refuses;
nothing is written then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "results" / "baselines"
SUMMARY = "SUMMARY.md"
NOTES = "NOTES.md"
#: Files of a machine folder that are neither rows nor summaries but committed tool output.
OTHER_OUTPUT_SUFFIXES = (".txt", ".json")

#: The per-cell listing: (row field, header, how to format). A column is shown only when some row of
#: the run directory has a value for it.
CELL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("time_median_s", "median ms", "ms"),
    ("time_rel_iqr", "IQR / median", ".0%"),
    ("energy_j_per_call", "energy J / call", ".3g"),
    ("avg_power_w", "avg power W", ".0f"),
    ("peak_mem_bytes", "peak MiB", "mib"),
    ("pct_of_roof", "% of roof", "roof"),
    ("task_score", "score", ".3f"),
    ("task_score_min", "seeds min-max", "seeds"),
    ("train_steps", "steps", ".0f"),
    ("train_wall_s", "training s", ".0f"),
    ("state_bytes", "state bytes", ",.0f"),
    ("kernels", "kernels", "list"),
)


class UsageError(Exception):
    """Bad input; the message is one line and says what to do."""


def machine_dirs(root: Path) -> list[Path]:
    """The machine folders under ``root``: every subfolder that holds at least one run directory."""
    from archbench.store import find_run_dirs

    if not root.is_dir():
        raise UsageError(f"no results folder at {root}; pass --root DIR (a folder of <machine>/ folders)")
    return [d for d in sorted(root.iterdir()) if d.is_dir() and find_run_dirs([d])]


def _rows(run_dir: Path) -> list[dict]:
    from archbench.store import read_rows, rows_files

    return [r for p in rows_files(run_dir) for r in read_rows(p)]


def _values(items: Iterable[Any]) -> list[str]:
    """The distinct non-empty values, as text, in sorted order."""
    return sorted({str(v) for v in items if v not in (None, "", [], {})})


def _dates(rows: list[dict], meta: dict) -> list[str]:
    stamps = [r.get(k) for r in rows for k in ("started_at", "ended_at")] + [
        meta.get("started_at"),
        meta.get("ended_at"),
    ]
    return sorted({str(s)[:10] for s in stamps if isinstance(s, str) and len(s) >= 10})


def _wall(rows: list[dict], meta: dict) -> str:
    """First start to last end of ``rows`` (of run.json when the rows carry no times)."""
    from datetime import datetime

    starts = [r["started_at"] for r in rows if isinstance(r.get("started_at"), str)] or [meta.get("started_at")]
    ends = [r["ended_at"] for r in rows if isinstance(r.get("ended_at"), str)] or [meta.get("ended_at")]
    try:
        s = (
            datetime.fromisoformat(max(e for e in ends if e)) - datetime.fromisoformat(min(t for t in starts if t))
        ).total_seconds()
    except (TypeError, ValueError):
        return ""
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def _span(values: list[str]) -> str:
    return "" if not values else values[0] if len(values) == 1 else f"{values[0]} to {values[-1]}"


def _env(rows: list[dict], meta: dict) -> list[dict]:
    return [r["env"] for r in rows if isinstance(r.get("env"), dict)] + (
        [meta["env"]] if isinstance(meta.get("env"), dict) else []
    )


def header(machine: Path, run_dirs: list[Path]) -> list[str]:
    """The machine's devices, library versions and dates, from every row's (and run.json's) env."""
    from archbench.store import RunDir

    envs, dates = [], []
    for d in run_dirs:
        rows, meta = _rows(d), RunDir(d).read_meta()
        envs += _env(rows, meta)
        dates += _dates(rows, meta)
    lines = [f"# {machine.name}: measured results", "",
             f"Generated by `python benchmarks/summaries.py write` from the rows committed under this folder; "
             f"do not edit by hand (interpretation goes in {NOTES}, included below).", ""]  # fmt: skip
    facts = [
        ("dates", _span(sorted(set(dates)))),
        ("device", ", ".join(_values(e.get("device_name") for e in envs))),
        ("GPU driver", ", ".join(_values(e.get("driver") for e in envs))),
        ("GPU power limit W", ", ".join(_values(e.get("gpu_power_limit_w") for e in envs))),
        ("CPU", ", ".join(_values(e.get("cpu") for e in envs))),
        ("CPU cores", ", ".join(_values(e.get("cpu_count") for e in envs))),
        ("torch", ", ".join(_values(e.get("torch") for e in envs))),
        ("CUDA", ", ".join(_values(e.get("cuda") for e in envs))),
        ("triton", ", ".join(_values(e.get("triton") for e in envs))),
        ("flash-linear-attention", ", ".join(_values(e.get("flash_linear_attention") for e in envs))),
        ("transformers", ", ".join(_values(e.get("transformers") for e in envs))),
        ("Python", ", ".join(_values(e.get("python") for e in envs))),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts if v] + [""]
    return lines


def _report_markdown(run_dir: Path) -> str:
    """What ``archbench report RUN_DIR --format md`` prints, run in-process."""
    from click.testing import CliRunner

    from archbench.cli import main

    result = CliRunner().invoke(main, ["report", str(run_dir), "--format", "md"], catch_exceptions=False)
    if result.exit_code != 0:
        raise UsageError(
            f"archbench report {run_dir} --format md exited {result.exit_code}: {result.output.strip()[:200]}"
        )
    return result.output.rstrip("\n")


def _demote(markdown: str, levels: int = 1) -> list[str]:
    """The report's Markdown with every heading ``levels`` deeper, to sit under a run's heading."""
    return [("#" * levels + line) if line.startswith("#") else line for line in markdown.splitlines()]


def runs_table(rows: list[dict], meta: dict) -> list[str]:
    """One line per run id in a run directory: suite, rows, dates, first start to last end, git
    revision and device as recorded."""
    # Rows without a run id belong to run.json's run, unless other rows of the directory name
    # theirs (then they came from another command, e.g. `archbench convert`: named by recipe).
    named = any(r.get("run_id") for r in rows)
    by_run: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("run_id") or not named:
            run_id, suite = (
                str(r.get("run_id") or meta.get("run_id") or "(not recorded)"),
                str(r.get("suite") or meta.get("suite") or ""),
            )
        else:
            run_id, suite = "(not recorded)", f"recipe {r['recipe']}" if r.get("recipe") else ""
        by_run.setdefault((run_id, suite), []).append(r)
    out = [
        "| run id | suite | rows | dates | first start to last end | git revision | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for (run_id, suite), rs in sorted(
        by_run.items(), key=lambda kv: (min(str(r.get("started_at") or "~") for r in kv[1]), kv[0])
    ):
        own_meta = meta if not named or rs[0].get("run_id") else {}
        envs = _env(rs, own_meta) if any(isinstance(r.get("env"), dict) for r in rs) else _env([], own_meta)
        times_meta = own_meta if not any(r.get("started_at") for r in rs) else {}
        out.append(f"| {run_id} | {suite} | {len(rs)} | {_span(_dates(rs, times_meta))} | {_wall(rs, times_meta)} "
                   f"| {', '.join(_values(e.get('git_rev') for e in envs))} | {', '.join(_values(e.get('device_name') for e in envs))} |")  # fmt: skip
    return out + [""]


def recipe_markdown(run_dir: Path) -> list[str]:
    """The report's recipe tables (``archbench.report.recipes.curated_table``) in Markdown."""
    from archbench.report.rows import prepare
    from archbench.report.recipes import curated_table, recipe_tables
    from archbench.store import load

    out: list[str] = []
    for label, table in recipe_tables(prepare(load(run_dir))):
        headers, cells = curated_table(table)
        out += [f"### Recipe {label}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells] + [""]
    return out


def _cell(row: dict, field: str, how: str) -> str:
    from archbench.report.values import fmt_num, is_missing

    v = row.get(field)
    if how == "list":
        return ", ".join(str(k) for k in v) if isinstance(v, list) else ""
    if is_missing(v) or isinstance(v, (list, dict, str)):
        return ""
    if how == "ms":
        return fmt_num(v, ".3g", 1e3)
    if how == "mib":
        return fmt_num(v, ",.0f", 1 / 2**20)
    if how == "roof":
        return fmt_num(v, ".1f") + (f" ({row['bound']})" if row.get("bound") else "")
    if how == "seeds":
        hi = row.get("task_score_max")
        return "" if (row.get("n_seeds") or 1) <= 1 or is_missing(hi) else f"{v:.3f}-{hi:.3f}"
    if how == ".0%":
        return f"{v:.0%}"
    return fmt_num(v, how)


def cells_table(rows: list[dict]) -> list[str]:
    """Every measured cell (the last row of each key in each run) with the columns the grouped
    tables leave out, formatted with the report's ``fmt_num``."""
    from archbench.report.rows import mode_rank

    last: dict[tuple, dict] = {}
    for r in rows:
        if r.get("recipe") or not r.get("arch"):
            continue
        last[(r.get("run_id"), r.get("key") or id(r))] = r
    cells = sorted(last.values(), key=lambda r: (str(r.get("run_id") or ""), mode_rank(r.get("mode")), str(r.get("arch")),
                                                 str(r.get("backend")), r.get("d_model") or 0, r.get("num_kv_pairs") or 0,
                                                 r.get("seq_len") or 0))  # fmt: skip
    if not cells:
        return []
    shown = [(f, h, how) for f, h, how in CELL_COLUMNS if any(_cell(r, f, how) for r in cells)]
    several = len({r.get("run_id") for r in cells}) > 1
    head = (
        (["run id"] if several else [])
        + ["arch/backend", "mode", "dtype", "d_model", "T", "timing"]
        + [h for _, h, _ in shown]
    )
    out = ["### Every cell", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cells:
        timing = ""  # CUDA graph replay or eager launches; a CPU or task row has neither
        if r.get("cuda_graph") is True:
            timing = "graph"
        elif r.get("device") == "cuda" and r.get("mode") != "task":
            timing = "eager"
        base = ([str(r.get("run_id") or "")] if several else []) + [
            f"{r.get('arch')}/{r.get('backend')}", str(r.get("mode") or ""), str(r.get("dtype") or ""),
            str(r.get("d_model") or ""), str(r.get("seq_len") or ""), timing,
        ]  # fmt: skip
        if r.get("status") != "ok":
            out.append("| " + " | ".join(base + [f"**{r.get('status')}**"] + [""] * (len(shown) - 1)) + " |")
            continue
        out.append("| " + " | ".join(base + [_cell(r, f, how).replace("|", "\\|") for f, _, how in shown]) + " |")
    return out + [""]


def other_outputs(machine: Path) -> list[str]:
    """Committed tool outputs that are not rows (pytest logs, op_speed text), linked."""
    files = sorted(p for p in machine.rglob("*") if p.is_file() and p.suffix in OTHER_OUTPUT_SUFFIXES
                   and p.name != "run.json" and not p.name.startswith("shard-"))  # fmt: skip
    if not files:
        return []
    out = ["## Other committed outputs", "",
           "Tool output that is not rows (pytest logs, benchmark printouts), committed as printed; NOTES.md says which command printed each.", ""]  # fmt: skip
    return out + [f"- [`{p.relative_to(machine)}`]({p.relative_to(machine).as_posix()})" for p in files] + [""]


def render(machine: Path) -> str:
    """The SUMMARY.md of one machine folder."""
    from archbench.store import RunDir, find_run_dirs

    run_dirs = sorted(
        find_run_dirs([machine]),
        key=lambda d: (min((str(r.get("started_at") or "~") for r in _rows(d)), default="~"), str(d)),
    )
    lines = header(machine, run_dirs)
    notes = machine / NOTES
    if notes.is_file():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    for d in run_dirs:
        rel = d.relative_to(machine).as_posix()
        rows, meta = _rows(d), RunDir(d).read_meta()
        lines += [f"## Run directory `{rel}/`", ""]
        lines += runs_table(rows, meta)
        lines += [
            f"`archbench report {d.relative_to(ROOT).as_posix() if d.is_relative_to(ROOT) else d} --format md`:",
            "",
        ]
        lines += _demote(_report_markdown(d)) + [""]
        if any(r.get("recipe") for r in rows):
            lines += recipe_markdown(d)
        lines += cells_table(rows)
    lines += other_outputs(machine)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=("write", "check"), help="write: regenerate; check: exit 1 if any is stale")
    ap.add_argument(
        "--root", type=Path, default=BASELINES, help="folder of <machine>/ folders (default: results/baselines)"
    )
    args = ap.parse_args(argv)
    try:
        rendered = [(m / SUMMARY, render(m)) for m in machine_dirs(args.root)]
    except UsageError as e:
        print(f"summaries: {e}", file=sys.stderr)
        return 2
    stale = []
    for path, text in rendered:
        if args.command == "write":
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path}")
        elif not path.is_file() or path.read_text() != text:
            stale.append(path)
    for p in stale:
        print(f"stale: {p} (run: python benchmarks/summaries.py write)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
