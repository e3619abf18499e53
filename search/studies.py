"""The study of a search: opened (or checked against the search that made it), what a crash left
running closed and queued again, the baselines and the paper's designs queued first, and the
`Plan` that `driver.prepare` checked.

The Optuna storage is the single source of truth: a search that is run again with the same
study (or `--resume`) continues from what the storage holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from localvit.backbones import BASELINE_NAMES, baseline_spec, localvit_spec
from localvit.cli import log
from localvit.spec import ArchSpec
from proxy.runtime import precision_record
from space.budget import Bounds
from space.cost import target_cost
from space.space import ListSpace, Space

from .cluster import planned_device
from .optuna_adapter import fail_with
from .rank_by import RankBy
from .samplers import make_sampler
from .settings import TRAIN, SearchSettings

@dataclass(frozen=True)
class Plan:
    """What `prepare` checked and opened: the space, its cost bounds and the study."""

    space: Space
    bounds: Bounds
    study: optuna.Study
    data_shape: tuple[int, int]  # the proxy data's (channels, classes)
    rank_by: RankBy  # what the candidates are ranked by (`search.rank_by`)



def open_study(settings: SearchSettings, space: Space, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create the study, or load it and check that it was made by the same kind of search."""
    directions: list[Literal["maximize", "minimize"]] = [
        "maximize" if o == "accuracy" else "minimize" for o in settings.objectives]
    exists = any(s.study_name == settings.study for s in storage.get_all_studies())
    held = 0
    here = precision_record(settings.protocol.precision, planned_device(settings))
    if exists:
        previous = optuna.load_study(study_name=settings.study, storage=storage)
        _check_same_search(settings, previous.user_attrs.get("settings", {}))
        held = len(previous.get_trials(deepcopy=False))
        first = previous.user_attrs.get("precision")
        if first and first["resolved"] != here["resolved"]:
            log(f"warning: precision={here['requested']} resolves to {here['resolved']} on this machine "
                f"({here['cpu']}), but study {settings.study!r} was started where it resolved to "
                f"{first['resolved']} ({first['cpu']}): trials trained from now on are not comparable with the "
                f"earlier ones at equal precision")
            previous.set_user_attr("precision_changed", [*previous.user_attrs.get("precision_changed", []), here])
    study = optuna.create_study(study_name=settings.study, storage=storage, directions=directions,
                                sampler=make_sampler(settings, space, offset=held), load_if_exists=True)
    if not exists:
        study.set_metric_names(list(settings.objectives))
        study.set_user_attr("settings", settings.to_dict())
        study.set_user_attr("proxy_protocol", settings.protocol.to_dict())
        study.set_user_attr("objectives", list(settings.objectives))
        study.set_user_attr("precision", here)
    return study


def _check_same_search(settings: SearchSettings, recorded: dict[str, Any]) -> None:
    current = settings.to_dict()
    recorded = {"strategy": "train", **recorded}  # studies made before the strategies existed
    for key in ("space", "backbone", "objectives", "sampler", "protocol", "strategy"):
        if recorded.get(key) != current[key]:
            shown = "the proxy protocol" if key == "protocol" else f"{key}={current[key]!r}"
            raise ValueError(f"{shown} differs from what study {settings.study!r} was made with; accepted: the "
                             f"same settings to resume, or a new --study")


def close_interrupted(study: optuna.Study) -> int:
    """Close trials a crash left RUNNING as failed and queue their candidates again, ahead of
    the candidates that were still waiting (those are re-queued behind them), so that an
    interrupted candidate is never pushed out of the trials asked for."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial, status in [(t, "interrupted") for t in running] + [(t, "requeued") for t in waiting]:
        reason = ("interrupted (the driver stopped)" if status == "interrupted"
                  else "queued again behind the interrupted")
        fail_with(study, trial, {"failure": reason, "status": status})
        keep = ("baseline", "warm_start", "oneshot_rank", "supernet_accuracy", "supernet_trial")
        attrs: dict[str, Any] = {k: trial.user_attrs[k] for k in keep if k in trial.user_attrs}
        study.enqueue_trial(trial.params or trial.system_attrs.get("fixed_params", {}), user_attrs=attrs,
                            skip_if_exists=False)
    return len(running)


def trained_count(study: optuna.Study) -> int:
    """Trials that trained or failed for real (not infeasible, duplicate or interrupted)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get("status") == TRAIN and t.state in (TrialState.COMPLETE, TrialState.FAIL))


def paper_baselines(settings: SearchSettings) -> dict[str, ArchSpec]:
    """The paper's LocalViT and baseline models of the backbone, at the target resolution."""
    localvit, baseline = BASELINE_NAMES[settings.backbone]
    return {localvit: localvit_spec(settings.backbone), baseline: baseline_spec(settings.backbone)}


def enqueue_warm_starts(study: optuna.Study, settings: SearchSettings, space: Space,
                        baselines: dict[str, ArchSpec]) -> list[str]:
    """Queue up to `warm_start` rows of the paper's tables that the space holds and the budget
    admits, closest to the FLOP budget first: strong, known designs for the sampler to learn from."""
    if not settings.warm_start or isinstance(space, ListSpace) or study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)):
        return []
    taken = set(baselines.values())
    rows = [(name, spec) for name, spec in ListSpace().points.items()
            if spec not in taken and space.contains(spec) and settings.budget.admits(spec)]
    rows.sort(key=lambda row: -target_cost(row[1]).flops)
    for name, spec in rows[:settings.warm_start]:
        study.enqueue_trial(space.to_params(spec), user_attrs={"warm_start": name})
    return [name for name, _ in rows[:settings.warm_start]]


def enqueue_baselines(study: optuna.Study, settings: SearchSettings, space: Space,
                      baselines: dict[str, ArchSpec]) -> list[str]:
    """Queue the baselines that fit the budget and are not in the study yet (they run first)."""
    present = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
    queued = []
    for name, spec in baselines.items():
        if name in present or not settings.budget.admits(spec):
            continue
        params = space.to_params(spec) if space.contains(spec) else {}
        study.enqueue_trial(params, user_attrs={"baseline": name})
        queued.append(name)
    return queued
