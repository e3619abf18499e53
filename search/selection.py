"""Which trials of a search are its results: the candidates, ranked as the search ranked them,
their Pareto front, or the ones asked for (what the exports and the report show).

Reads only the study and trial attributes of the search's storage contract: COMPLETE trials,
their constraints, `spec`, `full_fidelity`, `baseline` and `flops` (224x224).
"""
from __future__ import annotations

from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from localvit.spec import as_spec

from .rank_by import RankBy, of_study, ranked, values


def select_trials(study: optuna.Study, *, top: int | None = None, pareto: bool = False, trial: int | None = None,
                  include_baselines: bool = False) -> list[FrozenTrial]:
    """The trials to export: one of `trial=N`, `top=K` or `pareto=True`.

    Candidates for `top` and `pareto` are COMPLETE, feasible (constraints <= 0) trials trained
    to the full proxy budget (`full_fidelity`) with a `spec`, baselines only when asked, one
    per architecture (its most accurate trial), ranked as the study's search ranked them
    (`search.rank_by`); FLOPs are the `flops` attribute (224x224).
    """
    if sum((top is not None, pareto, trial is not None)) != 1:
        raise ValueError("choose exactly one of --top K, --pareto, --trial N")
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not found or "spec" not in found[0].user_attrs:
            raise ValueError(f"trial={trial} is invalid; accepted: a trial number of study {study.study_name!r} "
                             f"with a spec ({len(study.trials)} trials)")
        return found
    if top is not None and top < 1:
        raise ValueError(f"top={top} is invalid; accepted: a positive integer")
    ranked = ranked_candidates(study, include_baselines)
    if not ranked:
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        raise ValueError(f"study {study.study_name!r} has no trial to export: {len(trials)} trials, {complete} "
                         f"complete; accepted: complete, feasible, full-fidelity trials"
                         + ("" if include_baselines else " (baselines need --include-baselines)"))
    return ranked[:top] if top is not None else pareto_front(ranked, of_study(study))


def ranked_candidates(study: optuna.Study, include_baselines: bool = False,
                      rank_by: RankBy | None = None) -> list[FrozenTrial]:
    """COMPLETE, feasible trials trained to the full proxy budget, one per architecture (its most
    accurate trial), best first by the study's ranking (`search.rank_by`; ties: fewer FLOPs)."""
    candidates = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                  and "spec" in t.user_attrs and all(c <= 0 for c in t.constraints.values())
                  and t.user_attrs.get("full_fidelity") is True
                  and (include_baselines or not t.user_attrs.get("baseline"))]
    designs: dict[str, FrozenTrial] = {}
    for t in sorted(candidates, key=lambda t: (-t.values[0], _flops(t), t.number)):
        designs.setdefault(as_spec(t.user_attrs["spec"]).id, t)
    return ranked(list(designs.values()), rank_by or of_study(study))


def pareto_front(trials: Sequence[FrozenTrial], rank_by: RankBy) -> list[FrozenTrial]:
    """The front of the ranking signal (up) and FLOPs (down) among `trials`, cheapest first. Ranked
    by FLOPs themselves, no design trades one for the other: the front is the best alone."""
    if rank_by.signal == "flops":
        return ranked(trials, rank_by)[:1]
    score = dict(zip((t.number for t in trials), values(trials, rank_by)))

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        better, cheaper = score[a.number] >= score[b.number], _flops(a) <= _flops(b)
        return better and cheaper and (score[a.number] > score[b.number] or _flops(a) < _flops(b))

    return sorted((t for t in trials if not any(dominates(u, t) for u in trials)), key=_flops)


def _flops(trial: FrozenTrial) -> float:
    return float(trial.user_attrs.get("flops", float("inf")))


__all__ = ["pareto_front", "ranked_candidates", "select_trials"]
