"""The signals a ranking can rest on, and how well each orders reference designs as the target
does, out of sample.

* free: `params` and `flops` at the target resolution (224x224, 1000 classes), from the cost
  model: they cost nothing, and on the paper's designs they rank as ImageNet does better
  than any CPU proxy measured so far;
* zero-cost: `proxy.zero_cost.ZERO_COST`, a second of CPU a candidate;
* measured: `proxy` (proxy training, minutes a candidate) or `supernet` (a score with inherited
  weights, a second a candidate once the supernet is trained);
* combined, each of a measured signal M with the parameter count, with at most one fitted
  weight: `M+params` = z(M) + w * z(log params), w fitted to maximise Kendall tau-b;
  `M-params-rank` = the mean of the two ranks (nothing fitted); `params-then-M` = the parameter
  count, M deciding between designs whose counts lie within 1% of each other (nothing
  fitted: M only orders what counting cannot).

Why not more: with n labelled designs Kendall tau's standard error is about
sqrt(2 (2n + 5) / (9 n (n - 1))) (0.17 at n = 18), the gain any fitted weight can show;
NAS-Bench-Suite-Zero found learned combinations of zero-cost scores help with about 100
labelled designs and not reliably with fewer. One weight, fitted without the rows it ranks, is
what 18 designs can carry.

Out of sample: a fitted weight is fitted without the rows being ranked: leave-one-table-out
when the rows name their table (`source.table`, as the paper's do), else leave-one-out; every
row is scored with the weight fitted without its group, and the figures are computed on
those scores. Signals with nothing fitted are out of sample as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, cast

import numpy as np
from scipy.stats import rankdata

from .statistics import (bootstrap_interval, bucket_pairs, bucket_tau_b, bucket_tau_b_rows, kendall_tau_b, near_pairs,
                         pair_agreement, regret_at, spearman, tau_b_rows)

FREE = ("params", "flops")
MEASURED = ("proxy", "supernet")
#: The FLOP budgets (GFLOPs at 224x224) regret is reported at.
REGRET_BUDGETS = (0.75, 0.95, 1.1, 1.3, 1.65)
#: Designs within this relative FLOP distance share a cost bucket; parameter counts within
#: `EQUAL_PARAMS` of each other are pairs counting cannot decide.
FLOP_BUCKET, EQUAL_PARAMS = 0.03, 0.01
#: The weights `M+params` may take (0: M alone; large: parameter count alone).
WEIGHTS = tuple(round(0.1 * k, 1) for k in range(51)) + (7.5, 10.0, 20.0, 50.0)
COMBINATIONS = ("{m}+params", "{m}-params-rank", "params-then-{m}")


def combinations(measured: str) -> tuple[str, ...]:
    """The combined signals of a measured signal (`proxy` or `supernet`)."""
    return tuple(c.format(m=measured) for c in COMBINATIONS)


def rank_by_choices(measured: str) -> tuple[str, ...]:
    """What a search with this measured signal can rank by (`--rank-by`)."""
    return (measured, *FREE, *combinations(measured))


def tau_standard_error(n: int) -> float:
    """Kendall tau's standard error under independence: sqrt(2 (2n + 5) / (9 n (n - 1)))."""
    return math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))) if n > 1 else math.nan


