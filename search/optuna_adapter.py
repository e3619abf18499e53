"""Every use of Optuna's private names, in one place.

The search writes to trials it holds only as `FrozenTrial`s (closing trials a crash left
running, storing a trial finished in memory into the waiting trial it was queued as) and keeps
the `constraints` system attribute optuna-dashboard reads; Optuna's public API covers neither.
These functions reach the storage behind a study and the id behind a trial; they were tested
with the Optuna versions `pyproject.toml` admits, so an upgrade that renames them fails here,
in the adapter's tests, and nowhere else.
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

TrialRef = optuna.Trial | FrozenTrial

#: RDBStorage's private methods that Optuna's cache in front of it (`_CachedStorage`: asking,
#: suggesting, listing trials) calls: a wrapper of the storage covers them as it covers the public.
PRIVATE_STORAGE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
                         "_get_stale_trial_ids")


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (what Ray Tune's OptunaSearch takes as `storage`)."""
    return study._storage


def trial_id(trial: TrialRef) -> int:
    """The storage's id of a trial (unique across the studies of a storage; numbers are per study)."""
    return trial._trial_id


def set_system_attr(storage: BaseStorage, trial: TrialRef, key: str, value: Any) -> None:
    """A system attribute on a live or frozen trial (Optuna 5 removed `Trial.set_system_attr`)."""
    storage.set_trial_system_attr(trial_id(trial), key, value)


def admits(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` (external form) lies in `distribution`: a parent's value may not, once the
    space changed (Optuna's check is private: `_contains`; a choice no longer offered raises)."""
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except ValueError:
        return False


def record_constraints(trial: optuna.Trial, violations: Mapping[str, float]) -> None:
    """Constraints both ways: Optuna 5's `set_constraint` (feasible when <= 0) and the list under
    `constraints` that optuna-dashboard 0.21 reads (without it the dashboard shows every trial
    as feasible)."""
    for name, value in violations.items():
        trial.set_constraint(name, value)
    set_system_attr(trial.storage, trial, "constraints", list(violations.values()))


def fail_with(study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]) -> None:
    """Close a trial of the study (running or waiting) as FAIL, with user attributes that say why."""
    storage = storage_of(study)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id(trial), key, value)
    storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)


def heartbeat_storage(study: optuna.Study) -> BaseHeartbeat:
    """The study's storage as Optuna's heartbeat interface (an RDB storage, cached or not); a
    TypeError for a storage without heartbeats (in memory, a journal file)."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat):
        raise TypeError(f"storage {type(storage).__name__} has no heartbeats; accepted: an RDB storage")
    return storage


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the grace period of the
    study's storage (an RDB storage opened with `heartbeat_interval`), judged by the database's
    clock; trials that never beat are not among them."""
    return heartbeat_storage(study)._get_stale_trial_ids(study._study_id)


def fill_waiting(study: optuna.Study, waiting_id: int, finished: FrozenTrial) -> bool:
    """Write a trial finished elsewhere (an in-memory copy of the study) into the study's waiting
    trial `waiting_id`, claimed first so that no other driver takes it; False when another
    process had claimed it (then nothing is written)."""
    storage = storage_of(study)
    if not storage.set_trial_state_values(waiting_id, TrialState.RUNNING):
        return False
    for name, value in finished.params.items():
        distribution = finished.distributions[name]
        storage.set_trial_param(waiting_id, name, distribution.to_internal_repr(value), distribution)
    for key, value in finished.user_attrs.items():
        storage.set_trial_user_attr(waiting_id, key, value)
    for key, value in finished.system_attrs.items():
        storage.set_trial_system_attr(waiting_id, key, value)
    storage.set_trial_state_values(waiting_id, finished.state, finished.values)
    return True


__all__ = ["PRIVATE_STORAGE_CALLS", "admits", "fail_with", "fill_waiting", "heartbeat_storage", "record_constraints",
           "set_system_attr", "stale_trial_ids", "storage_of", "trial_id"]
