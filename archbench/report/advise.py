"""The README's question asked directly: at this length and batch, which architecture?

``advise(df, seq_len, batch, mode)`` ranks every arch/backend of each comparable group
(``groups.py``) that measured ``mode`` at ``batch`` by its latency at ``seq_len``:

* measured, when a row at exactly that length exists;
* interpolated, between the two nearest measured lengths, on the straight line in log-log
  space (the same law as the scaling exponent): log t = log t_i + (log t_{i+1} - log t_i) *
  (log T - log T_i) / (log T_{i+1} - log T_i);
* extrapolated, beyond the measured range, along the slope of the last two lengths on that
  side (or, with one length, the exponent the complexity predicts for the mode), and marked
  so: nothing measured backs it.

Peak memory is estimated the same way; an arch/backend that ran out of memory at or below
``seq_len`` is left out, as is one over ``--memory-gib``. Accuracy is the best task score the
rows hold for the arch (task cells); ``--min-accuracy`` leaves out archs below it or without
one. Every entry names the rows it rests on and whether they were noisy or measured on a
reference backend. Groups are never merged: an H100 and an H200 get separate rankings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from archbench.report.analysis import expected_exponent
from archbench.report.rows import noisy_mask, prepare, reference_mask
from archbench.report.values import text
from archbench.report.groups import comparable_groups


class AdviseError(ValueError):
    """Nothing comparable to answer from; the message says what the runs do hold."""


def _estimate(xs: np.ndarray, ys: np.ndarray, t: float, slope_if_single: float | None) -> tuple[float | None, str, list[int]]:
    """(value, how, indices used) at length ``t`` from sorted (xs, ys) in log-log space."""
    if t in xs:
        i = int(np.where(xs == t)[0][0])
        return float(ys[i]), "measured", [i]
    lx, ly, lt = np.log(xs), np.log(ys), math.log(t)
    if len(xs) == 1:
        if slope_if_single is None:
            return None, "extrapolated", [0]
        return float(math.exp(ly[0] + slope_if_single * (lt - lx[0]))), "extrapolated", [0]
    if xs[0] < t < xs[-1]:
        j = int(np.searchsorted(xs, t))
        i = j - 1
        how = "interpolated"
    else:
        i, j = (0, 1) if t < xs[0] else (len(xs) - 2, len(xs) - 1)
        how = "extrapolated"
    slope = (ly[j] - ly[i]) / (lx[j] - lx[i])
    return float(math.exp(ly[i] + slope * (lt - lx[i]))), how, [i, j]


def _accuracy(data: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """Best task score per arch, with the task it was measured on."""
    if "task_score" not in data or "mode" not in data:
        return {}
    tasks = data[(data["mode"] == "task") & (data["status"] == "ok")]
    out: dict[str, tuple[float, str]] = {}
    for arch, score, task in zip(tasks["arch"], pd.to_numeric(tasks["task_score"], errors="coerce"),
                                 tasks["task"] if "task" in tasks else [""] * len(tasks)):  # fmt: skip
        if score == score and (text(arch) not in out or score > out[text(arch)][0]):
            out[text(arch)] = (float(score), text(task))
    return out


def advise(df: pd.DataFrame | None, seq_len: int, batch: int, mode: str = "prefill", memory_gib: float | None = None,
           min_accuracy: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Per comparable group: the ranked entries and what was left out (see the module docstring).
    Raises AdviseError when no group measured ``mode`` at ``batch``."""
    data = prepare(df)
    candidates = [g for g in comparable_groups(data) if g.mode == mode and g.batch == text(float(batch))]
    if not candidates:
        held = sorted({(g.mode, g.batch) for g in comparable_groups(data)})
        have = ", ".join(f"{m} B={b}" for m, b in held) or "no successful timed rows"
        raise AdviseError(f"no rows measured {mode} at batch {batch} in these runs (they hold: {have}); "
                          "pick one of those or run that point")
    accuracy = _accuracy(data)
    cap = memory_gib * 2**30 if memory_gib is not None else None
    out = []
    for g in candidates:
        ok = g.ok
        failed = g.failed
        entries, excluded = [], []
        for (arch, backend), rows in ok.groupby([ok["arch"].map(text), ok["backend"].map(text)], sort=True):
            rows = rows.sort_values("time_median_s").groupby("seq_len", sort=True).head(1).sort_values("seq_len")
            xs = rows["seq_len"].to_numpy(dtype=float)
            oom = failed[(failed["arch"].map(text) == arch) & (failed["backend"].map(text) == backend)
                         & (failed["status"] == "oom") & (failed["seq_len"] <= seq_len)]  # fmt: skip
            if len(oom):
                excluded.append({"arch": arch, "backend": backend,
                                 "reason": f"out of memory at T={int(oom['seq_len'].min())}"})
                continue
            training = (pd.to_numeric(rows["expected_exponent"], errors="coerce").dropna() if "expected_exponent" in rows
                        else pd.Series(dtype=float))
            claim = [text(v) for v in rows["decode_complexity"] if text(v)] if "decode_complexity" in rows else []
            slope = expected_exponent(mode, float(training.iloc[0]) if len(training) else None, claim[0] if claim else None)
            t_est, how, used = _estimate(xs, rows["time_median_s"].to_numpy(dtype=float), float(seq_len), slope)
            if t_est is None:
                excluded.append({"arch": arch, "backend": backend,
                                 "reason": f"one length measured (T={int(xs[0])}) and no exponent to extrapolate with"})
                continue
            mem = pd.to_numeric(rows["peak_mem_bytes"], errors="coerce").to_numpy(dtype=float)
            has_mem = np.isfinite(mem) & (mem > 0)
            m_est = None
            if has_mem.any():
                m_est, _, _ = _estimate(xs[has_mem], mem[has_mem], float(seq_len), 1.0 if slope is None else max(slope, 0.0))
            if cap is not None and m_est is not None and m_est > cap:
                excluded.append({"arch": arch, "backend": backend,
                                 "reason": f"peak memory {m_est / 2**30:.3g} GiB over {memory_gib:g} GiB"})
                continue
            acc = accuracy.get(arch)
            if min_accuracy is not None and (acc is None or acc[0] < min_accuracy):
                why = "no accuracy measured" if acc is None else f"accuracy {acc[0]:.3g} below {min_accuracy:g}"
                excluded.append({"arch": arch, "backend": backend, "reason": why})
                continue
            basis = rows.iloc[used]
            entries.append({
                "arch": arch, "backend": backend, "latency_s": t_est, "how": how,
                "peak_mem_bytes": m_est, "accuracy": acc[0] if acc else None, "accuracy_task": acc[1] if acc else "",
                "rows": [{"key": text(r["key"]), "seq_len": int(r["seq_len"]), "run_id": text(r["run_id"])}
                         for _, r in basis.iterrows()],
                "flags": {"extrapolated": how == "extrapolated", "noisy": bool(noisy_mask(basis).any()),
                          "reference": bool(reference_mask(basis).any())},
                "measured_lengths": [int(x) for x in xs],
            })  # fmt: skip
        entries.sort(key=lambda e: (e["flags"]["extrapolated"], e["latency_s"]))
        for i, e in enumerate(entries, 1):
            e["rank"] = i
        out.append({"group": dict(g.fields), "group_label": g.label, "seq_len": seq_len, "entries": entries,
                    "excluded": excluded})  # fmt: skip
    if not any(r["entries"] for r in out):
        reasons = "; ".join(f"{e['arch']}/{e['backend']}: {e['reason']}" for r in out for e in r["excluded"])
        raise AdviseError(f"nothing comparable answers {mode} at T={seq_len}, batch {batch} ({reasons or 'no rows'})")
    return out


