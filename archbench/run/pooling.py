"""Pool the repeated measurements of one cell into one row.

A cell measured in several rounds (``archbench run --rounds``, the A/B runs of ``archbench ab``)
has one row per round. The pooled row is the last ok round's row with its timing statistics
recomputed over the samples of every ok round, so its median rests on all of them; the
per-round medians stay in the row, so the spread between rounds (how much the machine drifted)
can be read beside the spread within them.
"""

from __future__ import annotations

from archbench.measure.timing import summarize


def pool_rows(rows: list[dict], prefix: str = "") -> dict:
    """One row from the rounds of a cell: the last ok row, its timing recomputed over every ok
    round's samples (``{prefix}rounds`` says how many, ``{prefix}round_medians_s`` lists each
    round's median); a cell never ok keeps its last row."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return dict(rows[-1], **{f"{prefix}rounds": len(rows)})
    out = dict(ok[-1])
    samples = [s for r in ok for s in (r.get("time_samples_s") or [])]
    if samples:
        out.update(summarize(samples).as_row())
        out["warmup_calls"] = sum(int(r.get("warmup_calls") or 0) for r in ok)
        tokens = out.get("tokens_per_s")
        if tokens and ok[-1].get("time_median_s"):
            out["tokens_per_s"] = tokens * ok[-1]["time_median_s"] / out["time_median_s"]
    out[f"{prefix}rounds"] = len(ok)
    out[f"{prefix}round_medians_s"] = [r.get("time_median_s") for r in ok]
    return out
