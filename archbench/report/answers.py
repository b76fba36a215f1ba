"""The report's answers as plain objects: what ``answers.json`` holds and the page renders.

``answers_document(df, runs)`` computes, once, everything the first screen and the Answers
section say: per comparable group (``groups.py``) and arch/backend, the crossover against the
reference architecture in latency and in peak memory, the scaling exponent with its 95%
interval and number of points beside what the complexity predicts for that mode, and flags
(noisy cells, a reference backend, a single common length); per mode and configuration a
decision matrix over the measured (T, B); banners for runs that stopped early or ran with
overrides; and a note where the report holds configurations that are never compared. The
HTML and the Markdown render these objects, and ``answers.json`` is the same objects as JSON,
so the page and the file cannot disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from archbench.report.analysis import REFERENCE, TRAINING_MODES, first_value, crossover, expected_exponent, exponent_fit
from archbench.report.rows import noisy_mask, prepare, reference_mask
from archbench.report.values import number, text
from archbench.report.groups import FIELD_NAMES, comparable_groups, config_frame, distinguishing

SCHEMA = "archbench.answers/1"


def _curves(ok: pd.DataFrame, column: str) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (arch, backend): the rows behind each length's best value, indexed by seq_len."""
    if column not in ok:
        return {}
    vals = pd.to_numeric(ok[column], errors="coerce")
    ok = ok.assign(_v=vals, _a=ok["arch"].map(text), _b=ok["backend"].map(text))
    ok = ok[ok["_v"] > 0]
    if ok.empty:
        return {}
    best = ok.loc[ok.groupby(["_a", "_b", "seq_len"], sort=True)["_v"].idxmin()]
    return {key: rows.set_index("seq_len") for key, rows in best.groupby(["_a", "_b"], sort=True)}


def _best_of(curves: dict, arch: str) -> pd.DataFrame | None:
    """The arch's best backend at each length (rows of the winning backend)."""
    mine = [c.assign(_backend=b) for (a, b), c in curves.items() if a == arch]
    if not mine:
        return None
    both = pd.concat(mine).reset_index()
    return both.sort_values("_v", kind="stable").groupby("seq_len").head(1).set_index("seq_len").sort_index()


def _flags(rows: pd.DataFrame) -> dict[str, Any]:
    noisy = noisy_mask(rows)
    ref = reference_mask(rows)
    return {
        "noisy": bool(noisy.any()),
        "noisy_lengths": sorted(int(t) for t in rows.index[noisy.to_numpy()]),
        "reference": bool(ref.any()),
    }


def answer_objects(data: pd.DataFrame, reference: str = REFERENCE) -> list[dict]:
    """One answer per (comparable group, arch, backend) with a latency curve (``data`` prepared)."""
    out = []
    for g in comparable_groups(data):
        ok = g.ok
        lat = _curves(ok, "time_median_s")
        mem = _curves(ok, "peak_mem_bytes")
        act = _curves(ok, "activation_bytes")
        ref_lat, ref_mem = _best_of(lat, reference), _best_of(mem, reference)
        for (arch, backend), rows in lat.items():
            curve = rows["_v"]
            is_ref = arch == reference
            flags = _flags(rows)
            if is_ref:
                faster = {"value": None, "verdict": "reference", "lengths": [int(t) for t in curve.index],
                          "single_length": len(curve) == 1}  # fmt: skip
            elif ref_lat is None:
                faster = {"value": None, "verdict": "no reference in this group", "lengths": [], "single_length": False}
            else:
                faster = crossover(curve, ref_lat["_v"], "faster")
                common = ref_lat.loc[[t for t in faster["lengths"] if t in ref_lat.index]]
                rf = _flags(common) if len(common) else {"noisy": False, "reference": False}
                faster["reference_backend"] = text(common["_backend"].iloc[-1]) if len(common) else ""
                faster["against_noisy"] = rf["noisy"]
                faster["against_reference_backend"] = rf["reference"]
            if is_ref or (arch, backend) not in mem:
                leaner = {"value": None, "verdict": "reference" if is_ref else "no memory measured", "lengths": [],
                          "single_length": False}  # fmt: skip
            elif ref_mem is None:
                leaner = {"value": None, "verdict": "no reference in this group", "lengths": [], "single_length": False}
            else:
                leaner = crossover(mem[(arch, backend)]["_v"], ref_mem["_v"], "leaner")
            training = number(first_value(rows, "expected_exponent"))
            expect = expected_exponent(g.mode, training, text(first_value(rows, "decode_complexity")))
            out.append({
                "group": dict(g.fields),
                "group_label": g.label,
                "arch": arch,
                "backend": backend,
                "family": text(first_value(rows, "family")),
                "lengths": [int(t) for t in curve.index],
                "crossover": faster,
                "leaner": leaner,
                "exponent": exponent_fit(curve),
                "expected_exponent": expect,
                "activation_exponent": exponent_fit(act[(arch, backend)]["_v"]) if (arch, backend) in act else None,
                "flags": {
                    "noisy": flags["noisy"] or bool(faster.get("against_noisy")),
                    "noisy_lengths": flags["noisy_lengths"],
                    "reference": flags["reference"],
                    "against_reference_backend": bool(faster.get("against_reference_backend")),
                    "single_length": bool(faster.get("single_length")) or len(curve) == 1,
                },
            })  # fmt: skip
    return out


