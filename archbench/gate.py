"""The regression gate's decision rule and verdict vocabulary, shared by every speed check.

``archbench compare``, ``archbench ab`` and the CPU check in ``.ci/run``
(``benchmarks/regression.py``) all judge a pair of measurements with the functions here and
answer in the same words, so a verdict means the same thing wherever it is printed.

**Effect and threshold.** The effect is a ratio ``r`` of HEAD to BASE (of medians, or the
median of per-round ratios). A change worth failing a build for is ``r > threshold``
(*regressed*) or ``r < 1 / threshold`` (*improved*); inside that band the cell is
*unchanged* however small its p-value. The threshold is also the guard against what the test
cannot see: drift between the two measurements that their samples do not contain.

**Significance.** Beyond the threshold, the change must also be statistically clear at
``alpha``; if it is not, the cell is *insignificant* and does not fail. Two tests, by how the
samples were taken:

* *unpaired* (two runs, each with its per-call samples): the two-sided Mann-Whitney U test on
  the samples, or the distribution-free 99% intervals of the two medians not overlapping
  (asv's rule for ``asv compare``: Mann-Whitney at ``p < 0.002``, a median interval check where
  samples are few). The samples of one run share that run's conditions, so they measure call
  noise only: the threshold, not the test, must cover run-to-run drift.
* *paired* (``archbench ab``: both versions measured in the same rounds, A B / B A): the exact
  Wilcoxon signed-rank test on the per-round log ratios ``log(head_i / base_i)``, and the effect
  is the median of the per-round ratios. A round is the unit, as a repetition is in Google
  benchmark's ``compare.py`` U test and an attempt in Chromium's Pinpoint: drift that spans a
  round hits both sides of it, and a single disturbed round moves one difference of many.

**Underpowered.** A rank test has a floor: with ``n`` samples a side the Mann-Whitney p-value
cannot go below its value at complete separation, and with ``n`` rounds the signed-rank
p-value cannot go below ``2 / 2^n``. When that floor is not below ``alpha`` (and, unpaired, the
median intervals are unbounded), no difference however large could be significant, so the
cell is *underpowered*, never *unchanged*: the note gives the sample size it would need (Pinpoint
answers *unknown* and asks for more attempts in the same place). A gate fails on an
underpowered cell unless told to allow it.

**Run-to-run noise.** Two independent runs differ by more than their samples show: a cell's
per-call samples share their run's clocks, memory placement and neighbours, so the unpaired test
is optimistic about a difference between runs. With enough cells (``NOISE_MIN_CELLS``) the pair
of runs measures that noise itself: most cells are unchanged, so the spread of the cells' log
ratios about their median (1.4826 x the median absolute deviation, robust to the few cells that
did change) is the run-to-run noise of one cell. A cell's change counts only beyond the *noise
floor* ``exp(z * spread)`` (``z`` the two-sided normal quantile of ``alpha``). Where that floor
is above the threshold, a change of the threshold's size cannot be told from noise by this pair
of runs: cells beyond the threshold but inside the floor are *underpowered*, with the floor in
their note (interleave the versions with ``archbench ab`` instead). Paired rounds need no floor:
drift that spans a round falls on both sides of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from archbench.measure.stats import (
    bootstrap_ratio_ci,
    mann_whitney_min_p,
    mann_whitney_p,
    median_ci,
    min_n_mann_whitney,
    min_n_signed_rank,
    signed_rank_min_p,
    signed_rank_p,
)

#: Verdicts on a pair of measurements, most serious first.
REGRESSED, IMPROVED, UNDERPOWERED, INSIGNIFICANT, UNCHANGED = (
    "regressed", "improved", "underpowered", "insignificant", "unchanged",
)  # fmt: skip
VERDICTS = (REGRESSED, IMPROVED, UNDERPOWERED, INSIGNIFICANT, UNCHANGED)

#: Exit codes of every gate: 0 pass; 1 a regression; 2 bad input; 3 some cell underpowered
#: (and none regressed), unless underpowered cells are allowed.
EXIT_PASS, EXIT_REGRESSED, EXIT_BAD_INPUT, EXIT_UNDERPOWERED = 0, 1, 2, 3


@dataclass
class Judgement:
    """One pair of measurements judged: the verdict, the effect and what it rests on."""

    verdict: str
    ratio: float
    p_value: float | None = None
    ratio_ci: tuple[float, float] | None = None
    base_ci: tuple[float, float] | None = None
    head_ci: tuple[float, float] | None = None
    n_base: int = 0
    n_head: int = 0
    test: str = "mann-whitney"  # or "signed-rank"
    note: str | None = None


#: Fewest judged cells from which a pair of runs estimates its own run-to-run noise.
NOISE_MIN_CELLS = 8


@dataclass(frozen=True)
class RunNoise:
    """The run-to-run noise of a pair of runs, from its cells' ratios."""

    n_cells: int
    center: float  # the median cell ratio (a common drift of the whole run, or of the code)
    spread: float  # robust standard deviation of the cells' log ratios about their median
    floor: float  # a cell's ratio must exceed this (or fall below its inverse) to count

    def describe(self) -> str:
        return (f"run-to-run noise from {self.n_cells} cells: ratios scatter by {math.exp(self.spread) - 1:.1%} (robust sd) "
                f"about their median x{self.center:.3f}; a cell counts beyond x{self.floor:.3f}")  # fmt: skip


