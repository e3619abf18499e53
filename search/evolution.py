"""Regularized (aging) evolution as an Optuna sampler: the search of one-shot NAS.

Real et al. (2019) found aging evolution as good as any NAS method at equal evaluations, and
SPOS, AutoFormer and Once-for-All search their supernets with evolution. It suits our one-shot
search of a thousand candidates: a proposal costs the driver O(trials) cheap steps, where TPE's
multivariate, group-decomposed estimator costs O(trials x groups) (a third of a second a
candidate after 500 trials); and unlike NSGA-II's crossover, which sees only the parameters
every trial has, it evolves define-by-run spaces whose parameters depend on earlier choices (a
layer's SE width exists only when it has SE): a child keeps each parameter of its parent that
it still has, and draws the ones its mutations opened.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .optuna_adapter import admits, set_system_attr, storage_of, trial_id

#: System attribute of a trial: the number of the trial it was mutated from.
PARENT_ATTR = "evolution:parent"


class RegularizedEvolutionSampler(BaseSampler):
    """Each new trial mutates the winner of a tournament of `tournament` trials drawn from the
    last `population` feasible finished ones: one parameter of the parent, chosen at random,
    takes another value, and each other parameter does with probability `mutation_prob`.
    Until `population` feasible trials are finished, trials are drawn at random.

    The winner is the best of the tournament (one objective) or one of its non-dominated
    members (several). Feasibility is read from the trials' constraints (`trial.set_constraint`):
    infeasible trials never enter the population."""

    def __init__(self, population: int = 50, tournament: int = 10, mutation_prob: float = 0.05,
                 seed: int | None = None) -> None:
        if not (isinstance(population, int) and isinstance(tournament, int) and 1 <= tournament <= population):
            raise ValueError(f"population={population!r}, tournament={tournament!r} are invalid; accepted: "
                             f"integers with 1 <= tournament <= population")
        if not 0.0 <= mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob={mutation_prob!r} is invalid; accepted: a probability in [0, 1]")
        self.population, self.tournament, self.mutation_prob = population, tournament, mutation_prob
        self._rng = random.Random(seed)
        self._random = RandomSampler(seed=seed)
        self._plans: dict[int, tuple[dict[str, Any], str]] = {}  # trial id -> parent's params, forced mutation

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]
        if len(finished) < self.population:
            return
        contenders = self._rng.sample(finished[-self.population:], self.tournament)
        parent = _winner(contenders, study.directions, self._rng)
        if not parent.params:
            return
        self._plans[trial_id(trial)] = (parent.params, self._rng.choice(sorted(parent.params)))
        set_system_attr(storage_of(study), trial, PARENT_ATTR, parent.number)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial_id(trial))
        if plan is None or param_name not in plan[0]:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        params, forced = plan
        value = params[param_name]
        if not admits(param_distribution, value):
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        if param_name == forced or self._rng.random() < self.mutation_prob:
            return self._other_value(study, trial, param_name, param_distribution, value)
        return value

    def _other_value(self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution,
                     value: Any) -> Any:
        if isinstance(distribution, CategoricalDistribution):
            others = [c for c in distribution.choices if c != value]
            return self._rng.choice(others) if others else value
        return self._random.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial_id(trial), None)


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())  # both of Optuna's formats


def _winner(contenders: list[FrozenTrial], directions: Sequence[StudyDirection], rng: random.Random) -> FrozenTrial:
    """The best contender (one objective), or a random non-dominated one (several)."""
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    scores = [[s * v for s, v in zip(signs, t.values)] for t in contenders]
    if len(signs) == 1:
        return max(zip(contenders, scores), key=lambda pair: pair[1][0])[0]
    front = [t for t, a in zip(contenders, scores)
             if not any(all(x >= y for x, y in zip(b, a)) and b != a for b in scores)]
    return rng.choice(front)


__all__ = ["PARENT_ATTR", "RegularizedEvolutionSampler"]