def _cell_pick(rows: pd.DataFrame, column: str) -> dict | None:
    vals = pd.to_numeric(rows[column], errors="coerce") if column in rows else None
    if vals is None or not (vals > 0).any():
        return None
    r = rows.loc[vals[vals > 0].idxmin()]
    one = rows.loc[[r.name]]
    return {"arch": text(r["arch"]), "backend": text(r["backend"]), column: float(vals[r.name]),
            "noisy": bool(noisy_mask(one).iloc[0]), "reference": bool(reference_mask(one).iloc[0])}  # fmt: skip


def decision_matrices(data: pd.DataFrame, reference: str = REFERENCE) -> list[dict]:
    """Per mode and configuration (every group field but batch): over the measured (T, B), the
    fastest arch/backend and its ratio to the reference's best backend, the leanest in peak
    memory, and how many comparable rows each cell rests on; per batch the OOM frontier (the
    longest T any arch fit, and the reference's, and the shortest T that ran out of memory)."""
    if data.empty:
        return []
    rows_all = data[data["seq_len"] > 0]
    rows_all = rows_all[rows_all["mode"].map(text) != "task"]
    if rows_all.empty:
        return []
    configs = config_frame(rows_all)
    rest = [n for n in FIELD_NAMES if n != "batch"]
    timed = (rows_all["status"] == "ok") & (rows_all["time_median_s"] > 0)
    labelled = ("mode",) + distinguishing(configs[timed], exclude=("mode", "batch"))
    out = []
    for key, idx in configs.groupby(rest, sort=False, dropna=False).groups.items():
        fields = dict(zip(rest, key))
        rows = rows_all.loc[idx]
        ok = rows[(rows["status"] == "ok") & (rows["time_median_s"] > 0)]
        if ok.empty:
            continue
        lens = sorted({int(t) for t in ok["seq_len"]})
        batches = sorted({int(b) for b in rows["batch"] if b == b})
        cells = []
        for b in batches:
            for t in lens:
                here = ok[(ok["batch"] == b) & (ok["seq_len"] == t)]
                if here.empty:
                    continue
                fastest = _cell_pick(here, "time_median_s")
                ref = here[here["arch"].map(text) == reference]
                ref_t = number(pd.to_numeric(ref["time_median_s"], errors="coerce").min()) if len(ref) else None
                if fastest is not None:
                    fastest["ratio_to_reference"] = ref_t / fastest["time_median_s"] if ref_t else None
                cells.append({"seq_len": t, "batch": b, "n_points": int(len(here)), "fastest": fastest,
                              "leanest": _cell_pick(here, "peak_mem_bytes")})  # fmt: skip
        frontier = []
        for b in batches:
            at_b = rows[rows["batch"] == b]
            fit = at_b[at_b["status"] == "ok"]
            oom = at_b[at_b["status"] == "oom"]
            ref_fit = fit[fit["arch"].map(text) == reference]
            frontier.append({
                "batch": b,
                "longest_fit": int(fit["seq_len"].max()) if len(fit) else None,
                "reference_longest_fit": int(ref_fit["seq_len"].max()) if len(ref_fit) else None,
                "first_oom": int(oom["seq_len"].min()) if len(oom) else None,
                "oom_archs": sorted({text(a) for a in oom["arch"]}),
            })  # fmt: skip
        label = ", ".join(f"{k}={fields.get(k) or '?'}" for k in labelled)
        out.append({"group": fields, "group_label": label, "mode": fields["mode"], "seq_lens": lens,
                    "batches": batches, "cells": cells, "frontier": frontier})  # fmt: skip
    mode_order = ("fwd", "fwd_bwd", "prefill", "decode")
    return sorted(out, key=lambda m: (mode_order.index(m["mode"]) if m["mode"] in mode_order else 9, m["group_label"]))


