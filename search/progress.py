"""One line per event instead of Ray's wall of logs: trials done, running, stopped early,
failed, retried, skipped as infeasible; the best so far against the baselines; time left."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import optuna
from ray.tune import Callback

from localvit.spec import ArchSpec

from .cluster import lost_reason
from .settings import SearchSettings


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Progress(Callback):
    def __init__(self, study: optuna.Study, settings: SearchSettings, searcher: Any, total: int,
                 out: TextIO | None = None) -> None:
        self.study, self.settings, self.searcher, self.total = study, settings, searcher, total
        self.out = out or sys.stdout  # the console, while Ray's own output goes to its log
        self.start = time.time()
        self.running: dict[str, str] = {}
        self.done = self.stopped = self.failed = self.retried = self.lost = 0
        self.best: tuple[float, str] | None = None
        self.baselines: dict[str, float] = {}
        self.durations: list[float] = []

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into tuner.pkl: leave the console out."""
        return {**self.__dict__, "out": None}

    def _name(self, trial: Any) -> str:
        spec = trial.config.get("spec", "")
        return ArchSpec.from_json(spec).id if spec else trial.trial_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running[trial.trial_id] = self._name(trial)
        self._line(f"started {self.running[trial.trial_id]}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial, "failed" if trial.last_result.get("failure") else "done")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune restarts a trial its node or worker took down: say why, note it on the trial."""
        reason = self._lost_reason(trial)
        self.searcher.record_retry(trial.trial_id, reason)
        self.retried += 1
        self.running.pop(trial.trial_id, None)
        self._line(f"retrying {self._name(trial)} on another node: {reason}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Only infrastructure losses get here (a candidate's own failure is a result): the
        retries are spent; the candidate is queued again and does not count as a trial."""
        reason = f"{self._lost_reason(trial)}, after {self.settings.max_retries} retries"
        self.searcher.close_lost(trial.trial_id, reason)
        self.lost += 1
        self.running.pop(trial.trial_id, None)
        self._line(f"lost {self._name(trial)}: {reason}; queued again")

    @staticmethod
    def _lost_reason(trial: Any) -> str:
        result = trial.last_result or {}
        try:
            error = trial.get_pickled_error()
        except Exception as err:  # the error file is Tune's; a reason without its text is still a reason
            print(f"the error of trial {trial.trial_id} cannot be read: {err!r}", file=sys.stderr)  # to Ray's log
            error = None
        return lost_reason(error, result.get("node_ip"), int(result.get("epoch") or 0) + 1)

    def _finished(self, trial: Any, outcome: str) -> None:
        name = self.running.pop(trial.trial_id, trial.trial_id)
        result = trial.last_result or {}
        epochs, accuracy = result.get("epoch", 0), result.get("accuracy")
        if outcome == "failed":
            self.failed += 1
            detail = result.get("failure", "error")
        else:
            self.done += 1
            full = epochs >= self.settings.protocol.epochs
            self.stopped += not full
            self.durations.append(result.get("wall_time_s", 0.0))
            baseline = self._baseline_of(name)
            if baseline:
                if accuracy is not None:  # a trial can end before it reports one
                    self.baselines[baseline] = accuracy
            elif full and accuracy is not None and (self.best is None or accuracy > self.best[0]):
                self.best = (accuracy, name)
            detail = f"{accuracy:.2f}% after {epochs} epoch(s)" + ("" if full else " (stopped early by ASHA)") \
                + (f" [{baseline}]" if baseline else "")
        self._line(f"{outcome} {name}: {detail}")

    def _baseline_of(self, spec_id: str) -> str | None:
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("spec_id") == spec_id and t.user_attrs.get("baseline"):
                return t.user_attrs["baseline"]
        return None

    def _line(self, event: str) -> None:
        elapsed = time.time() - self.start
        finished = self.done + self.failed
        left = ""
        if self.durations and finished < self.total:
            mean = sum(self.durations) / len(self.durations)
            left = f", ~{_clock(mean * (self.total - finished) / (self.settings.workers or 1))} left (mm:ss)"
        best = f"best {self.best[0]:.2f}% ({self.best[1]})" if self.best else "best -"
        bases = " ".join(f"{k} {v:.2f}%" for k, v in self.baselines.items())
        skipped = self.searcher.skips.counts
        lost = f", {self.retried} retried, {self.lost} lost" if self.retried or self.lost else ""
        print(f"[{_clock(elapsed)}] {finished}/{self.total} trained ({self.stopped} stopped early, {self.failed} "
              f"failed{lost}), {len(self.running)} running, {skipped['infeasible']} infeasible skipped | {best}"
              f"{' vs ' + bases if bases else ''}{left} | {event}", file=self.out, flush=True)

    def finish(self) -> None:
        self._line("search finished")