def run_noise(ratios: Sequence[float], alpha: float) -> RunNoise | None:
    """The noise floor of a pair of independent runs from its cells' ratios (None with fewer
    than ``NOISE_MIN_CELLS`` finite positive ratios)."""
    from statistics import NormalDist

    logs = np.log([r for r in ratios if r is not None and math.isfinite(r) and r > 0])
    if len(logs) < NOISE_MIN_CELLS:
        return None
    center = float(np.median(logs))
    spread = 1.4826 * float(np.median(np.abs(logs - center)))
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return RunNoise(len(logs), math.exp(center), spread, math.exp(z * spread))


def within_noise(j: Judgement, noise: RunNoise | None, threshold: float) -> Judgement:
    """``j`` (an unpaired verdict) held against the pair's run-to-run noise: a change that the
    noise floor covers is *underpowered* when the floor is above the threshold (this pair cannot
    tell a change of the threshold's size from noise), else *insignificant*."""
    if noise is None or j.verdict not in (REGRESSED, IMPROVED) or not math.isfinite(j.ratio) or j.ratio <= 0:
        return j
    if abs(math.log(j.ratio)) > math.log(noise.floor):
        return j
    j.verdict = UNDERPOWERED if noise.floor > threshold else INSIGNIFICANT
    j.note = (f"x{j.ratio:.3f} is inside this pair's run-to-run noise (floor x{noise.floor:.3f}"
              + (f", above the threshold x{threshold:g}: use archbench ab" if noise.floor > threshold else "") + ")")
    return j


def decide(ratio: float, threshold: float, significant: bool) -> str:
    """The verdict from the effect and the test: beyond the threshold and significant counts."""
    if ratio > threshold or ratio < 1.0 / threshold:
        if significant:
            return REGRESSED if ratio > threshold else IMPROVED
        return INSIGNIFICANT
    return UNCHANGED


def check_threshold_alpha(threshold: float, alpha: float) -> None:
    """Raise ``ValueError`` (one line, says what to pass) for a threshold or alpha out of range."""
    if not (threshold > 1.0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a ratio above 1 (e.g. 1.10 for 10%), got {threshold}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.002), got {alpha}")


def _ratio(base: float, head: float) -> float:
    if base > 0:
        return head / base
    return 1.0 if head == base else math.inf


