"""Answers from the rows: crossover lengths and scaling exponents, with how sure they are.

Everything here works on the curves of one comparable group (``groups.py``).

* Crossover: for each arch/backend, the sequence length from which it is faster (or
  leaner) than the reference architecture (default ``softmax_attention``, its best backend
  at each length), interpolated in log-log space between the measured lengths where the
  ratio r(T) = t(T) / t_ref(T) crosses 1:

      log T* = log T_i + (log T_{i+1} - log T_i) * log r_i / (log r_i - log r_{i+1}).

  It needs two or more lengths both measured; "always" when it wins at every one of them,
  "never in range" when it never does. With one common length there is no crossover to
  speak of, only a ratio ("one length measured: 1.9x faster at T=16384").
* Scaling exponent: the least-squares slope p of log t = p log T + c over the top half of
  the measured lengths (at least the last two, three when there are three or more), with
  its 95% interval p +- t_{0.975, n-2} * s_p, where s_p^2 = sum(resid^2) / (n - 2) /
  sum((log T - mean log T)^2); with two points the slope has no interval.
* Expected exponent per mode: for fwd / fwd_bwd / prefill the analytic training exponent the
  row carries (``expected_exponent``: 2 for quadratic attention, 1 for linear-time mixers);
  for decode (time per generated token after T tokens of context) the exponent of the
  context length in the per-token decode complexity: 1 for attention with a full KV cache
  (O(T d) per token), 0 for recurrent and windowed mixers (O(1), O(W)).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from archbench.report.values import text

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


def crossover(curve: pd.Series, reference: pd.Series, better: str = "faster") -> dict:
    """The crossover of ``curve`` below ``reference`` as an object: ``value`` (a length, or None),
    ``verdict`` (text), ``lengths`` (the common lengths it rests on), ``single_length``."""
    common = sorted(curve.index.intersection(reference.index))
    out = {"value": None, "verdict": "", "lengths": [int(t) for t in common], "single_length": len(common) == 1}
    if not common:
        out["verdict"] = "no common lengths"
        return out
    ratio = curve[common].to_numpy(dtype=float) / reference[common].to_numpy(dtype=float)
    if len(common) == 1:
        r, t = float(ratio[0]), int(common[0])
        worse = {"faster": "slower", "leaner": "heavier"}.get(better, "worse")
        word = f"{1 / r:.3g}x {better}" if r < 1 else (f"{r:.3g}x {worse}" if r > 1 else "level")
        out["verdict"] = f"one length measured: {word} at T={t}"
        out["ratio"] = r
        return out
    lr = np.log(ratio)
    lens = np.log(np.asarray(common, dtype=float))
    if (lr < 0).all():
        out["verdict"] = "always"
        return out
    if (lr >= 0).all():
        out["verdict"] = "never in range"
        return out
    for i in range(1, len(lr)):
        if (lr[i] < 0) != (lr[i - 1] < 0):
            frac = lr[i - 1] / (lr[i - 1] - lr[i])
            out["value"] = float(math.exp(lens[i - 1] + frac * (lens[i] - lens[i - 1])))
            out["verdict"] = f"from T={out['value']:,.0f}" if lr[i] < 0 else f"only below T={out['value']:,.0f}"
            if lr[i] >= 0:  # better at short lengths only: not a crossover to a win
                out["value"] = None
            return out
    return out


def crossover_length(curve: pd.Series, reference: pd.Series) -> str | float:
    """The first seq_len at which ``curve`` drops below ``reference`` (a float), else the verdict."""
    c = crossover(curve, reference)
    return c["value"] if c["value"] is not None else c["verdict"]


# two-sided 97.5% quantiles of Student's t, by degrees of freedom (beyond 30: the normal's)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t975(dof: int) -> float:
    return _T975[dof - 1] if 1 <= dof <= len(_T975) else 1.96


def exponent_fit(curve: pd.Series) -> dict:
    """The scaling exponent over the top of the range: ``value``, ``ci95`` ([lo, hi] or None),
    ``n_points`` and ``lengths``; value None with fewer than two lengths."""
    n_all = len(curve)
    if n_all < 2:
        return {"value": None, "ci95": None, "n_points": n_all, "lengths": [int(t) for t in curve.index]}
    n = max(min(3, n_all), (n_all + 1) // 2)
    top = curve.iloc[-n:]
    x = np.log(top.index.to_numpy(dtype=float))
    y = np.log(top.to_numpy(dtype=float))
    slope, icpt = np.polyfit(x, y, 1)
    ci = None
    if n > 2:
        resid = y - (slope * x + icpt)
        sxx = float(((x - x.mean()) ** 2).sum())
        se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx) if sxx > 0 else float("nan")
        half = t975(n - 2) * se
        ci = [float(slope - half), float(slope + half)] if math.isfinite(half) else None
    return {"value": float(slope), "ci95": ci, "n_points": int(n), "lengths": [int(t) for t in top.index]}


def fitted_exponent(curve: pd.Series) -> float | None:
    return exponent_fit(curve)["value"]


def decode_exponent(decode_complexity: str | None) -> float | None:
    """The exponent of the context length T (or S) in a per-token decode complexity such as
    ``O(T d) per token`` (1) or ``O(d N) per token`` (0); None when the text is missing."""
    if not decode_complexity:
        return None
    claim = decode_complexity.split("per token")[0]
    return 1.0 if re.search(r"(?<![A-Za-z_])[TS](?![A-Za-z_])", claim) else 0.0


def expected_exponent(mode: str, training: float | None, decode_complexity: str | None) -> float | None:
    """What the analytic complexity predicts for a curve of ``mode`` (see the module docstring)."""
    if mode == "decode":
        return decode_exponent(decode_complexity)
    if mode in TRAINING_MODES:
        return training
    return None


def _best(curves: dict, arch: str) -> pd.Series | None:
    """The reference's best backend at each length."""
    mine = [c for (a, _), c in curves.items() if a == arch]
    if not mine:
        return None
    return pd.concat(mine, axis=1).min(axis=1).sort_index()


def first_value(rows: pd.DataFrame, col: str):
    """The first non-missing value of ``col`` in ``rows`` (None when every row lacks it)."""
    if col not in rows:
        return None
    vals = [v for v in rows[col] if text(v)]
    return vals[0] if vals else None


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

