"""Bayesian optimisation over the unit cube: a zero-mean Gaussian process with an RBF kernel and
expected improvement (RAD's search over relaxed skip masks, ``archbench.recipes.redundancy``).

``GaussianProcess`` fits standardised targets, picking the length scale by marginal likelihood on
a grid, with a small noise term. ``maximize`` scores ``n_init`` random points, then each next
point maximises EI(x) = (mu - y* - xi) Phi(z) + sigma phi(z), z = (mu - y* - xi) / sigma, over
random candidates plus perturbations of the best points seen; an ``exclude`` filter drops
candidates the caller has already scored. A fixed seed makes it deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


class GaussianProcess:
    """Zero-mean GP regression with an RBF kernel on standardised targets (float64)."""

    def __init__(self, noise: float = 1e-4, scales: Sequence[float] = (0.05, 0.1, 0.2, 0.35, 0.6, 1.0)):
        self.noise, self.scales = noise, tuple(scales)

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * torch.cdist(a, b).pow(2) / self.lengthscale**2)

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> "GaussianProcess":
        X, y = X.double(), y.double()
        self.X, self.mu = X, y.mean()
        sd = y.std() if len(y) > 1 else torch.tensor(0.0, dtype=torch.float64)
        self.sd = sd if sd > 1e-12 else torch.tensor(1.0, dtype=torch.float64)
        yn = (y - self.mu) / self.sd
        best = None
        eye = torch.eye(len(X), dtype=torch.float64)
        for s in self.scales:  # length scale by log marginal likelihood; distances in [0, 1]^d grow like sqrt(d)
            self.lengthscale = s * math.sqrt(X.shape[1])
            chol = torch.linalg.cholesky(self._kernel(X, X) + (self.noise + 1e-9) * eye)
            alpha = torch.cholesky_solve(yn[:, None], chol)[:, 0]
            lml = float(-0.5 * yn @ alpha - torch.log(torch.diagonal(chol)).sum())
            if best is None or lml > best[0]:
                best = (lml, self.lengthscale, chol, alpha)
        _, self.lengthscale, self.chol, self.alpha = best
        return self

    def predict(self, Xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation at Xs [n, d], in the targets' units."""
        ks = self._kernel(Xs.double(), self.X)
        mean = ks @ self.alpha
        v = torch.linalg.solve_triangular(self.chol, ks.T, upper=False)
        var = (1.0 - v.pow(2).sum(0)).clamp_min(1e-12)
        return mean * self.sd + self.mu, var.sqrt() * self.sd


def expected_improvement(mean: torch.Tensor, std: torch.Tensor, best: float, xi: float = 0.01) -> torch.Tensor:
    """EI for maximisation: E[max(f - best - xi, 0)] under N(mean, std^2)."""
    gain = mean - best - xi
    z = gain / std
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return gain * torch.special.ndtr(z) + std * pdf


@dataclass
class OptResult:
    X: torch.Tensor  # [n, d] points evaluated, in order
    y: torch.Tensor  # [n] their values

    @property
    def best_x(self) -> torch.Tensor:
        return self.X[int(self.y.argmax())]

    @property
    def best_y(self) -> float:
        return float(self.y.max())


def maximize(
    f: Callable[[torch.Tensor], float], dim: int, budget: int, n_init: int = 4, seed: int = 0,
    n_candidates: int = 1024, exclude: Callable[[torch.Tensor], torch.Tensor] | None = None, xi: float = 0.01,
) -> OptResult:  # fmt: skip
    """Bayesian optimisation of f over [0, 1]^dim: ``n_init`` random points, then EI-maximising ones
    (``xi`` in units of the targets' standard deviation), ``budget`` evaluations in all (fewer if
    ``exclude``, a filter of candidate rows, rules every candidate out)."""
    if budget < 1 or dim < 1:
        raise ValueError(f"maximize: budget and dim must be >= 1 (got {budget}, {dim})")
    g = torch.Generator().manual_seed(seed)
    X: list[torch.Tensor] = []
    Y: list[float] = []

    def allowed(c: torch.Tensor) -> torch.Tensor:
        return c if exclude is None else c[~exclude(c)]

    while len(Y) < budget:
        cand = allowed(torch.rand(n_candidates, dim, generator=g, dtype=torch.float64))
        if len(Y) >= max(n_init, 1):
            top = torch.stack(X)[torch.tensor(Y).argsort(descending=True)[:3]]
            local = torch.cat([top + s * torch.randn(n_candidates // 6, *top.shape, generator=g, dtype=torch.float64)
                               for s in (0.02, 0.08, 0.2)]).reshape(-1, dim).clamp(0, 1)  # fmt: skip
            cand = torch.cat([cand, allowed(local)])
        if len(cand) == 0:
            break
        if len(Y) < max(n_init, 1):
            x = cand[0]
        else:
            gp = GaussianProcess().fit(torch.stack(X), torch.tensor(Y, dtype=torch.float64))
            mean, std = gp.predict(cand)
            x = cand[int(expected_improvement(mean, std, max(Y), xi * float(gp.sd)).argmax())]
        X.append(x)
        Y.append(float(f(x)))
    return OptResult(torch.stack(X), torch.tensor(Y, dtype=torch.float64))
