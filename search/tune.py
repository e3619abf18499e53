"""The pieces Ray Tune runs: the trial function, the define-by-run space, and an Optuna
searcher that closes infeasible and duplicate candidates at once, so they are never scheduled.

They live in an importable module (not `__main__`) so that Ray workers and a resumed driver
can import them.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from localvit.spec import ArchSpec
from proxy.protocol import ProxyProtocol, project_to_proxy
from proxy.training import train_proxy
from space.budget import Budget
from space.cost import model_cost, target_cost
from space.space import Space

from .candidates import Skips, tell_values
from .optuna_adapter import record_constraints, storage_of
from .optuna_adapter import trial_id as stored_id
from .ray_adapter import OptunaSearchAdapter
from .settings import INFEASIBLE, LOST, TRAIN
from .stop import STOP
from .studies import DRIVER, enqueue_again


def train_candidate(config: dict[str, Any]) -> None:
    """Ray Tune trial: proxy-train one spec and report validation top-1 (%) after every epoch.

    A candidate that fails by itself (a non-finite loss, an error in its model) reports its
    reason and ends normally, so that Tune never retries it; only a lost node or worker (an
    error Tune sees) is retried. The first report, before any epoch, says where the trial runs."""
    protocol = ProxyProtocol.from_dict(config["protocol"])
    start, cpu_start = time.perf_counter(), time.process_time()
    curve: list[float] = []
    device = trial_device()
    constant = {"flops": config["flops"], "params": config["params"], "device": device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    tune.report({"epoch": 0, "val_acc_curve": [], "wall_time_s": 0.0, **constant})

    def report(epoch: int, val_acc: float, extra: dict) -> None:
        curve.append(round(100 * val_acc, 3))
        tune.report({"accuracy": curve[-1], "epoch": epoch, "val_acc_curve": list(curve),
                     "wall_time_s": time.perf_counter() - start, "cpu_time_s": time.process_time() - cpu_start,
                     "train_loss": extra.get("train_loss"), "images_per_s": extra.get("images_per_s"),
                     "precision": extra.get("precision"), **constant})

    try:
        train_proxy(config["spec"], protocol.replace(seed=config.get("seed", protocol.seed)), report=report,
                    device=device)
    except Exception as err:
        tune.report({"failure": f"{type(err).__name__}: {err}", "epoch": len(curve), "val_acc_curve": curve,
                     "wall_time_s": time.perf_counter() - start, **constant})


def trial_device() -> str:
    """The device Ray assigned to this trial: its GPU when it was given one, else the CPU, with
    every GPU hidden so that a CPU-only trial never touches one (Ray does not hide them)."""
    import torch

    if ray.get_gpu_ids():  # Ray has set CUDA_VISIBLE_DEVICES to the assigned GPU(s)
        return "cuda" if torch.cuda.is_available() else "cpu"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return "cpu"


def confirm_candidate(config: dict[str, Any]) -> None:
    """Ray Tune trial of the confirmation runs: the candidate travels as one grid value."""
    train_candidate(config["candidate"])


class DefineByRun:
    """The define-by-run function OptunaSearch calls: a spec, its costs and the verdict."""

    def __init__(self, space: Space, budget: Budget, protocol: ProxyProtocol, baselines: dict[str, ArchSpec],
                 data_shape: tuple[int, int], measure_throughput: Any = None) -> None:
        self.space, self.budget, self.protocol = space, budget, protocol
        self.baselines, self.measure_throughput = baselines, measure_throughput
        self.in_chans, self.num_classes = data_shape

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        baseline = trial.user_attrs.get("baseline")
        spec = self.baselines[baseline] if baseline else self.space.suggest(trial)
        cost = target_cost(spec)
        violations = self.budget.violations(cost)
        proxy = model_cost(project_to_proxy(spec, self.protocol, in_chans=self.in_chans,
                                            num_classes=self.num_classes))
        attrs: dict[str, Any] = {"spec": spec.to_json(), "spec_id": spec.id, "flops": cost.flops,
                                 "params": cost.params, "proxy_flops": proxy.flops, "proxy_params": proxy.params}
        if self.budget.min_throughput and all(v <= 0 for v in violations.values()):
            images_per_s = self.measure_throughput(spec).images_per_s
            attrs["throughput"] = images_per_s
            violations["min_throughput"] = self.budget.throughput_violation(images_per_s)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if violations:
            record_constraints(trial, violations)
        status = TRAIN if all(v <= 0 for v in violations.values()) else INFEASIBLE
        return {"spec": spec.to_json(), "status": status, "flops": cost.flops, "params": cost.params,
                "baseline": baseline or "", "protocol": self.protocol.to_dict()}


class BaselineSparingASHA(ASHAScheduler):
    """ASHA that records baselines in its rungs but never stops them: every report compares
    the search against baselines trained to the full proxy budget."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if trial.config.get("baseline") else decision


