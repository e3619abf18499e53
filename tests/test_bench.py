"""The statistics the benchmarks report their changes with."""
from __future__ import annotations

import random

import pytest

from bench.common import median_interval, paired_change


@pytest.mark.parametrize(("n", "ranks", "coverage"), [
    (16, (4, 13), 0.9787),  # published sign-test tables (e.g. Conover, Practical Nonparametric Statistics)
    (10, (2, 9), 0.9785),
    (5, (1, 5), 0.9375),  # too few rounds for 95%: the full range
])
def test_median_interval_uses_the_order_statistics_of_the_sign_test(n, ranks, coverage) -> None:
    samples = random.Random(n).sample(range(100), n)
    low, high, achieved = median_interval([float(s) for s in samples])
    ordered = sorted(samples)
    assert (low, high) == (ordered[ranks[0] - 1], ordered[ranks[1] - 1])
    assert achieved == pytest.approx(coverage, abs=1e-4)


def test_median_interval_covers_the_true_median_as_often_as_it_says() -> None:
    rng = random.Random(0)
    trials, hits = 4000, 0
    for _ in range(trials):
        low, high, coverage = median_interval([rng.expovariate(1.0) for _ in range(12)])
        hits += low <= 0.6931471805599453 <= high  # the median of Exp(1) is ln 2
    standard_error = (coverage * (1 - coverage) / trials) ** 0.5
    assert abs(hits / trials - coverage) < 4 * standard_error


def test_paired_change_verdicts() -> None:
    baseline = [40.0, 36.0, 44.0, 38.0, 42.0, 39.0, 41.0, 37.0, 43.0, 40.0]
    slower = paired_change([b * 0.96 for b in baseline], baseline)
    assert slower.median == pytest.approx(-0.04) and slower.verdict(-0.027) == "missed"
    assert paired_change([b * 0.99 for b in baseline], baseline).verdict(-0.027) == "met"
    spread = paired_change([b * (0.95 + 0.01 * i) for i, b in enumerate(baseline)], baseline)
    assert spread.low < -0.027 < spread.high and spread.verdict(-0.027) == "undecided"
