"""The study of a search: opened (or checked against the search that made it), the `Lease` by
which many drivers share it (what a lost driver left running is closed and queued again), the
baselines and the paper's designs queued first, and the `Plan` that `driver.prepare` checked.

The Optuna storage is the single source of truth: a search that is run again with the same
study (or `--resume`), or started beside a running one, continues from what the storage holds.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from localvit.backbones import BASELINE_NAMES, baseline_spec, localvit_spec
from localvit.cli import log
from localvit.spec import ArchSpec
from proxy.runtime import precision_record
from space.budget import Bounds
from space.cost import target_cost
from space.space import ListSpace, Space

from .cluster import planned_device
from .optuna_adapter import fail_with, heartbeat_storage, set_system_attr, stale_trial_ids, storage_of, trial_id
from .rank_by import RankBy
from .samplers import GridSampler, make_sampler
from .settings import TRAIN, SearchSettings
from .stop import say
from .storage import RetryingRDBStorage

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


#: The system attribute that names the driver of a trial: who trains it, and how to tell it is gone.
DRIVER = "driver"
#: Heartbeats recorded within one grace period: a driver's trials are beaten (and other drivers'
#: checked) every `grace / BEATS_PER_GRACE` seconds.
BEATS_PER_GRACE = 6
_COPIED_ATTRS = ("baseline", "warm_start", "oneshot_rank", "supernet_accuracy", "supernet_trial")


def driver_record() -> dict[str, Any]:
    """A driver: its host and process id, the process's start time (a reused id is not it), the
    boot and process namespace it runs in (two containers may share a host name and ids), and an
    id of its own (a process may drive several studies)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time(),
            "machine": _machine(), "id": uuid.uuid4().hex[:12]}


def _machine() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # not Linux: no driver is ever judged by its process, only by its heartbeat
        return ""


def gone_here(record: Mapping[str, Any]) -> bool:
    """Whether the driver `record` names ran on this machine and its process has ended."""
    import psutil

    if not record.get("machine") or record["machine"] != _machine() or record.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(record["pid"]).create_time() - record["started"]) > 1.0
    except psutil.NoSuchProcess:
        return True


