"""Rank agreement between two scorings of the same designs (a proxy and a target such as ImageNet).

One module so that the audit, the supernet benchmark and reports compute their figures the same
way: scipy.stats where it has the statistic, numpy (vectorised over bootstrap resamples) where not.

* ``kendall_tau_b``: pairs ordered alike minus pairs ordered oppositely, tie-corrected (the
  "b" variant, scipy's default), in [-1, 1]. The headline figure: it reads as "how much more
  often a pair of designs is ordered as the target orders it than the other way round".
* ``spearman``: Pearson correlation of the average ranks.
* ``bootstrap_interval``: percentile bootstrap over the designs (resampled in pairs), the same
  resamples and quantiles as ``scipy.stats.bootstrap(..., paired=True, method="percentile")``;
  degenerate resamples (all values tied, the statistic undefined) are left out. Its statistics
  are the ``*_rows`` forms, which score every resample at once.
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
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"scores of shapes {x.shape} and {y.shape} are invalid; accepted: two 1-D sequences "
                         f"of equal length")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores with NaN or infinity are invalid; accepted: finite numbers")
    return x, y


def _quiet(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """scipy warns on a constant input (the statistic is NaN there, which is our answer too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in scipy's tau-b when a side ties every pair
        return function(*args, **kwargs)


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b over all pairs of designs (``scipy.stats.kendalltau``); NaN when either side
    ties every pair."""
    x, y = _pair(x, y)
    return float(_quiet(stats.kendalltau, x, y, variant="b").statistic)


def tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of every row of `x` and `y` (last axis: the designs; leading axes:
    resamples): what the bootstrap evaluates at once, where scipy's takes one pair of 1-D samples."""
    i, j = np.triu_indices(np.shape(x)[-1], k=1)
    return _tau_b(np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j]))


def _tau_b(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Tau-b from the signs of the pair differences (last axis: the pairs; 0 also for a pair not counted)."""
    untied = np.count_nonzero(dx, axis=-1) * np.count_nonzero(dy, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, np.sum(dx * dy, axis=-1) / np.sqrt(untied), math.nan)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rho (``scipy.stats.spearmanr``); NaN when a side is constant."""
    x, y = _pair(x, y)
    return float(_quiet(stats.spearmanr, x, y).statistic)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of every row (last axis: the designs): Pearson correlation of the average
    ranks (``scipy.stats.rankdata``), NaN where a row is constant."""
    rx, ry = (stats.rankdata(v, axis=-1) for v in (x, y))
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt(np.sum(rx * rx, axis=-1) * np.sum(ry * ry, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.sum(rx * ry, axis=-1) / denominator, math.nan)


def bootstrap_interval(statistic: Callable[..., np.ndarray], x: ArrayLike, y: ArrayLike,
                       *more: ArrayLike, confidence: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic, the designs resampled with replacement, every
    column of a design together.

    The resamples and quantiles are those of ``scipy.stats.bootstrap(..., paired=True,
    method="percentile", rng=np.random.default_rng(seed))``; unlike it, degenerate resamples (the
    statistic NaN: all values tied) are left out rather than making the interval NaN, so the
    resampling is written here. `statistic` takes the columns as 2-D arrays (a resample a row)
    and returns a value per row, as `tau_b_rows`, `spearman_rows` and `bucket_tau_b_rows` do.
    """
    x, y = _pair(x, y)
    columns = [x, y, *(np.asarray(c, dtype=float) for c in more)]
    if any(c.shape != x.shape for c in columns):
        raise ValueError(f"columns of shapes {[c.shape for c in columns]} are invalid; accepted: equal lengths")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is invalid; accepted: a number in (0, 1)")
    if len(x) < 2:
        return math.nan, math.nan
    resamples = np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))
    batch = max(1, 2**21 // len(x) ** 2)  # bounds the pair arrays of the tau-b statistics
    values = np.concatenate([statistic(*(c[resamples[k:k + batch]] for c in columns))
                             for k in range(0, n_resamples, batch)])
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def pair_agreement(x: ArrayLike, y: ArrayLike, pairs: Iterable[tuple[int, int]]) -> tuple[float, int]:
    """(pairs ordered alike, pairs counted) among ``pairs`` of indices; a pair the target ``y``
    ties is not counted (there is no order to agree with), a proxy tie counts as half."""
    x, y = _pair(x, y)
    index = np.array(list(pairs), dtype=int).reshape(-1, 2)
    target = np.sign(y[index[:, 0]] - y[index[:, 1]])
    proxy = np.sign(x[index[:, 0]] - x[index[:, 1]])[target != 0]
    target = target[target != 0]
    return float(np.sum(proxy == target) + 0.5 * np.sum(proxy == 0)), len(target)


def top_k_overlap(x: ArrayLike, y: ArrayLike, k: int) -> float:
    """Share of the target's k best (by ``y``) that are among the proxy's k best (by ``x``)."""
    x, y = _pair(x, y)
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k!r} is invalid; accepted: 1 to the number of designs ({len(x)})")
    best_x = set(np.argsort(-x, kind="stable")[:k].tolist())
    best_y = set(np.argsort(-y, kind="stable")[:k].tolist())
    return len(best_x & best_y) / k


