"""Compare two sets of measurements cell by cell: the regression gate for CI.

A *side* is either a run directory (``rows.jsonl`` + ``run.json``, the latest row per cell
key) or a baseline JSON written by ``save_baseline`` (the same per-cell facts, checked in
next to the code they guard). Cells are matched by their stable key, so two sides compare
only where they measured the same configuration; a cell on one side only is listed as
*added* or *removed*, never a failure. Reading the sides and writing baselines is
``compare_sides``; the text, Markdown and JSON reports of a comparison are ``compare_format``.

**Latency** is judged by ``archbench.gate`` (the decision rule and the verdict words every
speed check shares). The effect is ``r = median(HEAD) / median(BASE)``; a cell *regresses*
when ``r > threshold`` **and** the difference is statistically clear at ``alpha``:

* two independent runs (or a run and a baseline): the two-sided Mann-Whitney U test on the
  raw per-call samples, or the distribution-free 99% intervals of the two medians not
  overlapping. The reported 99% interval of ``r`` is a seeded percentile bootstrap (2000
  resamples), shown, not used for the decision;
* the two sides of one ``archbench ab`` run (both record the same ``ab_id``): the exact
  Wilcoxon signed-rank test on the per-round ratios of medians, whose median is then ``r``
  and whose order-statistic 99% interval is shown.

*Improved* is the mirror image (``r < 1/threshold``). Beyond the threshold without
significance a cell is *insignificant* and does not fail; inside the threshold it is
*unchanged*. A cell whose samples are too few for any difference to reach ``alpha`` (fewer
than 8 per side at the default 0.002 for two runs, fewer than 8 rounds for an A/B run at
``archbench ab``'s 0.01) is
*underpowered*, with the size it would need in its note, and fails the gate with its own
exit code unless ``allow_underpowered``: a comparison that cannot decide says so.

The samples within one run measure call-to-call noise only; run-to-run drift (clocks,
thermals, a neighbour on a shared machine) is not in them, which makes the unpaired test
optimistic. Two independent runs with at least ``gate.NOISE_MIN_CELLS`` cells therefore measure
their own run-to-run noise from the spread of all cells' ratios, and a cell's change counts only
beyond that noise floor (``gate.run_noise``); where the floor is above the threshold, changes
inside it are *underpowered*: this pair of runs cannot decide, interleaved rounds
(``archbench ab``) can.

**Memory and energy** are one number per cell (peak bytes; joules per call), so the
decision is the threshold alone. A cell without the number on both sides is *no_data*.

**Failures.** A cell that is ok on one side only is *broken* (ok in BASE, not in HEAD) or
*fixed*; not ok on both sides is *failed*. These are listed, with their statuses, but only
regressions (and underpowered cells) fail the gate.

Inputs are refused (``CompareError``, one line) when a path holds neither a run nor a
baseline, when the sides share no cell, when an ok cell has no raw timing samples on a side,
and, unless ``force``, when they were measured on different devices or come from different
suites: a ratio of timings from two GPU models says nothing about the code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from archbench import gate
from archbench.compare_sides import IDENTITY_FIELDS, CellRecord, CompareError, Side, json_safe, load_side

METRICS = ("latency", "memory", "energy")
_NOTED_ENV_DIFFS = (
    "torch",
    "cuda",
    "driver",
    "triton",
    "flash_linear_attention",
    "fla_core",
    "mamba_ssm",
    "flash_attn",
)

#: Outcomes in the order they are listed.
OUTCOMES = (
    "regressed", "broken", "underpowered", "improved", "fixed", "insignificant", "unchanged", "failed", "no_data",
    "added", "removed",
)  # fmt: skip
_METRIC_FIELD = {"latency": "time_median_s", "memory": "peak_mem_bytes", "energy": "energy_j_per_call"}


@dataclass
class CellComparison:
    key: str
    label: str
    identity: dict[str, Any]
    outcome: str
    base_status: str | None = None
    head_status: str | None = None
    base_value: float | None = None
    head_value: float | None = None
    ratio: float | None = None
    ratio_ci: tuple[float, float] | None = None
    p_value: float | None = None
    base_ci: tuple[float, float] | None = None
    head_ci: tuple[float, float] | None = None
    n_base: int = 0
    n_head: int = 0
    test: str | None = None  # mann-whitney | signed-rank (latency only)
    note: str | None = None

    def to_json(self) -> dict:
        return {k: json_safe(v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    base: Side
    head: Side
    metric: str
    threshold: float
    alpha: float
    forced: bool
    cells: list[CellComparison]
    notes: list[str] = field(default_factory=list)
    allow_underpowered: bool = False

    def of(self, *outcomes: str) -> list[CellComparison]:
        return [c for c in self.cells if c.outcome in outcomes]

    @property
    def regressions(self) -> list[CellComparison]:
        return self.of("regressed")

    @property
    def improvements(self) -> list[CellComparison]:
        return self.of("improved")

    @property
    def exit_code(self) -> int:
        """0 pass, 1 a cell regressed, 3 a cell underpowered and none regressed (``archbench.gate``)."""
        return gate.gate_exit_code([c.outcome for c in self.cells], self.allow_underpowered)

    @property
    def passed(self) -> bool:
        return self.exit_code == gate.EXIT_PASS

    @property
    def verdict(self) -> str:
        """PASS, FAIL (a regression) or UNDERPOWERED (the samples could not decide some cell)."""
        return {gate.EXIT_PASS: "PASS", gate.EXIT_REGRESSED: "FAIL"}.get(self.exit_code, "UNDERPOWERED")

    def counts(self) -> dict[str, int]:
        out = {o: 0 for o in OUTCOMES}
        for c in self.cells:
            out[c.outcome] += 1
        return {o: n for o, n in out.items() if n}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in self.counts().items())
        return f"{self.verdict}: {counts} ({self.metric}, threshold x{self.threshold:g}, alpha {self.alpha:g})"

    def to_json(self) -> dict:
        def side(s: Side) -> dict:
            return {"source": s.source, "kind": s.kind, "run_id": s.run_id, "suite": s.suite,
                    "device_name": s.device_name, "env": s.env}  # fmt: skip

        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "allow_underpowered": self.allow_underpowered,
            "summary": self.summary(),
            "metric": self.metric,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "forced": self.forced,
            "counts": self.counts(),
            "base": side(self.base),
            "head": side(self.head),
            "notes": self.notes,
            "cells": [c.to_json() for c in self.cells],
        }


def _labeler(identities: Iterable[dict]) -> Any:
    """Labels like ``gla/chunked fwd float32 B=1 T=1024``, plus any other field that varies."""
    identities = list(identities)
    shown = {"arch", "backend", "level", "n_layers", "mode", "task", "dtype", "batch", "seq_len"}
    varying = [f for f in IDENTITY_FIELDS if f not in shown and len({repr(i.get(f)) for i in identities}) > 1]

    def label(ident: dict) -> str:
        parts = [f"{ident.get('arch', '?')}/{ident.get('backend', '?')}"]
        if ident.get("level") == "model":
            parts.append(f"[model L={ident.get('n_layers')}]")
        parts.append(str(ident.get("mode", "?")))
        if ident.get("task"):
            parts.append(str(ident["task"]))
        parts.append(str(ident.get("dtype", "?")))
        parts.append(f"B={ident.get('batch', '?')} T={ident.get('seq_len', '?')}")
        parts.extend(f"{f}={ident.get(f)}" for f in varying)
        return " ".join(parts)

    return label


def _judge_latency(
    c: CellComparison, b: CellRecord, h: CellRecord, threshold: float, alpha: float, paired: bool
) -> None:
    """``archbench.gate``: paired rounds when both sides come from one A/B run, else the samples."""
    if paired and b.round_medians_s and len(b.round_medians_s) == len(h.round_medians_s):
        j = gate.judge_paired(b.round_medians_s, h.round_medians_s, threshold, alpha)
    else:
        j = gate.judge_unpaired(b.samples_s, h.samples_s, threshold, alpha)
    c.outcome, c.ratio, c.p_value, c.ratio_ci, c.test = j.verdict, j.ratio, j.p_value, j.ratio_ci, j.test
    c.base_ci, c.head_ci, c.n_base, c.n_head, c.note = j.base_ci, j.head_ci, j.n_base, j.n_head, j.note


def _ratio(base: float, head: float) -> float:
    if base > 0:
        return head / base
    return 1.0 if head == base else math.inf


def compare(
    base: str | os.PathLike | Side,
    head: str | os.PathLike | Side,
    threshold: float = 1.10,
    metric: str = "latency",
    alpha: float = 0.002,
    force: bool = False,
    allow_underpowered: bool = False,
) -> Comparison:
    """HEAD against BASE, cell by cell (see the module docstring for the decision rule)."""
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    try:
        gate.check_threshold_alpha(threshold, alpha)
    except ValueError as e:
        raise CompareError(str(e)) from None
    b = base if isinstance(base, Side) else load_side(base, "BASE")
    h = head if isinstance(head, Side) else load_side(head, "HEAD")
    if b.suite and h.suite and b.suite != h.suite:
        if not force:
            raise CompareError(
                f"BASE is a run of suite {b.suite!r} and HEAD of {h.suite!r}; compare runs of the same suite "
                "(pass --force to compare their common cells anyway)"
            )
    common = [k for k in b.cells if k in h.cells]
    if not common:
        raise CompareError(
            f"no common cells: BASE has {len(b.cells)} and HEAD {len(h.cells)}, none with the same key; "
            "compare runs of the same suite (same sweep, dims and seeds)"
        )
    notes = (
        [f"different suites: {b.suite} (base) vs {h.suite} (head); compared with --force"]
        if b.suite != h.suite and b.suite and h.suite
        else []
    )
    paired = bool(b.ab_id) and b.ab_id == h.ab_id
    if paired:
        notes.append(f"paired rounds of A/B run {b.ab_id}: Wilcoxon signed-rank test on the per-round ratios")
    if b.device_name and h.device_name:
        if b.device_name.strip() != h.device_name.strip():
            if not force:
                raise CompareError(
                    f"BASE was measured on {b.device_name!r} and HEAD on {h.device_name!r}; "
                    "timings from different devices are not comparable (pass --force to compare anyway)"
                )
            notes.append(f"different devices: {b.device_name} (base) vs {h.device_name} (head); compared with --force")
    else:
        notes.append("device name missing on a side: devices not checked")
    for side, name in ((b, "base"), (h, "head")):
        if side.skipped_note:
            notes.append(f"{name}: {side.skipped_note}")
    for k in _NOTED_ENV_DIFFS:
        if b.env.get(k) != h.env.get(k) and (b.env.get(k) or h.env.get(k)):
            notes.append(f"{k} differs: {b.env.get(k) or 'none'} (base) vs {h.env.get(k) or 'none'} (head)")

    label = _labeler([c.identity for c in b.cells.values()] + [c.identity for c in h.cells.values()])
    cells: list[CellComparison] = []
    for key in common:
        bc, hc = b.cells[key], h.cells[key]
        c = CellComparison(key, label(hc.identity or bc.identity), hc.identity or bc.identity, "unchanged",
                           base_status=bc.status, head_status=hc.status)  # fmt: skip
        if bc.status != "ok" or hc.status != "ok":
            c.outcome = (
                "failed" if bc.status != "ok" and hc.status != "ok" else ("broken" if bc.status == "ok" else "fixed")
            )
            c.note = f"{bc.status} -> {hc.status}"
            c.base_value = bc.value(metric) if bc.status == "ok" else None
            c.head_value = hc.value(metric) if hc.status == "ok" else None
            if hc.status != "ok" and hc.error:
                c.note += f": {str(hc.error).strip().splitlines()[-1][:200]}"
        else:
            c.base_value, c.head_value = bc.value(metric), hc.value(metric)
            if c.base_value is None or c.head_value is None:
                c.outcome = "no_data"
                c.note = f"no {_METRIC_FIELD[metric]} on {'both sides' if c.base_value == c.head_value else 'one side'}"
            elif metric == "latency":
                for side, rec in (("BASE", bc), ("HEAD", hc)):
                    if not rec.samples_s:
                        raise CompareError(
                            f"{side} cell {key} ({c.label}) has no time_samples_s: latency needs the raw samples; "
                            "rerun it, or save the baseline from a run directory with `archbench baseline save`"
                        )
                try:
                    _judge_latency(c, bc, hc, threshold, alpha, paired)
                except ValueError as e:
                    raise CompareError(f"cell {key} ({c.label}): {e}") from None
            else:
                c.ratio = _ratio(c.base_value, c.head_value)
                c.outcome = gate.decide(c.ratio, threshold, significant=True)
        cells.append(c)
    for key in b.cells.keys() - h.cells.keys():
        r = b.cells[key]
        cells.append(CellComparison(key, label(r.identity), r.identity, "removed", base_status=r.status,
                                    base_value=r.value(metric) if r.status == "ok" else None))  # fmt: skip
    for key in h.cells.keys() - b.cells.keys():
        r = h.cells[key]
        cells.append(CellComparison(key, label(r.identity), r.identity, "added", head_status=r.status,
                                    head_value=r.value(metric) if r.status == "ok" else None))  # fmt: skip
    judged = [c for c in cells if c.ratio is not None]
    if not judged and not any(c.outcome in ("broken", "fixed", "failed") for c in cells):
        raise CompareError(
            f"no common ok cell has {_METRIC_FIELD[metric]} on both sides; "
            + ("enable measure.energy in the suite (needs NVML or RAPL) or " if metric == "energy" else "")
            + "choose another --metric"
        )

    def order(c: CellComparison) -> tuple:
        r = c.ratio if c.ratio is not None and math.isfinite(c.ratio) else 1.0
        return (OUTCOMES.index(c.outcome), -r if c.outcome == "regressed" else r, c.label, c.key)

    if metric == "latency" and not paired:
        noise = gate.run_noise([c.ratio for c in cells if c.test == "mann-whitney" and c.ratio is not None], alpha)
        if noise is None:
            notes.append(f"fewer than {gate.NOISE_MIN_CELLS} cells: run-to-run noise not measured, "
                         "only the samples' call-to-call noise (set the threshold above a rerun's drift)")  # fmt: skip
        else:
            notes.append(noise.describe())
            for c in cells:
                if c.test == "mann-whitney" and c.outcome in (gate.REGRESSED, gate.IMPROVED):
                    j = gate.within_noise(gate.Judgement(c.outcome, c.ratio), noise, threshold)
                    c.outcome, c.note = j.verdict, j.note if j.note else c.note
    cells.sort(key=order)
    return Comparison(b, h, metric, threshold, alpha, force, cells, notes, allow_underpowered)

