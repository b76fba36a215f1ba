"""Reproduction check of Zoology's Figure 2 (Arora et al., 2023) for attention and the gated
convolutions (BaseConv, Hyena, H3), at the paper's protocol (suites/mqar.yaml), on a GPU.

    python benchmarks/zoology_fig2.py --out results/baselines/<gpu>/zoology-fig2    # runs the grid
    python benchmarks/zoology_fig2.py --rows RUN_DIR/rows.jsonl --out DIR            # tabulates a run

It runs suites/mqar.yaml restricted to those four architectures (task cells only), then writes
``fig2.md``: one line per (L, kv, d_model, arch) with the measured accuracy (best lr, mean and
min..max over seeds), the row's ``comparable_to``, and what the paper reports there. Figure 2 is a
plot, not a table, so the paper column holds the statements its text makes rather than numbers read
off the figure: attention solves MQAR at every (L, d_model) of the grid (accuracy >= 0.99 here);
each gated convolution stays below attention at the same point, the gap growing with L at a fixed
d_model and closing as d_model grows. ``agrees`` says whether the row matches that statement; a row
that disagrees, or whose protocol differs (``comparable_to`` is not "Zoology Fig. 2"), is listed
under "Disagreements" with its protocol differences, for the person reading the result to explain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ARCHS = ("softmax_attention", "base_conv", "hyena", "h3")
ATTENTION = "softmax_attention"
SOLVED = 0.99


def suite_overrides(device: str = "cuda", tiny: bool = False) -> list[str]:
    """``--set`` overrides of suites/mqar.yaml for the check (``tiny``: a CPU smoke of the plumbing)."""
    sets = [f"sweep.arch=[{', '.join(ARCHS)}]", "sweep.mode=[task]", f"defaults.device={device}"]
    if tiny:
        sets += [
            "sweep.d_model=[16, 32]", "sweep.seq_len=[64]", "sweep.num_kv_pairs=[4]", "defaults.vocab_size=256",
            "defaults.train.epochs=1", "defaults.train.batch_size=32", "defaults.train.lr=[3.0e-3]",
            "defaults.train.seeds=1", "defaults.train.train_examples=64", "defaults.train.test_examples=32",
        ]  # fmt: skip
    return sets


def paper_claim(arch: str) -> str:
    return "solves MQAR: >= 0.99" if arch == ATTENTION else "below attention at this (L, d_model)"


def agrees(row: dict, attention: dict | None) -> bool | None:
    """Whether a row matches Figure 2's statement for its point (None: no attention row to compare with)."""
    score = float(row["task_score"])
    if row["arch"] == ATTENTION:
        return score >= SOLVED
    if attention is None:
        return None
    return score < float(attention["task_score"])


def table(rows: list[dict]) -> str:
    """The markdown result: the grid beside the paper's statements, then the disagreements."""
    tasks = [r for r in rows if r.get("mode") == "task" and r.get("status") == "ok" and r.get("arch") in ARCHS]
    tasks.sort(key=lambda r: (r["seq_len"], r["d_model"], ARCHS.index(r["arch"])))
    att = {(r["seq_len"], r["d_model"]): r for r in tasks if r["arch"] == ATTENTION}
    lines = [
        "# Zoology Figure 2: reproduction check", "",
        "| L | kv | d_model | arch | accuracy (best lr; seed min..max) | best lr | comparable_to | paper (Fig. 2) | agrees |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    problems = []
    for r in tasks:
        ok = agrees(r, att.get((r["seq_len"], r["d_model"])))
        spread = f" ({float(r.get('task_score_min', r['task_score'])):.3f}..{float(r.get('task_score_max', r['task_score'])):.3f})"
        label = str(r.get("comparable_to") or "—")
        short = label.split(" (")[0]
        verdict = "n/a" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {r['seq_len']} | {r.get('num_kv_pairs')} | {r['d_model']} | {r['arch']} | {float(r['task_score']):.3f}{spread} "
                     f"| {float(r.get('best_lr') or 0):.3g} | {short} | {paper_claim(r['arch'])} | {verdict} |")  # fmt: skip
        if ok is False or short != "Zoology Fig. 2":
            why = label if short != "Zoology Fig. 2" else "same protocol: to be explained"
            problems.append(f"- {r['arch']} L={r['seq_len']} d_model={r['d_model']}: {'disagrees; ' if ok is False else ''}{why}")
    lines += ["", "## Disagreements and protocol differences", ""] + (problems or ["none"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the run and fig2.md")
    ap.add_argument("--rows", type=Path, help="tabulate an existing rows.jsonl instead of running")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a minute-long CPU run of the plumbing (not a result)")
    args = ap.parse_args(argv)
    rows_path = args.rows
    if rows_path is None:
        run_dir = args.out / "run"
        cmd = [sys.executable, "-m", "archbench.cli", "run", "suites/mqar.yaml", "--out", str(run_dir), "--allow-failures", "--no-report"]
        for s in suite_overrides(args.device, args.tiny):
            cmd += ["--set", s]
        if subprocess.run(cmd, check=False).returncode not in (0,):
            print("zoology_fig2: archbench run failed; see the run directory's logs", file=sys.stderr)
            return 2
        rows_path = run_dir / "rows.jsonl"
    if not rows_path.is_file():
        print(f"zoology_fig2: no rows file at {rows_path}", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fig2.md").write_text(table(rows))
    print(f"zoology_fig2: {args.out / 'fig2.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
