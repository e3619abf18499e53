"""Rank agreement between two scorings of the same designs (a proxy and a target such as ImageNet).

Small and dependency-free (numpy only) so that the audit, the supernet benchmark and reports
compute their figures the same way; the tests check every function against scipy.stats.

* ``kendall_tau_b``: pairs ordered alike minus pairs ordered oppositely, tie-corrected (the
  "b" variant, scipy's default), in [-1, 1]. The headline figure: it reads as "how much more
  often a pair of designs is ordered as the target orders it than the other way round".
* ``spearman``: Pearson correlation of the average ranks.
* ``bootstrap_interval``: percentile bootstrap over the designs (resampled in pairs), the same
  resamples and quantiles as ``scipy.stats.bootstrap(..., paired=True, method="percentile")``;
  degenerate resamples (all values tied, the statistic undefined) are left out.
* ``pair_agreement`` / ``top_k_overlap``: the share of given pairs ordered alike, and how many
  of the target's k best the proxy also puts in its k best.

Cost-aware figures, because a budgeted search decides among designs of about the same cost:

* ``cost_buckets`` / ``bucket_tau_b``: designs grouped by FLOPs within a tolerance (3%), and
  tau-b over the pairs inside the buckets only, pooled over them;
* ``near_pairs``: pairs whose parameter counts lie within 1% of each other, where counting
  parameters cannot decide (``pair_agreement`` on them);
* ``regret_at``: under a FLOP budget, the target accuracy of the best design within it minus
  that of the design the signal picks there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

Scores = Sequence[float] | np.ndarray
"""One score per design: a sequence or a 1-D array."""


def _pair(x: Scores, y: Scores) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"scores of shapes {x.shape} and {y.shape} are invalid; accepted: two 1-D sequences "
                         f"of equal length")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores with NaN or infinity are invalid; accepted: finite numbers")
    return x, y


def kendall_tau_b(x: Scores, y: Scores, pairs: Iterable[tuple[int, int]] | None = None) -> float:
    """Kendall's tau-b over all pairs of designs, or over the given index `pairs` only (ties
    corrected among those); NaN when either side ties every pair counted."""
    x, y = _pair(x, y)
    if pairs is None:
        i, j = np.triu_indices(len(x), k=1)
    else:
        index = np.array(list(pairs), dtype=int).reshape(-1, 2)
        i, j = index[:, 0], index[:, 1]
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied_x, untied_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return float(np.sum(dx * dy) / math.sqrt(untied_x * untied_y))


def average_ranks(x: Scores) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def spearman(x: Scores, y: Scores) -> float:
    """Spearman's rho: Pearson correlation of the average ranks; NaN when a side is constant."""
    x, y = _pair(x, y)
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry) / denominator) if denominator else math.nan


def bootstrap_interval(statistic: Callable[..., float], x: Scores, y: Scores,
                       *more: Scores, confidence: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y, *more)``, the designs resampled with
    replacement, every column of a design together."""
    x, y = _pair(x, y)
    columns = [x, y, *(np.asarray(c, dtype=float) for c in more)]
    if any(c.shape != x.shape for c in columns):
        raise ValueError(f"columns of shapes {[c.shape for c in columns]} are invalid; accepted: equal lengths")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is invalid; accepted: a number in (0, 1)")
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(x), size=(n_resamples, len(x)))
    values = np.array([statistic(*(c[i] for c in columns)) for i in resamples])
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def pair_agreement(x: Scores, y: Scores, pairs: Iterable[tuple[int, int]]) -> tuple[float, int]:
    """(pairs ordered alike, pairs counted) among ``pairs`` of indices; a pair the target ``y``
    ties is not counted (there is no order to agree with), a proxy tie counts as half."""
    x, y = _pair(x, y)
    agree = counted = 0.0
    for i, j in pairs:
        target = np.sign(y[i] - y[j])
        if target == 0:
            continue
        counted += 1
        proxy = np.sign(x[i] - x[j])
        agree += 1.0 if proxy == target else 0.5 if proxy == 0 else 0.0
    return agree, int(counted)


def top_k_overlap(x: Scores, y: Scores, k: int) -> float:
    """Share of the target's k best (by ``y``) that are among the proxy's k best (by ``x``)."""
    x, y = _pair(x, y)
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k!r} is invalid; accepted: 1 to the number of designs ({len(x)})")
    best_x = set(np.argsort(-x, kind="stable")[:k].tolist())
    best_y = set(np.argsort(-y, kind="stable")[:k].tolist())
    return len(best_x & best_y) / k


def cost_buckets(costs: Scores, tolerance: float = 0.03) -> list[list[int]]:
    """Indices grouped by cost: in increasing order, a bucket takes every design whose cost is
    within `tolerance` (relative) of the bucket's cheapest; the next design opens a new one."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and costs[i] <= costs[buckets[-1][0]] * (1 + tolerance):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def bucket_pairs(costs: Scores, tolerance: float = 0.03) -> list[tuple[int, int]]:
    """The pairs of designs that share a cost bucket (`cost_buckets`)."""
    return [(a, b) for bucket in cost_buckets(costs, tolerance) for k, a in enumerate(bucket) for b in bucket[k + 1:]]


