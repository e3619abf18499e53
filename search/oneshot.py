"""The one-shot strategy of a search (`--strategy oneshot`).

1. Train the space's supernet on the proxy, or reuse it: it is kept under
   `<results-dir>/.supernets/<key>.pt`, keyed by the space, the proxy protocol (its seed
   included), the epochs and the subnet sampling, checkpointed every epoch, so a killed
   search resumes it. One driver trains it at a time (a lock file beside it); the other
   drivers of a study wait for it and reuse it.
2. Score the candidates the study's sampler proposes with inherited weights, on Ray actors
   that each load the supernet once and score a chunk of candidates per call, the next chunk
   queued behind the running one. Every candidate is an Optuna trial of the study: over budget
   ones are closed as infeasible and never scored; scored ones carry `status` and `fidelity` =
   `supernet`. The sampler asks an in-memory copy of the study and a trial is stored once
   finished, so a kill loses only unscored candidates in flight and nothing is scored twice.
3. Queue the top-k distinct candidates for proxy training from scratch; the driver then trains
   them with the LocalViT baselines as Ray Tune trials and confirms the best with other seeds.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from localvit.cli import log
from localvit.spec import ArchSpec
from proxy.data import get_proxy_data
from proxy.protocol import ProxyProtocol
from proxy.supernet import check_checkpoint, load_supernet, score, space_supernet, train_supernet, training_key
from proxy.training import TrainingStopped
from space.space import Space, make_space

from .candidates import Skips, exhausted_message, tell_values
from .optuna_adapter import fill_waiting, trial_id
from .rank_by import of_study, ranked
from .stop import STOP
from .settings import DUPLICATE, INFEASIBLE, SUPERNET, SearchSettings
from .studies import BEATS_PER_GRACE, Plan, driver_record, gone_here
from .tune import DefineByRun, trial_device

#: Candidates per actor call: Ray's overhead per call (milliseconds) is paid once for them.
CHUNK = 4
#: Calls sent to an actor ahead of its results: it starts the next chunk while the driver records
#: the last one and asks the sampler for more.
CALLS_AHEAD = 2


def supernet_checkpoint(settings: SearchSettings, space: Space, data_shape: tuple[int, int]
                        ) -> tuple[Path, dict[str, Any]]:
    """Where the supernet of this search is kept, and what it is keyed by. Raises ValueError when
    the space cannot be held by a supernet, or the checkpoint there is another space's."""
    supernet = space_supernet(space, settings.protocol, data_shape)
    key = training_key(space, supernet, settings.protocol, settings.supernet_epochs, settings.supernet_sampling)
    path = Path(settings.supernet_checkpoint or settings.study_dir.parent / ".supernets" / f"{key['digest']}.pt")
    check_checkpoint(path, key)
    return path, key


@contextmanager
def checkpoint_lock(path: Path, grace_s: float) -> Iterator[None]:
    """Hold `<checkpoint>.lock` inside, so that one driver trains a supernet and the others of a
    study wait for it, then reuse its checkpoint. The lock file names its driver and is touched
    every `grace_s / BEATS_PER_GRACE` seconds; a lock not touched for `grace_s`, or whose driver
    ended on this machine, is taken over (the checkpoint holds the last finished epoch)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    record, said = driver_record(), False
    while True:
        try:
            with open(lock, "x") as file:
                json.dump(record, file)
            break
        except FileExistsError:
            pass
        try:
            owner = json.loads(lock.read_text() or "{}")
            age = time.time() - lock.stat().st_mtime
        except (OSError, ValueError):  # released, or being written, just now
            continue
        if age > grace_s or gone_here(owner):
            _remove(lock, owner)
            continue
        if not said:
            log(f"supernet {path.name} is being trained by the driver {owner.get('host')}:{owner.get('pid')} (its lock "
                f"touched {age:.0f} s ago): waiting for its checkpoint")
            said = True
        if STOP.requested:
            raise TrainingStopped
        time.sleep(1.0)
    done = threading.Event()

    def touch() -> None:
        while not done.wait(max(1.0, grace_s / BEATS_PER_GRACE)):
            with suppress(OSError):
                os.utime(lock)
    toucher = threading.Thread(target=touch, name="supernet-lock", daemon=True)
    toucher.start()
    try:
        yield
    finally:
        done.set()
        toucher.join()
        _remove(lock, record)


def _remove(lock: Path, owner: dict) -> None:
    """Remove the lock when it is still `owner`'s (another driver may have taken it over)."""
    with suppress(OSError, ValueError):
        if json.loads(lock.read_text() or "{}") == owner:
            lock.unlink()


