"""Every use of Ray Tune's private names, in one place (as `optuna_adapter` is for Optuna's).

Ray Tune's `OptunaSearch` keeps the Optuna study and the Optuna trial behind each Tune trial in
private attributes, and offers no public way to reach them. The search needs them: it closes a
trial itself (a candidate over the budget or trained already, a trial lost to the cluster),
reports learning curves and queues a lost candidate again. This base class names them once;
they were tested with the Ray versions `pyproject.toml` admits, so an upgrade that renames them
fails here, in the search's tests, and nowhere else.
"""
from __future__ import annotations

from typing import Mapping

import optuna
from ray.tune.search.optuna import OptunaSearch


class OptunaSearchAdapter(OptunaSearch):
    """Ray Tune's `OptunaSearch` with its study and its Optuna trials in public names."""

    @property
    def optuna_study(self) -> optuna.Study:
        """The Optuna study the searcher asks and tells (Ray creates it with the search space)."""
        if self._ot_study is None:
            raise RuntimeError("the searcher has no Optuna study before Ray Tune sets its search space")
        return self._ot_study

    @property
    def optuna_trials(self) -> Mapping[str, optuna.Trial]:
        """The live Optuna trial of each Tune trial id the searcher has not told yet."""
        return self._ot_trials

    def forget_optuna_trial(self, trial_id: str) -> optuna.Trial:
        """Take a trial the searcher will not tell out of its books (it is closed by the caller)."""
        return self._ot_trials.pop(trial_id)

    def told(self, trial_id: str) -> bool:
        """Whether the searcher has told Optuna the outcome of this Tune trial."""
        return trial_id in self._completed_trials