def _z(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def combine(name: str, columns: Mapping[str, Sequence[float]], weight: float | None = None) -> np.ndarray:
    """A combined signal's values from its parts (`columns[measured]`, `columns["params"]`);
    `weight` is `M+params`'s (the others have none). z-scores and ranks are taken over the
    designs given, which are the designs being ranked."""
    for pattern in COMBINATIONS:
        for measured in MEASURED:
            if name == pattern.format(m=measured):
                m = np.asarray(columns[measured], dtype=float)
                params = np.asarray(columns["params"], dtype=float)
                if pattern == "{m}+params":
                    return _z(m) + float(weight if weight is not None else 1.0) * _z(np.log(params))
                if pattern == "{m}-params-rank":
                    return (rankdata(m) + rankdata(params)) / 2
                return _params_then(params, m)
    raise ValueError(f"signal {name!r} is not a combination; accepted: "
                     f"{', '.join(c for m in MEASURED for c in combinations(m))}")


def _params_then(params: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Scores that order by parameter count, except within groups of counts lying within
    `EQUAL_PARAMS` of each other (chained in increasing order), which the measured signal orders."""
    order = np.argsort(params, kind="stable")
    group = np.zeros(len(params), dtype=int)
    for k in range(1, len(order)):
        close = params[order[k]] <= params[order[k - 1]] * (1 + EQUAL_PARAMS)
        group[order[k]] = group[order[k - 1]] + (0 if close else 1)
    # the group index dominates; within a group the measured signal's rank, scaled below one step
    return group + rankdata(measured) / (len(params) + 1)


def fit_weight(measured: Sequence[float], params: Sequence[float], target: Sequence[float]) -> float:
    """`M+params`'s weight that maximises Kendall tau-b against `target`: the middle of the
    best plateau of `WEIGHTS`."""
    taus = [kendall_tau_b(combine("proxy+params", {"proxy": measured, "params": params}, w), target) for w in WEIGHTS]
    best = max(t for t in taus if not math.isnan(t)) if any(not math.isnan(t) for t in taus) else math.nan
    plateau = [w for w, t in zip(WEIGHTS, taus) if t == best] or [1.0]
    return plateau[len(plateau) // 2]


def groups_of(sources: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    """The held-out groups of out-of-sample fitting: the rows' tables when every row names one
    and there are at least two, else each row alone."""
    tables = [str(s.get("table", "")) for s in sources]
    if all(tables) and len(set(tables)) > 1:
        return tables, "leave-one-table-out"
    return [str(i) for i in range(len(sources))], "leave-one-out"


def out_of_sample(name: str, columns: Mapping[str, Sequence[float]], target: Sequence[float] | np.ndarray,
                  groups: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
    """A combined signal's values, each row scored with the weight fitted without its group;
    and the weights by held-out group. Rows of one group are ranked among themselves and the
    others alike: only the weight comes from the other groups."""
    measured = name.split("+")[0]
    values = np.empty(len(target))
    weights: dict[str, float] = {}
    target = np.asarray(target, dtype=float)
    for held in dict.fromkeys(groups):
        inside = np.array([g == held for g in groups])
        train = {k: np.asarray(v, dtype=float)[~inside] for k, v in columns.items()}
        weights[held] = fit_weight(train[measured], train["params"], target[~inside])
        values[inside] = combine(name, columns, weights[held])[inside]
    return values, weights


@dataclass(frozen=True)
class Evaluation:
    """How well one signal orders the designs as the target does; `to_dict()` is JSON-able."""

    signal: str
    n: int
    undefined: int
    tau_b: float
    tau_b_interval: tuple[float, float]
    spearman: float
    bucket_tau_b: float
    bucket_interval: tuple[float, float]
    bucket_pairs: int
    equal_params_agreed: float
    equal_params_pairs: int
    regret: dict[str, tuple[float, int]]
    cpu_s: float | None
    fitting: str
    weights: dict[str, float]
    #: The value each row was ranked by (None where undefined); a fitted combination's are out of
    #: sample (each row scored with the weight fitted without its group), so others can re-score them.
    values: tuple[float | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "n": self.n, "undefined": self.undefined, "tau_b": self.tau_b,
                "tau_b_interval": list(self.tau_b_interval), "spearman": self.spearman,
                "bucket_tau_b": self.bucket_tau_b, "bucket_interval": list(self.bucket_interval),
                "bucket_pairs": self.bucket_pairs, "equal_params_agreed": self.equal_params_agreed,
                "equal_params_pairs": self.equal_params_pairs,
                "regret": {k: list(v) for k, v in self.regret.items()}, "cpu_s": self.cpu_s,
                "fitting": self.fitting, "weights": self.weights}


def evaluate(signal: str, values: Sequence[float | None], target: Sequence[float], params: Sequence[float],
             flops: Sequence[float], *, cpu_s: float | None = None, fitting: str = "nothing fitted",
             weights: Mapping[str, float] | None = None, n_resamples: int = 10_000) -> Evaluation:
    """Every figure of one signal on the designs where it has a value (None: undefined there)."""
    keep = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    x = np.array([values[i] for i in keep], dtype=float)
    y, p, f = (np.asarray(column, dtype=float)[keep] for column in (target, params, flops))

    def bucket_statistic(a: np.ndarray, b: np.ndarray, costs: np.ndarray) -> np.ndarray:
        return bucket_tau_b_rows(a, b, costs, FLOP_BUCKET)

    enough = len(keep) >= 3
    agreed, counted = pair_agreement(x, y, near_pairs(p, EQUAL_PARAMS)) if enough else (0.0, 0)
    return Evaluation(
        signal=signal, n=len(keep), undefined=len(values) - len(keep),
        tau_b=kendall_tau_b(x, y) if enough else math.nan,
        tau_b_interval=bootstrap_interval(tau_b_rows, x, y, n_resamples=n_resamples) if enough
        else (math.nan, math.nan),
        spearman=spearman(x, y) if enough else math.nan,
        bucket_tau_b=bucket_tau_b(x, y, f, FLOP_BUCKET) if enough else math.nan,
        bucket_interval=bootstrap_interval(bucket_statistic, x, y, f, n_resamples=n_resamples) if enough
        else (math.nan, math.nan),
        bucket_pairs=len(bucket_pairs(f, FLOP_BUCKET)), equal_params_agreed=agreed, equal_params_pairs=counted,
        regret={f"{b:g}": regret_at(b * 1e9, x, y, f) for b in REGRET_BUDGETS} if len(keep) else {},
        cpu_s=cpu_s, fitting=fitting, weights=dict(weights or {}),
        values=tuple(None if v is None or not math.isfinite(v) else float(v) for v in values))


def meets_goal(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> bool:
    """Whether an evaluation is at least as good as `baseline`'s (parameter count) on every
    figure (tau-b, Spearman, tau-b in cost buckets, regret at every budget) and better on the
    pairs of equal parameter counts; where the designs hold no such pair, better on tau-b."""
    def share(e: Mapping[str, Any]) -> float:
        return e["equal_params_agreed"] / e["equal_params_pairs"] if e["equal_params_pairs"] else math.nan

    at_least = all(_ge(candidate[k], baseline[k]) for k in ("tau_b", "spearman", "bucket_tau_b"))
    regrets = all(_ge(-candidate["regret"][b][0], -baseline["regret"][b][0]) for b in baseline["regret"]
                  if b in candidate["regret"])
    better = share(candidate) > share(baseline) if baseline["equal_params_pairs"] else \
        candidate["tau_b"] > baseline["tau_b"]
    return at_least and regrets and better


def _ge(a: float, b: float) -> bool:
    return (math.isnan(b) or (not math.isnan(a) and a >= b - 1e-9))


def choose_default(evaluations: Mapping[str, Mapping[str, Any]], choices: Sequence[str]) -> str:
    """The signal a search ranks by unless told: the parameter count, unless a signal among
    `choices` that costs more meets the goal against it out of sample (`meets_goal`: as good on
    every figure, better where counting cannot decide); of those, the best tau-b. A signal that
    costs CPU-minutes earns its place by beating what costs nothing, or is not ranked by."""
    base = evaluations.get("params")
    if base is None:
        return "params"
    winners = [c for c in choices if c not in FREE and c in evaluations and meets_goal(evaluations[c], base)]
    return max(winners, key=lambda c: evaluations[c]["tau_b"]) if winners else "params"


def evaluate_all(columns: Mapping[str, Sequence[float | None]], target: Sequence[float],
                 sources: Sequence[Mapping[str, Any]], cpu_s: Mapping[str, float | None],
                 measured: Sequence[str], n_resamples: int = 10_000) -> dict[str, Evaluation]:
    """Every signal of `columns` (values per design, None where undefined) and the combinations
    of each `measured` signal with the parameter count, out of sample."""
    # every design has a parameter count and FLOPs
    params, flops = cast(Sequence[float], columns["params"]), cast(Sequence[float], columns["flops"])
    groups, how = groups_of(sources)
    out = {name: evaluate(name, values, target, params, flops, cpu_s=cpu_s.get(name), n_resamples=n_resamples)
           for name, values in columns.items()}
    for m in measured:
        defined_values = {i: v for i, v in enumerate(columns[m]) if v is not None and math.isfinite(v)}
        defined = list(defined_values)
        if len(defined) < 3:
            continue
        sub = {m: list(defined_values.values()), "params": [params[i] for i in defined]}
        sub_target = [target[i] for i in defined]
        for name in combinations(m):
            if name.endswith("+params"):
                values, weights = out_of_sample(name, sub, sub_target, [groups[i] for i in defined])
                weights["all"] = fit_weight(sub[m], sub["params"], sub_target)  # what a search ranks with
                fitting = how
            else:
                values, weights, fitting = combine(name, sub), {}, "nothing fitted"
            full: list[float | None] = [None] * len(target)
            for k, i in enumerate(defined):
                full[i] = float(values[k])
            out[name] = evaluate(name, full, target, params, flops, cpu_s=cpu_s.get(m), fitting=fitting,
                                 weights=weights, n_resamples=n_resamples)
    return out


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell_interval(value: float, interval: Sequence[float]) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _cpu(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "0 (cost model)" if seconds == 0 else f"{seconds:.2f}" if seconds < 10 else f"{seconds:.0f}"


def signals_table(signals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A markdown table of evaluations (`Evaluation.to_dict()`), one row per signal, every
    figure out of sample, with the designs or pairs each rests on."""
    budgets = [f"{b:g}" for b in REGRET_BUDGETS]
    lines = ["| signal | n | Kendall tau-b [95%] | Spearman | tau-b in FLOP buckets [95%] | equal-parameter pairs "
             "in the target's order | regret (points) at " + ", ".join(budgets) + " GFLOPs | CPU-s per candidate "
             "| fitted |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in signals.items():
        regret = ", ".join(_fmt(e["regret"][b][0], 1) for b in budgets if b in e["regret"])
        pairs = f"{e['equal_params_agreed']:g} of {e['equal_params_pairs']}" if e["equal_params_pairs"] else "-"
        undefined = f" ({e['undefined']} undefined)" if e["undefined"] else ""
        fitted = e["fitting"] if e["fitting"] == "nothing fitted" else (
            f"{e['fitting']}, w {', '.join(f'{w:g}' for k, w in e['weights'].items() if k != 'all')}")
        lines.append(f"| {name} | {e['n']}{undefined} | {_cell_interval(e['tau_b'], e['tau_b_interval'])} | "
                     f"{_fmt(e['spearman'])} | {_cell_interval(e['bucket_tau_b'], e['bucket_interval'])} "
                     f"({e['bucket_pairs']} pairs) | {pairs} | {regret} | {_cpu(e['cpu_s'])} | {fitted} |")
    return lines


def describe_choice(signals: Mapping[str, Mapping[str, Any]], default: str, measured: str) -> str:
    """In plain words: what parameter count and the measured signal reach, which signal is the
    default ranking and why (`choose_default`)."""
    base = signals.get("params")
    if base is None or default not in signals:
        return f"the default ranking is {default}"
    text = ("parameter count ranks the designs as the target does at tau-b "
            + _cell_interval(base["tau_b"], base["tau_b_interval"]))
    if measured in signals:
        m = signals[measured]
        text += f", the {measured} at {_cell_interval(m['tau_b'], m['tau_b_interval'])}"
    if default == "params":
        costlier = [k for k in signals if k not in FREE and not math.isnan(signals[k]["tau_b"])]
        best = max(costlier, key=lambda k: signals[k]["tau_b"], default=None)
        text += ("; no signal that costs more matches it on every figure and beats it on pairs of equal "
                 "parameter counts")
        if best is not None:
            b = signals[best]
            text += (f" (the best, {best}, reaches {_fmt(b['tau_b'])} overall but {_fmt(b['bucket_tau_b'])} within "
                     f"FLOP buckets against {_fmt(base['bucket_tau_b'])}, and orders {b['equal_params_agreed']:g} "
                     f"of {b['equal_params_pairs']} pairs of equal counts against {base['equal_params_agreed']:g})")
        return text + ", so the default ranking is parameter count"
    chosen = signals[default]
    where = (f"better on pairs of equal counts ({chosen['equal_params_agreed']:g} of {chosen['equal_params_pairs']} "
             f"against {base['equal_params_agreed']:g})" if base["equal_params_pairs"]
             else "better overall (the designs hold no pair of equal counts)")
    return (text + f"; the default ranking is {default} ({_fmt(chosen['tau_b'])} out of sample), as good as parameter "
            f"count on every figure and {where}")


__all__ = ["COMBINATIONS", "FREE", "MEASURED", "REGRET_BUDGETS", "Evaluation", "choose_default", "combinations",
           "combine", "describe_choice", "evaluate", "evaluate_all", "fit_weight", "groups_of", "meets_goal",
           "out_of_sample", "rank_by_choices", "signals_table", "tau_standard_error"]
