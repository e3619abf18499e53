"""The samplers a search can propose candidates with (`--sampler`)."""
from __future__ import annotations

import copy
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from space.space import ListSpace, Space

from .evolution import RegularizedEvolutionSampler
from .settings import ONESHOT, SearchSettings


def make_sampler(settings: SearchSettings, space: Space, offset: int = 0) -> optuna.samplers.BaseSampler:
    """Constraints reach the samplers through `trial.set_constraint` (Optuna 5), not constraints_func.

    The seed is offset by the trials the study holds, so that a resumed search does not replay
    the proposals of the run it continues; not the grid's, whose order must be the study's: its
    trials name their points by index, and every driver and every resume must read them alike."""
    seed = settings.seed + offset
    if settings.sampler == "tpe":
        # Few random trials beyond the queued baselines and warm starts, and many EI candidates:
        # a search of a few dozen trials in a space of ~70 choices must exploit what it learns early.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=2 + settings.warm_start + 2 * settings.baselines,
                                          n_ei_candidates=64)
    if settings.sampler == "evolution":
        population = 50 if settings.strategy == ONESHOT else max(4, settings.trials // 3)
        return RegularizedEvolutionSampler(population=population, tournament=max(2, population // 5), seed=seed)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, settings.trials // 2)))
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    assert isinstance(space, ListSpace)
    return GridSampler(space.distributions(), seed=settings.seed)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its end: telling the trial that completes the grid calls
    `study.stop()`, which raises outside `study.optimize` (our trials are told by Ray Tune's
    searcher and the one-shot loop; a resumed grid audit met it). The searches end by counting
    the grid's trials themselves."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial queued with no params (by a version that queued again what a driver killed
        before the first suggestion held) takes a point of its own, as an asked one does."""
        if trial.system_attrs.get("fixed_params") == {}:
            trial = copy.copy(trial)
            trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != "fixed_params"}
        super().before_trial(study, trial)

    def grid_point(self, trial: FrozenTrial) -> dict[str, Any]:
        """The point this grid gave `trial` that it never recorded as params (its driver stopped
        between Optuna's `ask` and the first suggestion): once failed, the grid counts the point
        visited, so it must be queued again. Empty when the grid gave it none."""
        if "grid_id" not in trial.system_attrs or trial.system_attrs.get("search_space") != self._search_space:
            return {}
        return dict(zip(self._param_names, self._all_grids[trial.system_attrs["grid_id"]]))


__all__ = ["GridSampler", "make_sampler"]