class Lease:
    """This driver's hold on the trials it runs, so that many drivers can share one study.

    Each trial the driver takes is marked with its `driver_record` and beaten in Optuna's heartbeat
    table, from a thread, every `grace / BEATS_PER_GRACE` seconds: the table's times are the
    database's clock, the one clock every node shares, and Optuna's own `fail_stale_trials` and
    `optimize` read the same table. A trial counts as crashed only on evidence that its driver is
    gone: its heartbeat silent for the grace period, or its process ended on this machine (a resume
    after kill -9 needs no wait); a RUNNING trial that never beat (a study of an older version, a
    driver killed between asking and beating) once it started more than the grace period ago. The
    same thread closes such trials of other drivers while this one runs, so a lost driver's
    candidates are queued again and trained by the living ones.

    Args:
        study: the study, as the driver reads it.
        url: its storage URL; the lease opens its own connections there.
        grace_s: seconds of silence after which a trial's driver is judged gone.
        retry_s: how long a lost database connection is retried (`--storage-retry`).
    """

    def __init__(self, study: optuna.Study, url: str, grace_s: float, retry_s: float) -> None:
        self.study, self.grace = study, max(2, math.ceil(grace_s))
        self.interval = max(1, self.grace // BEATS_PER_GRACE)
        self.record = driver_record()
        with warnings.catch_warnings():  # Optuna's heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RetryingRDBStorage(url, retry_s, heartbeat_interval=self.interval, grace_period=self.grace)
        self._study = optuna.load_study(study_name=study.study_name, storage=storage)
        self._held: set[int] = set()  # trial ids this driver runs now
        self._taken: set[int] = set()  # trial ids this driver ever ran
        self._before = {trial_id(t) for t in study.get_trials(deepcopy=False) if _trained(t)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a saved copy keeps (Ray Tune pickles its searcher): whose lease it was, no more; a
        lease lives and ends with its process."""
        return {"record": self.record}

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def hold(self, trial: optuna.Trial) -> None:
        """Mark a trial this driver has just taken as its own and beat it at once."""
        heartbeat_storage(self._study).record_heartbeat(trial_id(trial))  # first: a trial that beat is judged anywhere
        set_system_attr(storage_of(self._study), trial, DRIVER, self.record)
        with self._lock:
            self._held.add(trial_id(trial))
            self._taken.add(trial_id(trial))

    def beat(self) -> None:
        """A heartbeat for each trial this driver still runs; the finished ones are let go."""
        with self._lock:
            held = set(self._held)
        running = {trial_id(t) for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for tid in held:
            if tid in running:
                heartbeat_storage(self._study).record_heartbeat(tid)
        with self._lock:
            self._held -= held - running

    def reap(self) -> int:
        """Close the trials of drivers that are gone as failed and queue their candidates again,
        ahead of the candidates still waiting (those are re-queued behind them), so that an
        interrupted candidate is never pushed out of the trials asked for. Returns how many."""
        stale = set(stale_trial_ids(self._study))
        now = time.time()
        with self._lock:
            held = set(self._held)
        gone = []
        for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            record = t.system_attrs.get(DRIVER)
            if trial_id(t) in held or record == self.record:
                continue
            if trial_id(t) in stale or (gone_here(record) if record else
                                        t.datetime_start is not None and now - t.datetime_start.timestamp()
                                        > self.grace):
                gone.append(t)
        return self._requeue(gone, "interrupted (its driver stopped)")

    def release(self, why: str = "the driver stopped") -> int:
        """Close the trials this driver leaves running (a stop, or a loss Ray Tune stopped on) and
        queue them again, first in line."""
        with self._lock:
            held, self._held = set(self._held), set()
        mine = [t for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if trial_id(t) in held]
        return self._requeue(mine, f"interrupted ({why})")

    def elsewhere(self) -> tuple[int, int]:
        """Trials of this search that other drivers trained since this one started, and those they
        run now (`--trials` counts the study's total)."""
        trained = running = 0
        with self._lock:
            taken = set(self._taken)
        for t in self.study.get_trials(deepcopy=False):
            if trial_id(t) in taken or trial_id(t) in self._before:
                continue
            running += t.state == TrialState.RUNNING
            trained += _trained(t)
        return trained, running

    def _requeue(self, trials: list[FrozenTrial], reason: str) -> int:
        closed = []
        for t in trials:  # each closed by one driver only: the state change fails for all others
            try:
                fail_with(self._study, t, {"failure": reason, "status": "interrupted"})
                closed.append(t)
            except UpdateFinishedTrialError:
                pass
        if not closed:
            return 0
        waiting = [t for t in self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                   if storage_of(self._study).set_trial_state_values(trial_id(t), TrialState.RUNNING)]  # claimed
        for t in waiting:
            fail_with(self._study, t, {"failure": "queued again behind the interrupted", "status": "requeued"})
        for t in closed + waiting:
            enqueue_again(self._study, t, self.study.sampler)
        return len(closed)

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                closed = self.reap()
            except Exception as err:  # a database away: the main thread meets it too, and says so
                say(f"warning: no heartbeat recorded ({type(err).__name__}: {str(err).splitlines()[0]}); "
                    f"trying again in {self.interval} s")
                continue
            if closed:
                say(f"closed {closed} trial(s) of a driver that is gone (no heartbeat for {self.grace} s, or its "
                    f"process ended) and queued again the candidates they held")


def enqueue_again(study: optuna.Study, trial: FrozenTrial, sampler: optuna.samplers.BaseSampler | None = None) -> None:
    """Queue the candidate of an interrupted or lost trial again, with the attributes that say where
    it came from; nothing when it held none yet (a driver stopped between Optuna's `ask` and the
    first suggestion, before any sampler but the grid had chosen).

    Args:
        study: the study to queue it in.
        trial: the closed trial.
        sampler: the sampler the driver asks with (the grid's points are recovered from it).
    """
    params = trial.params or trial.system_attrs.get("fixed_params") or (
        sampler.grid_point(trial) if isinstance(sampler, GridSampler) else {})
    if params:
        attrs = {k: trial.user_attrs[k] for k in _COPIED_ATTRS if k in trial.user_attrs}
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def _trained(t: FrozenTrial) -> bool:
    return t.user_attrs.get("status") == TRAIN and t.state in (TrialState.COMPLETE, TrialState.FAIL)


class Holding:
    """A define-by-run function whose trials `lease` holds from the moment they are asked."""

    def __init__(self, lease: Lease, define: Callable[[optuna.Trial], dict[str, Any]]) -> None:
        self.lease, self.define = lease, define

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        self.lease.hold(trial)
        return self.define(trial)


def trained_count(study: optuna.Study) -> int:
    """Trials that trained or failed for real (not infeasible, duplicate or interrupted)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if _trained(t))


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