def cost_buckets(costs: ArrayLike, tolerance: float = 0.03) -> list[list[int]]:
    """Indices grouped by cost: in increasing order, a bucket takes every design whose cost is
    within `tolerance` (relative) of the bucket's cheapest; the next design opens a new one."""
    costs = np.asarray(costs, dtype=float)
    ids = bucket_ids(costs, tolerance)
    buckets: list[list[int]] = [[] for _ in range(int(ids.max()) + 1)] if len(ids) else []
    for i in np.argsort(costs, kind="stable").tolist():
        buckets[ids[i]].append(i)
    return buckets


def bucket_ids(costs: np.ndarray, tolerance: float = 0.03) -> np.ndarray:
    """The `cost_buckets` bucket of every design, numbered in increasing cost, for every row of
    `costs` at once (last axis: the designs)."""
    if costs.shape[-1] == 0:
        return np.zeros(costs.shape, dtype=int)
    order = np.argsort(costs, axis=-1, kind="stable")
    ordered = np.take_along_axis(costs, order, axis=-1)
    sorted_ids = np.zeros(ordered.shape, dtype=int)
    opener, current = ordered[..., 0], np.zeros(ordered.shape[:-1], dtype=int)
    for k in range(1, ordered.shape[-1]):  # a pass over the designs, every row at once
        new = ordered[..., k] > opener * (1 + tolerance)
        current = current + new
        opener = np.where(new, ordered[..., k], opener)
        sorted_ids[..., k] = current
    ids = np.empty_like(sorted_ids)
    np.put_along_axis(ids, order, sorted_ids, axis=-1)
    return ids


def bucket_pairs(costs: ArrayLike, tolerance: float = 0.03) -> list[tuple[int, int]]:
    """The pairs of designs that share a cost bucket (`cost_buckets`)."""
    return [(a, b) for bucket in cost_buckets(costs, tolerance) for k, a in enumerate(bucket) for b in bucket[k + 1:]]


def bucket_tau_b(x: ArrayLike, y: ArrayLike, costs: ArrayLike, tolerance: float = 0.03) -> float:
    """Kendall tau-b over the pairs inside cost buckets, pooled: how well a signal orders designs
    of about the same cost, which is what a budgeted search decides between."""
    x, y = _pair(x, y)
    return float(bucket_tau_b_rows(x, y, np.asarray(costs, dtype=float), tolerance))


def bucket_tau_b_rows(x: np.ndarray, y: np.ndarray, costs: np.ndarray, tolerance: float = 0.03) -> np.ndarray:
    """`bucket_tau_b` of every row (last axis: the designs), each row bucketed by its own costs."""
    bucket = bucket_ids(costs, tolerance)
    i, j = np.triu_indices(x.shape[-1], k=1)
    inside = bucket[..., i] == bucket[..., j]
    return _tau_b(np.sign(x[..., i] - x[..., j]) * inside, np.sign(y[..., i] - y[..., j]) * inside)


def near_pairs(values: ArrayLike, tolerance: float = 0.01) -> list[tuple[int, int]]:
    """Pairs whose `values` (parameter counts) lie within `tolerance` of the smaller one."""
    v = np.asarray(values, dtype=float)
    i, j = np.triu_indices(len(v), k=1)
    near = np.abs(v[i] - v[j]) <= tolerance * np.minimum(v[i], v[j])
    return list(zip(i[near].tolist(), j[near].tolist()))


def regret_at(budget: float, signal: ArrayLike, target: ArrayLike, costs: ArrayLike) -> tuple[float, int]:
    """(regret, designs within the budget): the target of the best design whose cost is within
    `budget` minus the target of the one the signal ranks first there (ties: the cheaper, then
    the first); (NaN, 0) when none fits."""
    s, t, c = (np.asarray(v, dtype=float) for v in (signal, target, costs))
    fit = np.flatnonzero(c <= budget)
    if not len(fit):
        return math.nan, 0
    pick = min(fit.tolist(), key=lambda i: (-s[i], c[i], i))
    return float(t[fit].max() - t[pick]), len(fit)


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


def agreement(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 10_000,
              seed: int = 0) -> Agreement:
    """Kendall tau-b and Spearman of proxy ``x`` against target ``y`` with their bootstrap intervals."""
    return Agreement(
        n=len(x), kendall_tau_b=kendall_tau_b(x, y),
        kendall_interval=bootstrap_interval(tau_b_rows, x, y, confidence=confidence, n_resamples=n_resamples,
                                            seed=seed),
        spearman=spearman(x, y),
        spearman_interval=bootstrap_interval(spearman_rows, x, y, confidence=confidence, n_resamples=n_resamples,
                                             seed=seed),
        confidence=confidence)


__all__ = ["Agreement", "agreement", "bootstrap_interval", "bucket_ids", "bucket_pairs", "bucket_tau_b",
           "bucket_tau_b_rows", "cost_buckets", "kendall_tau_b", "near_pairs", "pair_agreement", "regret_at",
           "spearman", "spearman_rows", "tau_b_rows", "top_k_overlap"]
