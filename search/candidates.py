"""What becomes of a proposed candidate that is not to be trained or scored: both strategies close
it at once, the same way, and stop asking after the same number of such proposals in a row.

A candidate over the budget is closed as infeasible with the worst values (it is never
trained, and the sampler learns to avoid it); one whose design was trained (or scored)
already is closed as a duplicate with the earlier trial's values, or failed while that trial
is still running (it has no value yet).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from .settings import DUPLICATE, INFEASIBLE

#: Proposals in a row that are over the budget or trained already, after which a search stops
#: asking: the budget (or a small space) leaves nothing new to propose.
SKIPS_IN_A_ROW = 200

#: The earlier trial of a design: its values (None while it still runs) and its number.
Earlier = tuple[Sequence[float] | None, int]


def worst_values(objectives: Sequence[str], flops: int) -> list[float]:
    """The values an infeasible candidate is closed with: no accuracy, its own FLOPs."""
    return [0.0 if o == "accuracy" else float(flops) for o in objectives]


@dataclass
class Skips:
    """Proposals closed without training, by status, and whether `SKIPS_IN_A_ROW` came in a row."""

    counts: dict[str, int] = field(default_factory=lambda: {INFEASIBLE: 0, DUPLICATE: 0})
    in_a_row: int = 0

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= SKIPS_IN_A_ROW

    def taken(self) -> None:
        self.in_a_row = 0

    def close(self, trial: optuna.Trial, config: dict, objectives: Sequence[str], earlier: Earlier | None,
              tell: Callable[[optuna.Trial, Sequence[float] | None], object]) -> None:
        """Close a proposal that is infeasible (`config["status"]`) or repeats `earlier`, through
        `tell(trial, values)` (values None: fail it), and count it."""
        values: Sequence[float] | None
        if config["status"] == INFEASIBLE:
            status, values = INFEASIBLE, worst_values(objectives, config["flops"])
        else:
            assert earlier is not None, "only infeasible candidates and duplicates are closed"
            status, (values, number) = DUPLICATE, earlier
            trial.set_user_attr("duplicate_of", number)
        trial.set_user_attr("status", status)
        tell(trial, values)
        self.counts[status] += 1
        self.in_a_row += 1


def tell_values(study: optuna.Study, trial: optuna.Trial, values: Sequence[float] | None) -> optuna.trial.FrozenTrial:
    """Tell `study` a trial's values, or fail it when there are none."""
    if values is None:
        return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, list(values) if len(values) > 1 else values[0])


def exhausted_message(what: str) -> str:
    return (f"the sampler proposed only candidates over the budget or {what} already, {SKIPS_IN_A_ROW} times in a "
            f"row: the budget (or the space) leaves nothing new")


__all__ = ["SKIPS_IN_A_ROW", "Skips", "exhausted_message", "tell_values", "worst_values"]