def ensure_supernet(settings: SearchSettings, plan: Plan, threads: int, device: str = "cpu") -> Path:
    """Train the supernet (or resume or reuse it) in this process, with `threads` threads, on
    `device`; another driver training it is waited for (`checkpoint_lock`)."""
    path, key = supernet_checkpoint(settings, plan.space, plan.data_shape)
    with checkpoint_lock(path, settings.heartbeat_grace_s):
        try:
            return _train_supernet(settings, plan, threads, path, key, device)
        finally:
            if torch.device(device).type == "cuda":  # the scoring actors and the top-k trials share the GPU next
                get_proxy_data(settings.protocol.data_config()).release(device)
                torch.cuda.empty_cache()


def _train_supernet(settings: SearchSettings, plan: Plan, threads: int, path: Path, key: dict[str, Any],
                    device: str) -> Path:
    data = get_proxy_data(settings.protocol.data_config())
    started = time.perf_counter()

    def report(epoch: int, figures: dict[str, Any]) -> None:
        log(f"supernet epoch {epoch}/{settings.supernet_epochs}: loss {figures['train_loss']:.3f}, "
            f"{figures['subnets']} subnets, {figures['seconds']:.0f} s")

    log(f"supernet {key['digest']} ({key['supernet']['params'] / 1e6:.2f}M shared params, on {device}): {path}")
    _, history = train_supernet(plan.space, settings.protocol.replace(threads=threads), data,
                                epochs=settings.supernet_epochs, sampling=settings.supernet_sampling,
                                checkpoint=path, report=report, stop=lambda: STOP.requested, device=device)
    devices = sorted({h["device"] for h in history if "device" in h})  # where each epoch trained, run by run
    plan.study.set_user_attr("supernet", {"key": key["digest"], "path": str(path), "epochs": len(history),
                                          "device": ", ".join(devices) or None,
                                          "train_s": round(sum(h["seconds"] for h in history), 1),
                                          "trained_now_s": round(time.perf_counter() - started, 1)})
    return path


class SupernetEvaluator:
    """What a Ray actor holds: the trained supernet and the proxy data, loaded once, on the GPU Ray
    gave the actor, else the CPU."""

    def __init__(self, space: str, backbone: str, protocol: dict[str, Any], checkpoint: str, epochs: int,
                 sampling: str, recalibration_images: int, score_images: int) -> None:
        self.protocol = ProxyProtocol.from_dict(protocol)
        if self.protocol.threads:
            torch.set_num_threads(self.protocol.threads)
        self.space = make_space(space, backbone)
        self.data = get_proxy_data(self.protocol.data_config())
        self.device = trial_device()
        self.supernet = load_supernet(self.space, self.protocol, (self.data.in_chans, self.data.num_classes),
                                      checkpoint, epochs, sampling, self.device)
        self.recalibration_images, self.score_images = recalibration_images, score_images

    def where(self) -> str:
        """The device it scores on (`cuda` where Ray gave it a GPU)."""
        return self.device

    def score(self, specs: list[str]) -> list[tuple[float, float]]:
        """Validation top-1 (%) and seconds of each spec (JSON), with inherited weights."""
        results = []
        for text in specs:
            started = time.perf_counter()
            accuracy = score(self.supernet, ArchSpec.from_json(text), self.data, self.protocol,
                             recalibration_images=self.recalibration_images,
                             score_images=self.score_images, seed=self.protocol.seed)
            results.append((round(100 * accuracy, 3), time.perf_counter() - started))
        return results


def supernet_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("status") == SUPERNET]


