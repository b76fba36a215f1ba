"""Answers from the rows: crossover lengths and scaling exponents.

* Crossover: for each arch/backend, the sequence length from which it is faster (or
  leaner) than the reference architecture (default ``softmax_attention``, its best backend
  at each length), interpolated in log-log space between the measured lengths where the
  ratio crosses 1; "always" when it wins at every measured length, "never in range" when
  it never does.
* Scaling exponent: the slope of log(median latency) vs log(seq_len) fitted over the top
  half of the measured range (at least the last two points), beside the analytic
  expectation the row carries (``expected_exponent``: 2 for quadratic attention, 1 for
  linear-time mixers).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from archbench.report.figures import groups, prepare, text

REFERENCE = "softmax_attention"
TRAINING_MODES = ("fwd", "fwd_bwd", "prefill")  # where latency grows with T as the complexity claims


def _curves(ok: pd.DataFrame, column: str) -> dict[tuple[str, str], pd.Series]:
    out = {}
    for (arch, backend), rows in ok.groupby(["arch", "backend"], sort=True):
        s = rows.dropna(subset=[column]).groupby("seq_len")[column].min()
        s = s[s > 0]
        if len(s):
            out[(text(arch), text(backend))] = s.sort_index()
    return out


def crossover_length(curve: pd.Series, reference: pd.Series) -> str | float:
    """The first seq_len at which ``curve`` drops below ``reference`` (log-log interpolation)."""
    common = curve.index.intersection(reference.index)
    if len(common) == 0:
        return "no common lengths"
    ratio = np.log(curve[common].to_numpy() / reference[common].to_numpy())
    lens = np.log(np.asarray(common, dtype=float))
    if ratio[0] < 0:
        return "always"
    for i in range(1, len(ratio)):
        if ratio[i] < 0 <= ratio[i - 1]:
            frac = ratio[i - 1] / (ratio[i - 1] - ratio[i])
            return float(math.exp(lens[i - 1] + frac * (lens[i] - lens[i - 1])))
    return "never in range"


def fitted_exponent(curve: pd.Series) -> float | None:
    if len(curve) < 2:
        return None
    top = curve.iloc[-max(2, (len(curve) + 1) // 2):]
    slope, _ = np.polyfit(np.log(top.index.to_numpy(dtype=float)), np.log(top.to_numpy(dtype=float)), 1)
    return float(slope)


def answers(df: pd.DataFrame | None, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (group, arch, backend): crossover vs the reference in latency and memory,
    the fitted vs expected scaling exponent of latency, and (fwd_bwd rows that count them) the
    fitted exponent of the activations saved for backward (2 for attention's T x T scores)."""
    data = prepare(df)
    out = []
    for g in groups(data):
        ok = g.ok
        if ok.empty:
            continue
        lat = _curves(ok, "time_median_s")
        mem = _curves(ok, "peak_mem_bytes") if "peak_mem_bytes" in ok else {}
        act = _curves(ok, "activation_bytes") if "activation_bytes" in ok else {}
        ref_lat = _best(lat, reference)
        ref_mem = _best(mem, reference)
        expected = {}
        if "expected_exponent" in ok:
            for (a, b), rows in ok.groupby(["arch", "backend"]):
                vals = pd.to_numeric(rows["expected_exponent"], errors="coerce").dropna()
                expected[(text(a), text(b))] = float(vals.iloc[0]) if len(vals) else None
        for key, curve in lat.items():
            is_ref = key[0] == reference
            out.append({
                "group": g.label,
                "mode": text(g.rows["mode"].iloc[0]),
                "arch": key[0],
                "backend": key[1],
                "faster_from": "reference" if is_ref else (crossover_length(curve, ref_lat) if ref_lat is not None else "no reference"),
                "leaner_from": "reference" if is_ref else (
                    crossover_length(mem[key], ref_mem) if key in mem and ref_mem is not None else "—"),
                "fitted_exponent": fitted_exponent(curve),
                "expected_exponent": expected.get(key),
                "activation_exponent": fitted_exponent(act[key]) if key in act else None,
                "lengths": f"{int(curve.index.min())}..{int(curve.index.max())}",
            })  # fmt: skip
    return pd.DataFrame(out)


def _best(curves: dict, arch: str) -> pd.Series | None:
    """The reference's best backend at each length."""
    mine = [c for (a, _), c in curves.items() if a == arch]
    if not mine:
        return None
    return pd.concat(mine, axis=1).min(axis=1).sort_index()


def fmt_length(v) -> str:
    return f"{v:,.0f}" if isinstance(v, float) else text(v)


def ratio_table(group_ok: pd.DataFrame, reference: str = REFERENCE, column: str = "time_median_s") -> pd.DataFrame:
    """LRA-style: rows arch/backend, columns seq_len, values (median, median / reference best)."""
    curves = _curves(group_ok, column)
    ref = _best(curves, reference)
    cells = {}
    for (arch, backend), curve in curves.items():
        row = {}
        for t, v in curve.items():
            r = ref.get(t) if ref is not None else None
            row[int(t)] = (float(v), float(v / r) if r else None)
        cells[f"{arch}/{backend}"] = row
    table = pd.DataFrame.from_dict(cells, orient="index")
    return table.reindex(sorted(table.columns), axis=1) if len(table) else table


def survey(df: pd.DataFrame | None) -> pd.DataFrame:
    """The taxonomy as measured: one row per architecture, its family, paper and claimed
    complexity (from the rows), beside this run's evidence: the largest fitted latency
    exponent over its fwd / fwd_bwd / prefill curves (decode is per token, a different
    claim), and the decode state at the longest context measured."""
    data = prepare(df)
    if data.empty or "family" not in data:
        return pd.DataFrame()
    ok = data[data["status"] == "ok"]
    fits = answers(data)
    out = []
    for arch, rows in data.groupby("arch", sort=True):
        first = rows.iloc[0]
        mine = fits[(fits["arch"] == arch) & fits["mode"].isin(TRAINING_MODES)] if len(fits) else fits
        fitted = [f for f in mine.get("fitted_exponent", []) if f is not None and f == f]
        state = ok[(ok["arch"] == arch) & (pd.to_numeric(ok.get("state_bytes"), errors="coerce") > 0)]
        state_at = state.sort_values("seq_len").iloc[-1] if len(state) else None
        out.append({
            "family": text(first.get("family")),
            "arch": text(arch),
            "paper": text(first.get("paper")),
            "claimed": " / ".join(x for x in (text(first.get("train_complexity")), text(first.get("decode_complexity"))) if x),
            "expected_exponent": first.get("expected_exponent"),
            "fitted_exponent": max(fitted) if fitted else None,
            "state_bytes": None if state_at is None else float(state_at["state_bytes"]),
            "state_at_T": None if state_at is None else int(state_at["seq_len"]),
        })  # fmt: skip
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).sort_values(["family", "arch"]).reset_index(drop=True)