def unpaired_powered(n_base: int, n_head: int, alpha: float) -> bool:
    """Whether samples of these sizes can be significant at ``alpha`` under ``judge_unpaired``."""
    if n_base < 1 or n_head < 1:
        return False
    bounded = math.isfinite(median_ci(np.arange(n_base, dtype=float))[0]) and math.isfinite(
        median_ci(np.arange(n_head, dtype=float))[0]
    )
    return mann_whitney_min_p(n_base, n_head) < alpha or bounded


def judge_unpaired(base: Sequence[float], head: Sequence[float], threshold: float, alpha: float) -> Judgement:
    """Two independent sets of samples: ratio of medians, Mann-Whitney or disjoint median intervals."""
    check_threshold_alpha(threshold, alpha)
    b, h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if len(b) == 0 or len(h) == 0:
        raise ValueError("judge_unpaired needs at least one sample a side")
    j = Judgement(UNCHANGED, _ratio(float(np.median(b)), float(np.median(h))), n_base=len(b), n_head=len(h))
    j.p_value = mann_whitney_p(b, h)
    j.base_ci, j.head_ci = median_ci(b), median_ci(h)
    if len(b) >= 2 and len(h) >= 2:
        j.ratio_ci = bootstrap_ratio_ci(b, h)
    if not unpaired_powered(len(b), len(h), alpha):
        need = min_n_mann_whitney(alpha)
        j.verdict = UNDERPOWERED
        j.note = (f"{len(b)} vs {len(h)} samples cannot reach p < {alpha:g} (floor "
                  f"{mann_whitney_min_p(len(b), len(h)):.2g}); needs >= {need} per side")  # fmt: skip
        return j
    apart = j.head_ci[0] > j.base_ci[1] or j.base_ci[0] > j.head_ci[1]
    j.verdict = decide(j.ratio, threshold, j.p_value < alpha or apart)
    return j


def judge_paired(
    base_rounds: Sequence[float], head_rounds: Sequence[float], threshold: float, alpha: float
) -> Judgement:
    """Per-round medians of the two sides, round i of each measured together: the median of the
    per-round ratios, the exact signed-rank test on their logarithms."""
    check_threshold_alpha(threshold, alpha)
    b, h = np.asarray(base_rounds, dtype=float), np.asarray(head_rounds, dtype=float)
    if len(b) != len(h) or len(b) == 0:
        raise ValueError(f"paired rounds need the same number of rounds a side, got {len(b)} and {len(h)}")
    keep = np.isfinite(b) & np.isfinite(h) & (b > 0) & (h > 0)
    b, h = b[keep], h[keep]
    if len(b) == 0:
        raise ValueError("paired rounds need at least one round with a positive median on both sides")
    ratios = h / b
    j = Judgement(UNCHANGED, float(np.median(ratios)), n_base=len(b), n_head=len(h), test="signed-rank")
    logs = np.log(ratios)
    j.p_value = signed_rank_p(logs)
    lo, hi = median_ci(ratios)
    j.ratio_ci = (lo, hi) if math.isfinite(lo) else None
    nonzero = int(np.count_nonzero(logs))
    if signed_rank_min_p(len(logs)) >= alpha:
        j.verdict = UNDERPOWERED
        j.note = (f"{len(logs)} rounds cannot reach p < {alpha:g} (floor {signed_rank_min_p(len(logs)):.2g}); "
                  f"needs >= {min_n_signed_rank(alpha)} rounds")  # fmt: skip
        return j
    j.verdict = decide(j.ratio, threshold, j.p_value < alpha)
    slower = int((logs > 0).sum())
    j.note = f"{slower} of {nonzero} rounds slower" if nonzero else "every round equal"
    return j


def gate_exit_code(verdicts: Sequence[str], allow_underpowered: bool = False) -> int:
    """The exit code of a gate from its cells' verdicts (``EXIT_*``)."""
    if REGRESSED in verdicts:
        return EXIT_REGRESSED
    if UNDERPOWERED in verdicts and not allow_underpowered:
        return EXIT_UNDERPOWERED
    return EXIT_PASS