def format_advice(results: list[dict[str, Any]]) -> str:
    """The ranking as plain text, one block per comparable group."""
    lines = []
    for r in results:
        lines.append(f"{r['group_label']}, T={r['seq_len']:,}   ({', '.join(f'{k}={v}' for k, v in r['group'].items() if v)})")
        lines.append(f"  {'#':>2}  {'arch/backend':<40} {'latency':>12}  {'how':<12} {'peak mem':>10}  {'accuracy':>9}  rows  marks")
        for e in r["entries"]:
            lat = e["latency_s"] * 1e3
            mem = "—" if e["peak_mem_bytes"] is None else f"{e['peak_mem_bytes'] / 2**30:.3g} GiB"
            acc = "—" if e["accuracy"] is None else f"{e['accuracy']:.3f}"
            marks = ", ".join(n for n in ("extrapolated", "noisy", "reference") if e["flags"][n])
            name = f"{e['arch']}/{e['backend']}"
            lines.append(f"  {e['rank']:>2}  {name:<40} {lat:>9.4g} ms  {e['how']:<12} {mem:>10}  {acc:>9}  "
                         f"{len(e['rows']):>4}  {marks}")  # fmt: skip
        for x in r["excluded"]:
            lines.append(f"   -  {x['arch']}/{x['backend']}: left out, {x['reason']}")
        lines.append("")
    lines.append("latency: per call (decode: per call of decode_tokens steps). marks: extrapolated = beyond the "
                 "measured lengths; noisy = IQR/median > 10%; reference = a pure-PyTorch backend, not a fused kernel.")
    return "\n".join(lines)