class ConstrainedOptunaSearch(OptunaSearchAdapter):
    """OptunaSearch that never schedules a candidate the budget rules out or that was trained
    already: such an Optuna trial is closed at once (infeasible: worst value, with its
    constraints; duplicate: the earlier trial's values) and the sampler is asked again.

    It also decides when the search has its `target` trained trials (Tune runs it with no
    sample limit): a trial lost to the infrastructure after its retries does not count; its
    candidate is queued again and proposed next. More lost trials than the target mean a
    broken cluster: the search then stops proposing."""

    def __init__(self, *args: Any, objectives: tuple[str, ...], full_epochs: int, target: int,
                 elsewhere: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objectives, self.full_epochs, self.target = objectives, full_epochs, target
        self.elsewhere = elsewhere  # trials other drivers of the study trained since the start, and run now
        self.skips = Skips()  # candidates closed at once: over the budget, or trained already
        self.finished = self.lost = 0  # trials that trained (or failed by themselves); trials lost
        self._active: set[str] = set()  # Tune trial ids scheduled and not finished
        self._last_results: dict[str, dict] = {}
        self._reported: dict[str, int] = {}  # epochs reported to Optuna per Tune trial
        self._retries: dict[str, list[str]] = {}
        self._lost_pending: dict[str, Any] = {}  # lost trials, closed when their reason is known
        self._scheduled: set[int] = set()  # Optuna trial numbers this searcher sent to Ray

    # Ray annotates suggest as returning dict | None, but its searchers return Searcher.FINISHED (a str) too.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        trained_elsewhere, running_elsewhere = self.elsewhere() if self.elsewhere else (0, 0)
        finished = self.finished + trained_elsewhere
        if STOP.requested or finished >= self.target or self.lost > self.target or self.skips.exhausted:
            return Searcher.FINISHED if not self._active else None
        if finished + running_elsewhere + len(self._active) >= self.target:
            return None  # wait: a running trial may yet be lost and need a replacement
        while not self.skips.exhausted:
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            number = self.optuna_trials[trial_id].number
            earlier = self._trained_value(config["spec"], number) if config["status"] == TRAIN else None
            if config["status"] == TRAIN and earlier is None:
                self.skips.taken()
                self._scheduled.add(number)
                self._active.add(trial_id)
                return config
            self.skips.close(self.forget_optuna_trial(trial_id), config, self.objectives, earlier,
                             lambda trial, values: tell_values(self.optuna_study, trial, values))
        return Searcher.FINISHED if not self._active else None

    def _trained_value(self, spec_json: str, trial_number: int) -> tuple[list[float] | None, int] | None:
        """The earlier trial of the same spec that trained (its values) or is training here or in
        another driver (None)."""
        spec_id = ArchSpec.from_json(spec_json).id
        for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == trial_number or t.user_attrs.get("spec_id") != spec_id:
                continue
            if t.state == TrialState.RUNNING and (t.number in self._scheduled or DRIVER in t.system_attrs):
                return None, t.number
            if t.state == TrialState.COMPLETE and t.user_attrs.get("full_fidelity") \
                    and t.user_attrs.get("status") == TRAIN:
                return t.values, t.number
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = result
        self._report_curve(trial_id, result)

    def _report_curve(self, trial_id: str, result: dict) -> None:
        """Each epoch's validation top-1 as an intermediate value at step = epoch (the curve the
        dashboard draws), the epoch ASHA stopped a trial on included: Tune hands that result to
        `on_trial_complete` only. Multi-objective studies cannot report."""
        ot_trial = self.optuna_trials.get(trial_id)
        if ot_trial is None or isinstance(self.metric, list) or self.told(trial_id):
            return  # a result Tune relays after the trial was told cannot be reported
        curve = result.get("val_acc_curve") or []
        done = self._reported.get(trial_id, 0)
        for epoch, accuracy in enumerate(curve[done:], start=done + 1):
            if math.isfinite(accuracy):
                ot_trial.report(accuracy, epoch)
        self._reported[trial_id] = max(done, len(curve))

    def record_retry(self, trial_id: str, reason: str) -> None:
        """Tune restarts a trial whose node or worker was lost: note why on its Optuna trial."""
        self._retries.setdefault(trial_id, []).append(reason)
        ot_trial = self.optuna_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("retries", list(self._retries[trial_id]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """`error` is only ever an infrastructure loss with the retries spent (a candidate's own
        failure arrives as a result with `failure`): it waits for `close_lost` and its reason."""
        self._active.discard(trial_id)
        last = {**self._last_results.pop(trial_id, {}), **(result or {})}
        if STOP.requested and not error and not last.get("failure") \
                and int(last.get("epoch") or 0) < self.full_epochs:
            return  # stopped by a signal, not trained: left running, closed and queued again (`search.stop`)
        self._report_curve(trial_id, last)
        self._reported.pop(trial_id, None)
        ot_trial = self.optuna_trials.get(trial_id)
        if ot_trial is not None:
            epochs = int(last.get("epoch") or 0)
            ot_trial.set_user_attr("status", LOST if error else TRAIN)
            ot_trial.set_user_attr("fidelity", "trained")
            ot_trial.set_user_attr("epochs_trained", epochs)
            ot_trial.set_user_attr("full_fidelity", epochs >= self.full_epochs and not error)
            ot_trial.set_user_attr("val_acc_curve", list(last.get("val_acc_curve") or []))
            ot_trial.set_user_attr("wall_time_s", round(float(last.get("wall_time_s") or 0.0), 1))
            ot_trial.set_user_attr("cpu_time_s", round(float(last.get("cpu_time_s") or 0.0), 1))
            if last.get("precision"):
                ot_trial.set_user_attr("precision", last["precision"])
            for key in ("node_ip", "device", "gpu_ids"):
                if last.get(key) is not None:
                    ot_trial.set_user_attr(key, last[key])
            if last.get("images_per_s"):
                ot_trial.set_user_attr("train_images_per_s", round(float(last["images_per_s"]), 1))
            if last.get("failure"):
                ot_trial.set_user_attr("failure", last["failure"])
        if error:
            self.lost += 1
            self._lost_pending[trial_id] = ot_trial
            return
        self.finished += 1
        if last.get("failure"):
            super().on_trial_complete(trial_id, None, error=True)
        else:
            super().on_trial_complete(trial_id, last, error)

    def close_lost(self, trial_id: str, reason: str) -> None:
        """Fail a lost trial with its reason and queue its candidate again, first in line."""
        ot_trial = self._lost_pending.pop(trial_id, None)
        if ot_trial is None:
            return
        ot_trial.set_user_attr("failure", reason)
        super().on_trial_complete(trial_id, None, error=True)
        enqueue_again(self.optuna_study, storage_of(self.optuna_study).get_trial(stored_id(ot_trial)))