def run_banners(data: pd.DataFrame, runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One banner per run that is incomplete (status not ``complete``, or fewer rows than the
    cells it planned) or ran with ``--set`` overrides."""
    out = []
    for r in runs:
        if not isinstance(r, Mapping):
            continue
        status = text(r.get("status"))
        planned = number(r.get("n_cells"))
        overrides = r.get("overrides") or []
        if isinstance(overrides, str):
            overrides = [overrides]
        mine = data
        if text(r.get("run_dir")) and "run_dir" in data:
            mine = data[data["run_dir"].map(text) == text(r.get("run_dir"))]
        elif text(r.get("run_id")):
            mine = data[data["run_id"].map(text) == text(r.get("run_id"))]
        keyed = mine[mine["key"].map(bool)] if "key" in mine else mine
        measured = int(keyed["key"].nunique()) if "key" in keyed and len(keyed) else len(mine)
        incomplete = (status not in ("", "complete")) or (planned is not None and measured < planned)
        if not incomplete and not overrides:
            continue
        out.append({
            "run_id": text(r.get("run_id")), "run_dir": text(r.get("run_dir")), "status": status or "unknown",
            "cells_planned": int(planned) if planned is not None else None, "cells_measured": measured,
            "rows": int(len(mine)), "incomplete": bool(incomplete), "overrides": [str(o) for o in overrides],
        })  # fmt: skip
    return out


def config_note(data: pd.DataFrame) -> str:
    """One line naming what differs between the report's configurations, when more than mode
    and batch do; "" otherwise."""
    if data.empty:
        return ""
    rows = data[(data["status"] == "ok") & (data["time_median_s"] > 0) & (data["seq_len"] > 0)]
    if rows.empty:
        return ""
    configs = config_frame(rows)
    differ = distinguishing(configs, exclude=("mode", "batch"))
    if not differ:
        return ""
    parts = []
    for f in differ:
        vals = sorted({v or "?" for v in configs[f]})
        parts.append(f"{f} ({', '.join(vals)})")
    return ("This report holds rows that differ in " + "; ".join(parts) + ". Each configuration is answered on its "
            "own, labelled with these fields; no figure, ratio or crossover compares across them.")


def answers_document(df: pd.DataFrame | None, runs: Sequence[Mapping[str, Any]] | None = None,
                     reference: str = REFERENCE) -> dict:  # fmt: skip
    """Everything the first screen and the Answers section say, as JSON-ready objects."""
    data = prepare(df)
    runs = [r for r in (runs or []) if isinstance(r, Mapping)]
    skipped = text(df.attrs.get("skipped_note")) if df is not None else ""  # set by the loader (store)
    return {
        "schema": SCHEMA,
        "reference": reference,
        "skipped_lines": skipped,
        "note": config_note(data),
        "banners": run_banners(data, runs),
        "decisions": decision_matrices(data, reference),
        "answers": answer_objects(data, reference),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(_clean(doc), indent=1, default=_json_default, allow_nan=False) + "\n"


def write_answers(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``doc`` (``answers_document``) as JSON to ``path``; return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(doc), encoding="utf-8")
    return out


# ---- table views of the answer objects (the report's Answers and Survey sections) ----------------


def answers(df: pd.DataFrame | None, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (group, arch, backend): crossover vs the reference in latency and memory,
    the fitted vs expected scaling exponent of latency, and (fwd_bwd rows that count them) the
    fitted exponent of the activations saved for backward (2 for attention's T x T scores).
    A table view of ``answers.answer_objects``, which the report renders."""
    return answers_table(answer_objects(prepare(df), reference))


def answers_table(objects: list[dict]) -> pd.DataFrame:
    """The answer objects (``answers.answer_objects``) as one table row each."""
    out = []
    for a in objects:
        c, m = a["crossover"], a["leaner"]
        act = a["activation_exponent"]
        out.append({
            "group": a["group_label"], "mode": a["group"]["mode"], "arch": a["arch"], "backend": a["backend"],
            "faster_from": c["value"] if c["value"] is not None else c["verdict"],
            "leaner_from": m["value"] if m["value"] is not None else (m["verdict"] if m["lengths"] or m["verdict"] == "reference" else "—"),
            "fitted_exponent": a["exponent"]["value"], "exponent_ci95": a["exponent"]["ci95"],
            "n_points": a["exponent"]["n_points"], "expected_exponent": a["expected_exponent"],
            "activation_exponent": act["value"] if act else None,
            "lengths": f"{min(a['lengths'])}..{max(a['lengths'])}", "noisy": a["flags"]["noisy"],
            "reference_backend": a["flags"]["reference"],
        })  # fmt: skip
    return pd.DataFrame(out)


def survey(df: pd.DataFrame | None, fits: pd.DataFrame | None = None) -> pd.DataFrame:
    """The taxonomy as measured: one row per architecture, its family, paper and claimed
    complexity (from the rows), beside this run's evidence: the largest fitted latency
    exponent over its fwd / fwd_bwd / prefill curves (decode is per token, a different
    claim), and the decode state at the longest context measured."""
    data = prepare(df)
    if data.empty or "family" not in data:
        return pd.DataFrame()
    ok = data[data["status"] == "ok"]
    fits = answers(data) if fits is None else fits  # the report passes the table it already has
    out = []
    for arch, rows in data.groupby("arch", sort=True):
        first = {c: first_value(rows, c) for c in ("family", "paper", "train_complexity", "decode_complexity",
                                                    "expected_exponent")}  # a failed first row has none of them
        mine = fits[(fits["arch"] == arch) & fits["mode"].isin(TRAINING_MODES)] if len(fits) else fits
        fitted = [f for f in mine.get("fitted_exponent", []) if f is not None and f == f]
        state = ok[(ok["arch"] == arch) & (pd.to_numeric(ok.get("state_bytes"), errors="coerce") > 0)]
        state_at = state.sort_values("seq_len").iloc[-1] if len(state) else None
        exp = pd.to_numeric(pd.Series([first["expected_exponent"]]), errors="coerce").iloc[0]
        out.append({
            "family": text(first["family"]),
            "arch": text(arch),
            "paper": text(first["paper"]),
            "claimed": " / ".join(x for x in (text(first["train_complexity"]), text(first["decode_complexity"])) if x),
            "expected_exponent": None if exp != exp else float(exp),
            "fitted_exponent": max(fitted) if fitted else None,
            "state_bytes": None if state_at is None else float(state_at["state_bytes"]),
            "state_at_T": "" if state_at is None else text(state_at["seq_len"]),
        })  # fmt: skip
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).sort_values(["family", "arch"]).reset_index(drop=True)