class Proposer:
    """Asks the sampler for candidates; closes the infeasible and the already scored at once
    (`search.candidates`).

    The sampler works on an in-memory copy of the study, and each finished trial is written to
    the study in one transaction: asking the stored study cost a commit per sampled parameter
    (about 80 a candidate) and a read of the stored trials per ask, which with TPE made the
    driver, not the workers, the limit of the scoring (`bench.bench_proposals`). Nothing is
    stored before it is finished, so a kill loses only candidates in flight, unscored."""

    def __init__(self, settings: SearchSettings, study: optuna.Study, define: DefineByRun) -> None:
        self.study, self.settings, self.define = study, settings, define
        self.mirror = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=study.sampler,
                                          directions=study.directions)
        stored = study.get_trials(deepcopy=False)
        finished = [t for t in stored if t.state.is_finished()]
        waiting = [t for t in stored if t.state == TrialState.WAITING]  # warm starts, re-queued candidates
        self.mirror.add_trials(finished + waiting)
        #: mirror trial number -> id of the stored waiting trial it fills
        self.queued = {len(finished) + i: trial_id(t) for i, t in enumerate(waiting)}
        #: spec id -> values and number of the trial that scored it
        self.scored = {t.user_attrs["spec_id"]: (t.values, t.number) for t in supernet_trials(study)}
        self.in_flight: dict[str, int] = {}  # spec id -> number of the (mirror) trial being scored
        self.skips = Skips()

    @property
    def exhausted(self) -> bool:
        return self.skips.exhausted

    def _values(self, accuracy: float, flops: int) -> list[float]:
        return [accuracy if o == "accuracy" else float(flops) for o in self.settings.objectives]

    def next(self) -> tuple[optuna.Trial, ArchSpec] | None:
        """The next candidate to score; None (and `exhausted`) once the sampler has proposed only
        infeasible or already scored ones `SKIPS_IN_A_ROW` times in a row (a small space, or a
        tight budget): the scoring then ends instead of asking forever."""
        while not self.skips.exhausted:
            trial = self.mirror.ask()
            config = self.define(trial)
            spec = ArchSpec.from_json(config["spec"])
            earlier = self.scored.get(spec.id) or ((None, self.in_flight[spec.id]) if spec.id in self.in_flight
                                                   else None)
            if config["status"] != INFEASIBLE and earlier is None:
                self.skips.taken()
                self.in_flight[spec.id] = trial.number
                return trial, spec
            self.skips.close(trial, config, self.settings.objectives, earlier, self._store)
        return None

    def record(self, trial: optuna.Trial, spec: ArchSpec, accuracy: float, seconds: float) -> None:
        trial.set_user_attr("status", SUPERNET)
        trial.set_user_attr("fidelity", SUPERNET)
        trial.set_user_attr("eval_s", round(seconds, 2))
        values = self._values(accuracy, trial.user_attrs["flops"])
        self._store(trial, values)
        self.scored[spec.id] = (values, trial.number)
        self.in_flight.pop(spec.id, None)

    def best(self) -> float:
        return max(values[0] for values, _ in self.scored.values())

    def _store(self, trial: optuna.Trial, values: Sequence[float] | None) -> None:
        """Tell the mirror, then write the finished trial to the study: a new trial in one
        transaction, or the waiting trial it was queued as (claimed, so no other driver takes it)."""
        frozen = tell_values(self.mirror, trial, values)
        waiting = self.queued.pop(frozen.number, None)
        if waiting is None or not fill_waiting(self.study, waiting, frozen):
            self.study.add_trial(frozen)