def bucket_tau_b(x: Scores, y: Scores, costs: Scores, tolerance: float = 0.03) -> float:
    """Kendall tau-b over the pairs inside cost buckets, pooled: how well a signal orders designs
    of about the same cost, which is what a budgeted search decides between."""
    return kendall_tau_b(x, y, bucket_pairs(costs, tolerance))


def near_pairs(values: Scores, tolerance: float = 0.01) -> list[tuple[int, int]]:
    """Pairs whose `values` (parameter counts) lie within `tolerance` of the smaller one."""
    v = np.asarray(values, dtype=float)
    return [(i, j) for i in range(len(v)) for j in range(i + 1, len(v))
            if abs(v[i] - v[j]) <= tolerance * min(v[i], v[j])]


def regret_at(budget: float, signal: Scores, target: Scores, costs: Scores
              ) -> tuple[float, int]:
    """(regret, designs within the budget): the target of the best design whose cost is within
    `budget` minus the target of the one the signal ranks first there (ties: the cheaper, then
    the first); (NaN, 0) when none fits."""
    fit = [i for i in range(len(costs)) if costs[i] <= budget]
    if not fit:
        return math.nan, 0
    pick = min(fit, key=lambda i: (-signal[i], costs[i], i))
    return float(max(target[i] for i in fit) - target[pick]), len(fit)


@dataclass(frozen=True)
class Agreement:
    """Rank agreement of a proxy with a target on n designs, with bootstrap intervals."""

    n: int
    kendall_tau_b: float
    kendall_interval: tuple[float, float]
    spearman: float
    spearman_interval: tuple[float, float]
    confidence: float

    def describe(self) -> str:
        def interval(pair: tuple[float, float]) -> str:
            return f"[{pair[0]:.2f}, {pair[1]:.2f}]"
        return (f"Kendall tau-b {self.kendall_tau_b:.2f} {interval(self.kendall_interval)}, Spearman "
                f"{self.spearman:.2f} {interval(self.spearman_interval)} ({self.confidence:.0%} bootstrap, "
                f"n={self.n})")


def agreement(x: Scores, y: Scores, *, confidence: float = 0.95, n_resamples: int = 10_000,
              seed: int = 0) -> Agreement:
    """Kendall tau-b and Spearman of proxy ``x`` against target ``y`` with their bootstrap intervals."""
    return Agreement(
        n=len(x), kendall_tau_b=kendall_tau_b(x, y),
        kendall_interval=bootstrap_interval(kendall_tau_b, x, y, confidence=confidence, n_resamples=n_resamples,
                                            seed=seed),
        spearman=spearman(x, y),
        spearman_interval=bootstrap_interval(spearman, x, y, confidence=confidence, n_resamples=n_resamples,
                                             seed=seed),
        confidence=confidence)


__all__ = ["Agreement", "agreement", "average_ranks", "bootstrap_interval", "bucket_pairs", "bucket_tau_b",
           "cost_buckets", "kendall_tau_b", "near_pairs", "pair_agreement", "regret_at", "spearman", "top_k_overlap"]
