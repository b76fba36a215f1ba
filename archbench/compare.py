"""Compare two sets of measurements cell by cell: the regression gate for CI.

A *side* is either a run directory (``rows.jsonl`` + ``run.json``, the latest row per cell
key) or a baseline JSON written by ``save_baseline`` (the same per-cell facts, checked in
next to the code they guard). Cells are matched by their stable key, so two sides compare
only where they measured the same configuration; a cell on one side only is listed as
*added* or *removed*, never a failure.

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
optimistic. The threshold is the guard against that: set it above the drift you see when
comparing a run against a rerun of itself, or compare interleaved rounds (``archbench ab``).

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

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archbench import gate
from archbench.fields import CELL_FIELDS
from archbench.store import ROWS, RUN, RunDir, describe_skipped, find_run_dirs, now_iso

METRICS = ("latency", "memory", "energy")
BASELINE_SCHEMA = "archbench-baseline"
BASELINE_VERSION = 1

#: The fields that identify a cell (``archbench.fields``: comparing results imports no model code).
IDENTITY_FIELDS = CELL_FIELDS
#: Environment facts a baseline keeps, and whose differences a comparison notes.
ENV_SUMMARY_FIELDS = (
    "device_name", "torch", "cuda", "driver", "python", "cpu", "cpu_count", "git_rev", "archbench",
    "triton", "flash_linear_attention", "fla_core", "mamba_ssm", "flash_attn", "causal_conv1d", "transformers",
)  # fmt: skip
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


class CompareError(ValueError):
    """Inputs that cannot be compared; the message is one line and says what to do."""


# ---- the two sides ----------------------------------------------------------------------


@dataclass
class CellRecord:
    """What one side knows about one cell."""

    key: str
    identity: dict[str, Any]
    status: str
    error: str | None = None
    median_s: float | None = None
    samples_s: tuple[float, ...] = ()
    peak_mem_bytes: float | None = None
    energy_j_per_call: float | None = None
    device_name: str | None = None
    round_medians_s: tuple[float, ...] = ()  # per-round medians of an A/B run (``ab_round_medians_s``)

    def value(self, metric: str) -> float | None:
        return {"latency": self.median_s, "memory": self.peak_mem_bytes, "energy": self.energy_j_per_call}[metric]

    def to_json(self) -> dict:
        return {
            "identity": self.identity,
            "status": self.status,
            "error": self.error,
            "time_median_s": self.median_s,
            "time_samples_s": list(self.samples_s),
            "peak_mem_bytes": self.peak_mem_bytes,
            "energy_j_per_call": self.energy_j_per_call,
            "device_name": self.device_name,
        }


@dataclass
class Side:
    """One side of a comparison: a run directory or a baseline file, as per-key records."""

    source: str
    kind: str  # run | baseline
    run_id: str | None
    suite: str | None
    device_name: str | None
    env: dict[str, Any]
    cells: dict[str, CellRecord]
    created_at: str | None = None
    ab_id: str | None = None  # the A/B run this side belongs to: two sides with the same id were measured in pairs
    skipped_note: str | None = None  # lines of its rows files the store's reader could not use (torn, not JSON)

    def describe(self) -> str:
        bits = [self.kind]
        if self.run_id:
            bits.append(f"run {self.run_id}")
        if self.env.get("git_rev"):
            bits.append(f"git {self.env['git_rev']}")
        bits.append(self.device_name or "device unknown")
        return ", ".join(bits)


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _record(key: str, row: dict, identity: dict | None = None) -> CellRecord:
    env = row.get("env") or {}
    samples = tuple(float(s) for s in (row.get("time_samples_s") or []) if _number(s) is not None)
    median = _number(row.get("time_median_s"))
    if median is None and samples:
        median = float(np.median(samples))
    ident = identity if identity is not None else {f: row[f] for f in IDENTITY_FIELDS if f in row}
    return CellRecord(
        key=key,
        identity=dict(ident),
        status=str(row.get("status") or "error"),
        error=row.get("error"),
        median_s=median,
        samples_s=samples,
        peak_mem_bytes=_number(row.get("peak_mem_bytes")),
        energy_j_per_call=_number(row.get("energy_j_per_call")),
        device_name=row.get("device_name") or env.get("device_name"),
        round_medians_s=tuple(float(m) for m in (row.get("ab_round_medians_s") or []) if _number(m) is not None),
    )


def _summarize_env(env: dict) -> dict:
    return {k: env[k] for k in ENV_SUMMARY_FIELDS if env.get(k) is not None}


def _load_run(run_dir: Path) -> Side:
    rd = RunDir(run_dir)
    latest: dict[str, dict] = {}
    for row in rd.rows():
        if row.get("key") is not None:
            latest[str(row["key"])] = row
    meta = rd.read_meta()
    env = meta.get("env") or next((r["env"] for r in latest.values() if r.get("env")), {})
    cells = {k: _record(k, r) for k, r in latest.items()}
    device = env.get("device_name") or next((c.device_name for c in cells.values() if c.device_name), None)
    first = next(iter(latest.values()), {})
    return Side(
        source=str(run_dir),
        kind="run",
        run_id=meta.get("run_id") or first.get("run_id") or run_dir.name,
        suite=meta.get("suite") or first.get("suite"),
        device_name=device,
        env=_summarize_env(env),
        cells=cells,
        created_at=meta.get("started_at"),
        ab_id=meta.get("ab_id"),
        skipped_note=describe_skipped(rd.skipped_lines),
    )


def _load_baseline(path: Path, data: dict, name: str) -> Side:
    version = data.get("schema_version")
    if not isinstance(version, int) or version > BASELINE_VERSION:
        raise CompareError(
            f"{name}: {path} is baseline schema version {version!r}, this archbench reads up to "
            f"{BASELINE_VERSION}; upgrade archbench or re-save the baseline with `archbench baseline save`"
        )
    cells = {}
    for key, c in (data.get("cells") or {}).items():
        cells[str(key)] = _record(str(key), c, identity=c.get("identity") or {})
    source = data.get("source_run") or {}
    return Side(
        source=str(path),
        kind="baseline",
        run_id=source.get("run_id"),
        suite=source.get("suite"),
        device_name=data.get("device"),
        env=dict(data.get("env") or {}),
        cells=cells,
        created_at=data.get("created_at"),
    )


def load_side(path: str | os.PathLike, name: str = "input") -> Side:
    """A run directory (or its rows.jsonl) or a baseline JSON, as a ``Side``.

    ``name`` (BASE, HEAD, RUN_DIR) only labels error messages.
    """
    p = Path(path)
    if not p.exists():
        raise CompareError(
            f"{name}: nothing at {p}; pass a run directory (holding {ROWS}) or a baseline JSON from `archbench baseline save`"
        )
    if p.is_file() and p.name != ROWS:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
            raise CompareError(
                f"{name}: {p} is not an archbench baseline JSON; pass a run directory or a file from `archbench baseline save`"
            )
        return _load_baseline(p, data, name)
    try:
        dirs = find_run_dirs([p])
    except FileNotFoundError as e:
        raise CompareError(f"{name}: {e}") from None
    if not dirs:
        raise CompareError(f"{name}: no run under {p}; pass a run directory holding {ROWS} or {RUN}")
    if len(dirs) > 1:
        raise CompareError(
            f"{name}: {p} holds {len(dirs)} runs; name one run directory, e.g. {dirs[-1]} (the latest by name)"
        )
    return _load_run(dirs[0])


# ---- the comparison ---------------------------------------------------------------------


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
        return {k: _json_safe(v) for k, v in self.__dict__.items()}


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


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (tuple, list)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


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

    cells.sort(key=order)
    return Comparison(b, h, metric, threshold, alpha, force, cells, notes, allow_underpowered)


# ---- formatting -------------------------------------------------------------------------


def _fmt_value(v: float | None, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if metric == "latency":
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if abs(v) >= scale:
                return f"{v / scale:.4g} {unit}"
        return f"{v * 1e9:.4g} ns"
    if metric == "memory":
        for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if abs(v) >= scale:
                return f"{v / scale:.4g} {unit}"
        return f"{v:.0f} B"
    return f"{v:.4g} J" if abs(v) >= 1 else f"{v * 1e3:.4g} mJ"


def _fmt_ratio(c: CellComparison) -> str:
    if c.ratio is None:
        return "-"
    text = "inf" if not math.isfinite(c.ratio) else f"{c.ratio:.3f}x"
    if c.ratio_ci and all(math.isfinite(x) for x in c.ratio_ci):
        text += f" [{c.ratio_ci[0]:.3f}, {c.ratio_ci[1]:.3f}]"
    return text


def _fmt_p(c: CellComparison) -> str:
    return "-" if c.p_value is None or not math.isfinite(c.p_value) else f"{c.p_value:.2g}"


def _fmt_status_value(c: CellComparison, side: str, metric: str) -> str:
    status = c.base_status if side == "base" else c.head_status
    value = c.base_value if side == "base" else c.head_value
    if status is None:
        return "-"
    if status != "ok":
        return status
    return _fmt_value(value, metric)


_COLUMNS = ("verdict", "cell", "key", "base", "head", "ratio [99% CI]", "p", "note")


def _table_rows(cmp: Comparison, cells: Sequence[CellComparison]) -> list[list[str]]:
    return [
        [c.outcome, c.label, c.key, _fmt_status_value(c, "base", cmp.metric), _fmt_status_value(c, "head", cmp.metric),
         _fmt_ratio(c), _fmt_p(c), c.note or ""]
        for c in cells
    ]  # fmt: skip


def _header_lines(cmp: Comparison) -> list[str]:
    return [f"base: {cmp.base.source} ({cmp.base.describe()})", f"head: {cmp.head.source} ({cmp.head.describe()})"]


def format_text(cmp: Comparison) -> str:
    """A plain-text report: the verdict line, both sides, notes, then one aligned row per cell."""
    lines = [f"archbench compare: {cmp.summary()}", *_header_lines(cmp)]
    lines += [f"note: {n}" for n in cmp.notes]
    rows = [list(_COLUMNS)] + _table_rows(cmp, cmp.cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: backslashes and pipes escaped, no HTML, one line."""
    s = "" if value is None else str(value)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def _md_table(cmp: Comparison, cells: Sequence[CellComparison]) -> list[str]:
    cols = ["cell", "key", "base", "head", "ratio [99% CI]", "p", "verdict", "note"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for r in _table_rows(cmp, cells):
        verdict, label, key, base, head, ratio, p, note = r
        cells_md = [md_escape(label), f"`{key}`" if key.isalnum() else md_escape(key), md_escape(base),
                    md_escape(head), md_escape(ratio), md_escape(p), f"**{verdict}**" if verdict == "regressed"
                    else md_escape(verdict), md_escape(note)]  # fmt: skip
        out.append("| " + " | ".join(cells_md) + " |")
    return out


def format_markdown(cmp: Comparison) -> str:
    """A GitHub-comment-ready report: verdict and counts, regressions, improvements, the rest folded."""
    verdict = cmp.verdict
    counts = " · ".join(f"{n} {o.replace('_', ' ')}" for o, n in cmp.counts().items())
    lines = [
        f"### archbench compare ({cmp.metric}): **{verdict}**",
        "",
        f"{counts} (threshold ×{cmp.threshold:g}, alpha {cmp.alpha:g})",
        "",
        f"- base: `{md_escape(cmp.base.source)}` ({md_escape(cmp.base.describe())})",
        f"- head: `{md_escape(cmp.head.source)}` ({md_escape(cmp.head.describe())})",
    ]
    lines += [f"- note: {md_escape(n)}" for n in cmp.notes]
    sections = [("Regressions", cmp.of("regressed")), ("Underpowered", cmp.of("underpowered")),
                ("Now failing", cmp.of("broken")), ("Improvements", cmp.of("improved")), ("Now running", cmp.of("fixed"))]  # fmt: skip
    for title, cells in sections:
        if cells or title == "Regressions":
            lines += ["", f"#### {title} ({len(cells)})", ""]
            lines += _md_table(cmp, cells) if cells else ["No cell is slower than the threshold with significance."
                                                          if cmp.metric == "latency" else "No cell above the threshold."]  # fmt: skip
    shown = ("regressed", "underpowered", "broken", "improved", "fixed")
    rest = [c for c in cmp.cells if c.outcome not in shown]
    if rest:
        kinds = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in cmp.counts().items() if o not in shown)
        lines += ["", f"<details><summary>Other cells ({len(rest)}: {kinds})</summary>", ""]
        lines += _md_table(cmp, rest)
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def format_json(cmp: Comparison) -> str:
    """The whole comparison as JSON (non-finite numbers as null)."""
    return json.dumps(cmp.to_json(), indent=2, allow_nan=False) + "\n"


# ---- baselines --------------------------------------------------------------------------


def save_baseline(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the cells of one run as a baseline JSON at ``path`` (parents created, overwritten)."""
    p = Path(run_dir)
    if p.is_file() and p.name != ROWS:
        raise CompareError(f"RUN_DIR: {p} is a file; pass the run directory (holding {ROWS}) to save as a baseline")
    side = load_side(p, "RUN_DIR")
    if side.kind != "run":
        raise CompareError(f"RUN_DIR: {p} is already a baseline; pass a run directory")
    if not side.cells:
        raise CompareError(f"RUN_DIR: {side.source} has no rows yet; run the suite first (`archbench run SUITE`)")
    data = {
        "schema": BASELINE_SCHEMA,
        "schema_version": BASELINE_VERSION,
        "created_at": now_iso(),
        "device": side.device_name,
        "env": side.env,
        "source_run": {"run_id": side.run_id, "suite": side.suite, "path": side.source},
        "cells": {k: c.to_json() for k, c in sorted(side.cells.items())},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