def evaluate_candidates(settings: SearchSettings, plan: Plan, checkpoint: Path, resources: dict[str, float],
                        define: DefineByRun, deadline: float | None, out: TextIO | None = None) -> dict[str, Any]:
    """Score candidates on Ray actors until `settings.candidates` are scored or `deadline`
    (a `time.time()`) passes; returns the figures of this run of the phase. Progress goes to
    `out` (the console, while Ray's output goes to its log)."""
    import ray

    proposer = Proposer(settings, plan.study, define)
    held = len(proposer.scored)
    if held >= settings.candidates:
        return {"scored": held, "scored_now": 0, "held_before": held, "seconds_now": 0.0, "per_s": 0.0}
    protocol = define.protocol
    evaluator = ray.remote(num_cpus=resources["cpu"], num_gpus=resources.get("gpu", 0))(SupernetEvaluator)
    # Ray types a handle's methods as the class's (no `.remote`) and kill's argument apart: left untyped.
    actors: list[Any]
    actors = [evaluator.remote(settings.space, settings.backbone, protocol.to_dict(), str(checkpoint),
                               settings.supernet_epochs, settings.supernet_sampling, settings.recalibration_images,
                               settings.score_images)
              for _ in range(settings.workers or 1)]
    calls = [0] * len(actors)  # calls sent to each actor and not yet returned
    busy: dict[Any, tuple[int, list]] = {}
    started, last_log, scored = time.time(), time.time(), 0
    try:
        while not STOP.requested:  # a signal: what was scored is stored, what is in flight was never stored
            for index, worker in enumerate(actors):  # a call queued behind the running one
                while calls[index] < CALLS_AHEAD and (deadline is None or time.time() < deadline) \
                        and not STOP.requested:
                    room = settings.candidates - len(proposer.scored) - sum(len(c) for _, c in busy.values())
                    chunk: list[tuple[optuna.Trial, ArchSpec]] = []
                    while len(chunk) < min(CHUNK, room) and not proposer.exhausted:
                        candidate = proposer.next()
                        chunk += [candidate] if candidate else []
                    if not chunk:
                        break
                    busy[worker.score.remote([spec.to_json() for _, spec in chunk])] = (index, chunk)
                    calls[index] += 1
            if not busy:
                break
            [ready], _ = ray.wait(list(busy), num_returns=1)
            index, chunk = busy.pop(ready)
            calls[index] -= 1
            for (trial, spec), (accuracy, seconds) in zip(chunk, ray.get(ready)):
                proposer.record(trial, spec, accuracy, seconds)
                scored += 1
            if time.time() - last_log > 30:
                last_log = time.time()
                log(f"scored {len(proposer.scored)}/{settings.candidates} on the supernet "
                    f"({scored / (time.time() - started):.2f}/s), best {proposer.best():.2f}%", out)
        placed, _ = ray.wait([worker.where.remote() for worker in actors], num_returns=len(actors), timeout=5.0)
        device = ", ".join(sorted(set(ray.get(placed)))) or None
    finally:
        for worker in actors:
            ray.kill(worker)
    seconds = time.time() - started
    figures = {"scored": len(proposer.scored), "scored_now": scored, "held_before": held, "device": device,
               "seconds_now": round(seconds, 1), "per_s": round(scored / seconds, 3) if seconds else 0.0,
               **{f"skipped_{k}": v for k, v in proposer.skips.counts.items()}}
    log(f"scored {scored} candidate(s) on the supernet in {seconds:.0f} s ({figures['per_s']:.2f}/s); "
        f"{proposer.skips.counts[INFEASIBLE]} over the budget and {proposer.skips.counts[DUPLICATE]} repeats closed "
        f"unscored", out)
    if proposer.exhausted:
        log(f"{exhausted_message('scored')}: scoring ended before --candidates {settings.candidates}", out)
    return figures


def layers_apart(a: ArchSpec, b: ArchSpec) -> int:
    """In how many layers two specs of one backbone choose differently."""
    return sum(x != y for x, y in zip(a.layers, b.layers))


def pick_finalists(ranked: list[ArchSpec], k: int, apart: int) -> list[int]:
    """Indices of `k` finalists from `ranked` (best first): each the best one at least `apart`
    layers from every earlier pick; when fewer qualify, the best of the rest fill up."""
    picks: list[int] = []
    for i, spec in enumerate(ranked):
        if len(picks) < k and all(layers_apart(spec, ranked[j]) >= apart for j in picks):
            picks.append(i)
    rest = [i for i in range(len(ranked)) if i not in picks]
    return sorted(picks + rest[:k - len(picks)])


def enqueue_top_k(study: optuna.Study, settings: SearchSettings, exclude: set[str]
                  ) -> list[tuple[int, FrozenTrial]]:
    """Queue the `top_k` best distinct supernet candidates, by the study's ranking (`--rank-by`),
    for proxy training from scratch (once), each `top_k_apart` layers from every better one
    (`pick_finalists`); specs in `exclude` (the baselines, trained anyway) are passed over.
    Returns their ranks and supernet trials."""
    if "oneshot_top_k" in study.user_attrs:
        return []
    scored = supernet_trials(study)
    if not scored:
        log("no candidate was scored on the supernet (the time limit passed first?): run the same command with a "
            "longer --time-limit to score some; the supernet is kept")
        return []
    order, seen = [], set(exclude)
    for t in ranked(scored, of_study(study)):
        if t.user_attrs["spec_id"] not in seen:
            seen.add(t.user_attrs["spec_id"])
            order.append(t)
    picks = pick_finalists([ArchSpec.from_json(t.user_attrs["spec"]) for t in order], settings.top_k,
                           settings.top_k_apart)
    top = [(i + 1, order[i]) for i in picks]
    for rank, t in top:
        study.enqueue_trial(t.params, user_attrs={"oneshot_rank": rank, "supernet_accuracy": t.values[0],
                                                  "supernet_trial": t.number})
    study.set_user_attr("oneshot_top_k", [t.number for _, t in top])
    return top


__all__ = ["SupernetEvaluator", "checkpoint_lock", "enqueue_top_k", "ensure_supernet", "evaluate_candidates",
           "layers_apart", "pick_finalists", "supernet_checkpoint", "supernet_trials"]
