"""Distribution-free statistics for comparing two sets of timing samples.

``mann_whitney_p``: the two-sided Mann-Whitney U test (normal approximation with tie and
continuity corrections; no assumption on the shape of the timing distribution, which is
skewed and often bimodal). ``signed_rank_p``: the two-sided Wilcoxon signed-rank test of
paired differences, exact. ``median_ci``: the order-statistic interval of a median from the
Binomial(n, 1/2). ``bootstrap_ratio_ci``: a percentile-bootstrap interval of
median(head) / median(base), with a fixed seed so a comparison is reproducible.

A rank test has a floor: however far apart the samples, its p-value cannot go below the
value at complete separation (``mann_whitney_min_p``, ``signed_rank_min_p``), so a sample
that small can never be significant at a smaller alpha. ``min_n_mann_whitney`` and
``min_n_signed_rank`` give the smallest sizes whose floor is below a given alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONF = 0.99  # of the median and ratio intervals
N_BOOT = 2000
BOOT_SEED = 0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.r_[np.nonzero(new_group)[0], n]
    mean_rank = 0.5 * (starts[:-1] + 1 + starts[1:])  # ranks start+1 .. end, averaged
    ranks = np.empty(n)
    ranks[order] = mean_rank[group]
    return ranks


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie and continuity corrections)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan")
    both = np.concatenate([a, b])
    n = n1 + n2
    u1 = average_ranks(both)[:n1].sum() - n1 * (n1 + 1) / 2
    _, ties = np.unique(both, return_counts=True)
    tie_term = float((ties.astype(float) ** 3 - ties).sum()) / (n * (n - 1))
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:  # every value equal
        return 1.0
    z = max(abs(u1 - n1 * n2 / 2.0) - 0.5, 0.0) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2.0)))


def median_ci(samples: Sequence[float], conf: float = CONF) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics from the Binomial(n, 1/2).

    Unbounded (``-inf, inf``) when ``n`` is too small for the requested confidence.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return (-math.inf, math.inf)
    # log C(n, j) for j = 0..n, then P(Binomial(n, 1/2) <= j)
    log_comb = np.r_[0.0, np.cumsum(np.log(np.arange(n, 0, -1))) - np.cumsum(np.log(np.arange(1, n + 1)))]
    cdf = np.cumsum(np.exp(log_comb - n * math.log(2.0)))
    ok = np.nonzero(cdf <= (1.0 - conf) / 2.0)[0]  # j = l - 1 with P(#{x <= median} <= l - 1) small
    if len(ok) == 0:
        return (-math.inf, math.inf)
    lo = int(ok[-1])  # 0-based index of x_(l)
    return (float(x[lo]), float(x[n - 1 - lo]))


def _boot_medians(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    out = np.empty(n_boot)
    step = max(1, (1 << 21) // max(n, 1))  # bound the index matrix to ~2M entries
    for i in range(0, n_boot, step):
        m = min(step, n_boot - i)
        out[i : i + m] = np.median(x[rng.integers(0, n, size=(m, n))], axis=1)
    return out


def bootstrap_ratio_ci(
    base: Sequence[float], head: Sequence[float], conf: float = CONF, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(head) / median(base), resampling each side on its own."""
    b, h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if len(b) == 0 or len(h) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    mb, mh = _boot_medians(b, n_boot, rng), _boot_medians(h, n_boot, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mh / mb
    lo, hi = np.quantile(ratios, [(1.0 - conf) / 2.0, 1.0 - (1.0 - conf) / 2.0])
    return (float(lo), float(hi))


def mann_whitney_min_p(n1: int, n2: int) -> float:
    """The smallest p-value ``mann_whitney_p`` can return for samples of sizes ``n1`` and ``n2``:
    its value when every sample of one side is below every sample of the other."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return mann_whitney_p(np.arange(n1, dtype=float), np.arange(n1, n1 + n2, dtype=float))


def min_n_mann_whitney(alpha: float, limit: int = 10_000) -> int:
    """The smallest n such that n samples a side can give ``mann_whitney_p < alpha``."""
    n = 1
    while mann_whitney_min_p(n, n) >= alpha:
        n += 1
        if n > limit:
            raise ValueError(f"alpha {alpha} needs more than {limit} samples a side")
    return n


def signed_rank_p(d: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that the paired differences ``d``
    are symmetric about 0, exact.

    Zero differences are dropped (Wilcoxon's convention); the rest are ranked by ``|d|``,
    ties sharing their mean rank. ``W+`` is the sum of the ranks of the positive differences.
    Under the null every sign pattern of the ranks is equally likely, so the exact null
    distribution of ``W+`` is the distribution of the sum of a random subset of the ranks;
    it is counted by dynamic programming over the doubled (integer) ranks, which also makes
    it exact with ties. ``p = min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d) & (d != 0.0)]
    n = len(d)
    if n == 0:
        return 1.0
    ranks2 = np.rint(2.0 * average_ranks(np.abs(d))).astype(int)  # mid-ranks are multiples of 1/2
    w2 = int(ranks2[d > 0].sum())
    total = int(ranks2.sum())
    counts = np.zeros(total + 1)  # counts[s]: sign patterns whose positive ranks sum to s (doubled)
    counts[0] = 1.0
    for r in ranks2:
        counts[r:] = counts[r:] + counts[: total + 1 - r].copy()
    probs = counts / 2.0**n
    lower, upper = probs[: w2 + 1].sum(), probs[w2:].sum()
    return float(min(1.0, 2.0 * min(lower, upper)))


def signed_rank_min_p(n: int) -> float:
    """The smallest p-value ``signed_rank_p`` can return for ``n`` non-zero differences (all of
    one sign): ``2 / 2^n``."""
    return 1.0 if n < 1 else min(1.0, 2.0 / 2.0**n)


def min_n_signed_rank(alpha: float) -> int:
    """The smallest number of pairs that can give ``signed_rank_p < alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    return max(1, math.floor(math.log2(2.0 / alpha)) + 1)
