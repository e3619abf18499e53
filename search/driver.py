"""One search, end to end: check the budget, prepare the study, run the trials on Ray Tune,
write the reports and export the best architectures.

A search that is run again with the same study (or `--resume`) continues from what the
storage holds (`search.studies`): trials a lost driver left RUNNING (its heartbeat silent, or
its process ended on this machine) are closed as failed and their candidates queued again, so
no trial is lost or trained twice, and the number of trained trials ends as asked. Drivers
started beside a running one join it, Optuna's way: each trains trials of its own, and
`--trials` counts the study's total.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from dataclasses import replace
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from localvit.backbones import BASELINE_NAMES
from localvit.cli import log
from localvit.spec import ArchSpec
from proxy.data import get_proxy_data
from proxy.protocol import protocol_at_rung
from proxy.training import TrainingStopped
from ranking.audits import protocol_key
from space.budget import format_count, require_feasible
from space.cost import target_cost
from space.space import ListSpace, make_space

from .candidates import exhausted_message
from .cluster import Cluster, ClusterFault, planned_device, ray_output, start_cluster, tune_loss
from .optuna_adapter import storage_of
from .rank_by import promotion_rung
from .rank_by import record as record_rank_by
from .rank_by import resolve as resolve_rank_by
from .settings import ONESHOT, SearchSettings
from .stop import STOP, resume_command, say, stopped_line
from .storage import open_storage
from .studies import (Holding, Lease, Plan, enqueue_baselines, enqueue_warm_starts, open_study,
                      paper_baselines, trained_count)
from .tune import BaselineSparingASHA, ConstrainedOptunaSearch, DefineByRun, confirm_candidate, train_candidate


# --- Ray ----------------------------------------------------------------------------------------

def needs_ray(settings: SearchSettings, plan: Plan) -> bool:
    """Whether trials remain to train (one-shot: candidates to score or finalists to train) or the
    seed confirmation is still to run."""
    attrs = plan.study.user_attrs
    if settings.strategy == ONESHOT:
        return "oneshot_top_k" not in attrs or "confirmation" not in attrs
    return (remaining_trials(settings, plan) > 0 or bool(settings.confirm_seeds and "confirmation" not in attrs)
            or (promotion_rung(settings) > 1 and "promotion" not in attrs))


def remaining_trials(settings: SearchSettings, plan: Plan) -> int:
    """Trained trials still to run for the count asked (read-only: the study is not touched)."""
    done = trained_count(plan.study)
    remaining = settings.trials - done
    if settings.sampler == "grid":
        remaining = min(remaining, plan.space.size() - done)
    return max(0, remaining)


def connect(settings: SearchSettings, plan: Plan) -> Cluster | None:
    """Start or join Ray and check it can run the trials, when there is anything to run; bad
    input (a trial bigger than any node, a node without the code, storage not shared) is a
    ValueError before the study changes."""
    return start_cluster(settings) if needs_ray(settings, plan) else None


def run_trials(settings: SearchSettings, plan: Plan, baselines: dict[str, ArchSpec], remaining: int,
               cluster: Cluster, lease: Lease) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from .progress import Progress

    settings = replace(settings, workers=cluster.workers)  # --workers, or as many as the GPUs hold
    resources = cluster.resources
    protocol = settings.protocol.replace(threads=max(1, int(resources["cpu"])))
    throughput = _throughput_measurer(settings) if settings.budget.min_throughput else None
    searcher = ConstrainedOptunaSearch(
        space=Holding(lease, DefineByRun(plan.space, settings.budget, protocol, baselines, plan.data_shape,
                                         throughput)),
        metric=list(settings.objectives) if settings.multi_objective else "accuracy",
        mode=["max" if o == "accuracy" else "min" for o in settings.objectives] if settings.multi_objective
        else "max",
        sampler=plan.study.sampler, study_name=plan.study.study_name, storage=storage_of(plan.study),
        objectives=settings.objectives, full_epochs=protocol.epochs, target=remaining, elsewhere=lease.elsewhere)
    scheduler = BaselineSparingASHA(metric="accuracy", mode="max", time_attr="epoch", max_t=protocol.epochs,
                              grace_period=settings.asha_grace, reduction_factor=2) \
        if settings.asha and protocol.epochs > settings.asha_grace \
        else FIFOScheduler()
    with ray_output(cluster.log) as console:
        progress = Progress(plan.study, settings, searcher, remaining, out=console)
        tuner = tune.Tuner(
            tune.with_resources(train_candidate, resources),
            # No sample limit: the searcher ends the search when `remaining` trials trained, not
            # counting those lost to the infrastructure.
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                        max_concurrent_trials=settings.workers, reuse_actors=True,
                                        time_budget_s=settings.time_limit_s),
            run_config=tune.RunConfig(name="ray", storage_path=cluster.storage_path, verbose=0,
                                      callbacks=[progress], progress_reporter=None,
                                      failure_config=tune.FailureConfig(max_failures=settings.max_retries)),
        )
        tuner.fit()
        progress.finish()
    if searcher.skips.exhausted:
        log(f"{exhausted_message('trained')}: the search ended with {searcher.finished} of {remaining} trials")
    if searcher.lost:
        log(f"{searcher.lost} trial(s) lost to the infrastructure after {settings.max_retries} retries each; their "
            f"candidates were queued again, to be proposed first (see Ray's log: {cluster.log})")


def _throughput_measurer(settings: SearchSettings) -> Any:
    from space.throughput import measure

    def measure_spec(spec: ArchSpec) -> Any:
        return measure(spec, batch=settings.throughput_batch, threads=settings.throughput_threads,
                       cache=settings.study_dir.parent / ".throughput_cache.jsonl")
    return measure_spec


def _train_grid(settings: SearchSettings, cluster: Cluster, configs: list[dict[str, Any]], name: str
                ) -> list[tuple[dict[str, Any], float | None]]:
    """Proxy-train each config (a candidate with its seed and protocol) as a Ray Tune grid; each
    config with its final accuracy (None where it failed)."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(confirm_candidate, cluster.resources),
        param_space={"candidate": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cluster.workers, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=cluster.storage_path, verbose=0,
                                  progress_reporter=None,
                                  failure_config=tune.FailureConfig(max_failures=settings.max_retries)))
    with ray_output(cluster.log):
        try:
            results = tuner.fit()
        except Exception as err:
            loss = tune_loss(err)
            if not loss:
                raise
            raise ClusterFault(f"Ray Tune stopped on a lost worker ({loss}) while it trained the {name} runs; the "
                               f"study keeps every trial trained; resume with: {resume_command()}") from err
    done = (results[i] for i in range(len(results)))  # ResultGrid is indexed; it declares no __iter__
    return [((result.config or {})["candidate"], (result.metrics or {}).get("accuracy")) for result in done]


def _config(name: str, trial: optuna.trial.FrozenTrial, seed: int, protocol: Any) -> dict[str, Any]:
    return {"name": name, "seed": seed, "spec": trial.user_attrs["spec"], "flops": trial.user_attrs["flops"],
            "params": trial.user_attrs["params"], "protocol": protocol.to_dict()}


def confirm(settings: SearchSettings, study: optuna.Study, cluster: Cluster) -> dict[str, Any]:
    """Re-train the best found spec and the LocalViT baseline with other seeds (same protocol)."""
    from .report import Standing

    settings = replace(settings, workers=cluster.workers)  # --workers, or as many as the GPUs hold
    standing = Standing.of(study)
    best = standing.best
    name = BASELINE_NAMES[settings.backbone][0]
    localvit = standing.baselines.get(name)
    if best is None or localvit is None or settings.confirm_seeds == 0:
        return {}
    seeds = [settings.protocol.seed + k for k in range(1, settings.confirm_seeds + 1)]
    subjects = {"best": best, name: localvit}
    log(f"confirming: re-training the best (trial {best.number}) and {name} with seeds {seeds}")
    protocol = settings.protocol.replace(threads=max(1, int(cluster.resources["cpu"])))
    results = _train_grid(settings, cluster, [_config(n, t, seed, protocol) for n, t in subjects.items()
                                              for seed in seeds], "confirm")
    if STOP.requested:  # not every seed ran: the confirmation runs again when the search resumes
        return {}
    outcome: dict[str, Any] = {name: {"trial": t.number, "seeds": {str(settings.protocol.seed): t.values[0]}}
                               for name, t in subjects.items()}
    for cfg, accuracy in results:
        outcome[cfg["name"]]["seeds"][str(cfg["seed"])] = accuracy
    for entry in outcome.values():
        values = [v for v in entry["seeds"].values() if v is not None]
        entry["mean"] = sum(values) / len(values) if values else None
    study.set_user_attr("confirmation", outcome)
    return outcome


def promote(settings: SearchSettings, study: optuna.Study, cluster: Cluster, rung: int) -> dict[str, Any]:
    """Train the best `--finalists` searched candidates (by the proxy at rung 1) and the LocalViT
    baseline again at `rung` of the protocol, with the search's seed; record their values there
    (study attribute `promotion`), which `--rank-by auto` ranks them by when that rung's audit
    beats counting (`search.rank_by.resolve`)."""
    from .rank_by import RankBy
    from .selection import ranked_candidates

    finalists = ranked_candidates(study, rank_by=RankBy("proxy"))[:settings.finalists]
    localvit = {t.user_attrs["baseline"]: t for t in ranked_candidates(study, include_baselines=True,
                                                                       rank_by=RankBy("proxy"))
                if t.user_attrs.get("baseline") == BASELINE_NAMES[settings.backbone][0]}
    if not finalists:
        return {}
    protocol = protocol_at_rung(settings.protocol, rung).replace(threads=max(1, int(cluster.resources["cpu"])))
    log(f"promoting: training the best {len(finalists)} by the proxy (trials "
        f"{', '.join(str(t.number) for t in finalists)}){' and ' + ', '.join(localvit) if localvit else ''} again at "
        f"rung {rung} ({protocol.train_size} images x {protocol.epochs} epochs)")
    subjects = {str(t.number): t for t in finalists} | localvit
    started = time.time()
    results = _train_grid(settings, cluster, [_config(n, t, settings.protocol.seed, protocol)
                                              for n, t in subjects.items()], f"rung{rung}")
    if STOP.requested:  # trained again when the search resumes
        return {}
    values = {cfg["name"]: accuracy for cfg, accuracy in results}
    promotion = {"rung": rung, "protocol_key": protocol_key(protocol), "finalists": settings.finalists,
                 "values": {k: v for k, v in values.items() if k.isdigit() and v is not None},
                 "baselines": {k: v for k, v in values.items() if not k.isdigit()},
                 "wall_time_s": time.time() - started}
    study.set_user_attr("promotion", promotion)
    return promotion


def run_oneshot(settings: SearchSettings, plan: Plan, cluster: Cluster, deadline: float | None) -> None:
    """Train or reuse the supernet, then score candidates on it until `deadline` (`search.oneshot`)."""
    from .oneshot import ensure_supernet, evaluate_candidates

    settings = replace(settings, workers=cluster.workers)  # --workers, or as many as the GPUs hold
    threads = max(1, min(os.cpu_count() or 1, int(sum(n.cpus for n in cluster.nodes))))  # before any actor starts
    try:
        checkpoint = ensure_supernet(settings, plan, threads, planned_device(settings))
    except TrainingStopped:  # a signal: the checkpoint holds the last finished epoch
        return
    resources = cluster.resources
    protocol = settings.protocol.replace(threads=max(1, int(resources["cpu"])))
    throughput = _throughput_measurer(settings) if settings.budget.min_throughput else None
    define = DefineByRun(plan.space, settings.budget, protocol, {}, plan.data_shape, throughput)
    with ray_output(cluster.log) as console:
        figures = evaluate_candidates(settings, plan, checkpoint, resources, define, deadline, console)
    plan.study.set_user_attr("oneshot_scoring", figures)


# --- the whole search -------------------------------------------------------------------------

def prepare(settings: SearchSettings, resume: bool = False) -> Plan:
    """Every check that bad input can fail, before Ray starts or anything in the study changes."""
    space = make_space(settings.space, settings.backbone, settings.include_unfinished)
    if settings.sampler == "grid" and not isinstance(space, ListSpace):
        raise ValueError(f"sampler='grid' is invalid with space={settings.space!r}; accepted: --space paper or a "
                         f"reference file (or a small space file with --sampler random)")
    bounds = require_feasible(space, settings.budget)
    try:
        settings.study_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.study_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"results dir {settings.results_dir!r} is not writable ({err.strerror}); "
                         f"accepted: a folder you can write to (--results-dir)") from None
    storage = open_storage(settings.storage_url, settings.storage_retry_s)
    exists = any(s.study_name == settings.study for s in storage.get_all_studies())
    if resume and not exists:
        raise ValueError(f"study {settings.study!r} does not exist in {settings.storage_url}; accepted: an "
                         f"existing --study to resume (or leave out --resume to start it)")
    if settings.budget.min_throughput:
        spec, cost = bounds.cheapest_flops
        measured = _throughput_measurer(settings)(spec).images_per_s
        if measured < settings.budget.min_throughput:
            raise ValueError(f"infeasible budget: --min-throughput {settings.budget.min_throughput:g} is above what "
                             f"the cheapest architecture of space {space.name!r} reaches ({measured:.1f} images/s "
                             f"at {format_count(cost.flops, 'FLOPs')}, spec {spec.id}, on this machine)")
    data = get_proxy_data(settings.protocol.data_config())  # a missing dataset fails here; workers reuse its cache
    supernet = None
    if settings.strategy == ONESHOT:  # a space no supernet holds, another space's checkpoint
        from .oneshot import supernet_checkpoint

        path, key = supernet_checkpoint(settings, space, (data.in_chans, data.num_classes))
        supernet = {"path": str(path), "key": key["digest"]}
    study = open_study(settings, space, storage)
    study.set_user_attr("proxy_data", data.describe())  # the summary says what the data held (skipped images)
    if data.skipped:
        log(f"{data.skipped} unreadable image(s) of {settings.protocol.data_dir} skipped, never a failure "
            f"(the cache's manifest lists them)")
    return Plan(space, bounds, study, (data.in_chans, data.num_classes),
                resolve_rank_by(settings, supernet, study.user_attrs.get("promotion")))


class Trained(NamedTuple):
    """What `train_trials` left behind: trials a signal interrupted (closed and queued again), and
    trials of the study that other drivers, alive by their heartbeats, still run."""

    interrupted: int
    elsewhere: int


def train_trials(settings: SearchSettings, plan: Plan, cluster: Cluster | None) -> Trained:
    """Close what lost drivers left running, queue baselines and warm starts, and train trials until
    the study holds as many as asked, with any other drivers of the study (one-shot: score
    candidates on the supernet first, then train its top-k), on the Ray `connect` gave (None:
    nothing is left to train). Where Ray Tune itself stops on a lost worker, the trials it ran
    are queued again and the training goes on, within the time limit; more than
    `--max-retries` such stops with no trial trained between them is a `ClusterFault`."""
    with Lease(plan.study, settings.storage_url, settings.heartbeat_grace_s, settings.storage_retry_s) as lease:
        started, losses, trained_at_loss = time.time(), 0, -1
        while True:
            try:
                _train_trials(settings, plan, cluster, lease, started)
                break
            except Exception as err:  # a worker Ray lost where Tune does not retry it: the trials go on
                if STOP.requested:  # a stop that reached the workers first is a stop
                    break
                loss = tune_loss(err)
                if not loss:
                    raise
                queued = lease.release(f"Ray lost its worker: {loss}")
                trained = trained_count(plan.study)
                losses = losses + 1 if trained == trained_at_loss else 1
                trained_at_loss = trained
                if losses > settings.max_retries:
                    raise ClusterFault(
                        f"Ray Tune stopped {losses} times in a row on a lost worker ({loss}); the study keeps every "
                        f"trial trained and queued the {queued} it ran again; give each trial more memory (more "
                        f"--cpus-per-trial, fewer --workers) or more nodes, then resume with: {resume_command()}"
                        ) from err
                left = settings.time_limit_s - (time.time() - started) if settings.time_limit_s else None
                if left is not None and left <= 0:
                    log(f"Ray Tune stopped on a lost worker ({loss}) at the time limit: {queued} trial(s) closed "
                        f"and queued again for a resume")
                    break
                log(f"Ray Tune stopped on a lost worker ({loss}): {queued} trial(s) closed and queued again; "
                    f"going on (retry {losses} of {settings.max_retries}; Ray's log: "
                    f"{cluster.log if cluster else '-'})")
                settings, started = replace(settings, time_limit_s=left), time.time()  # the same deadline
        if STOP.requested:
            return Trained(lease.release(), 0)
        lease.reap()
        return Trained(0, lease.elsewhere()[1])


def _train_trials(settings: SearchSettings, plan: Plan, cluster: Cluster | None, lease: Lease,
                  started: float) -> None:
    space, study = plan.space, plan.study
    cost = plan.bounds.cheapest_flops[1]
    record_rank_by(study, plan.rank_by)  # a resumed study may be ranked anew: nothing trained depends on it
    log(f"ranking by {plan.rank_by.why}")
    log(f"space {space.name!r} on {settings.backbone}: {space.size():.3g} architectures; cheapest "
        f"{format_count(cost.flops, 'FLOPs')} / {format_count(plan.bounds.cheapest_params[1].params)} params, "
        f"costliest {format_count(plan.bounds.costliest_flops[1].flops, 'FLOPs')}; "
        f"budget: {settings.budget.describe()}")
    interrupted = lease.reap()
    if interrupted:
        log(f"resuming: closed {interrupted} interrupted trial(s) and queued them again")
    _, running = lease.elsewhere()
    if running:
        log(f"{running} trial(s) of this study run in other drivers (heartbeats within {lease.grace} s): this "
            f"driver joins them; --trials {settings.trials} counts the study's total")
    baselines = paper_baselines(settings) if settings.baselines else {}
    for name, spec in baselines.items():
        verdict = "fits" if settings.budget.admits(spec) else "is over the budget; not trained"
        log(f"baseline {name}: {format_count(target_cost(spec).flops, 'FLOPs')}, "
            f"{format_count(target_cost(spec).params)} params, {verdict}")
    if cluster is not None:
        log(f"Ray: {len(cluster.nodes)} node(s) ({', '.join(n.describe() for n in cluster.nodes)}); each trial "
            f"asks for {', '.join(f'{v:g} {k.upper()}' for k, v in cluster.resources.items())}; Ray's log: "
            f"{cluster.log}")
    if settings.strategy == ONESHOT:
        warm = enqueue_warm_starts(study, settings, space, baselines)
        if warm:
            log(f"warm start from the paper's tables (scored on the supernet): {', '.join(warm)}")
        if "oneshot_top_k" not in study.user_attrs and cluster is not None:  # else scored already
            run_oneshot(settings, plan, cluster, started + settings.time_limit_s if settings.time_limit_s else None)
        if STOP.requested:  # the scoring was cut short: the finalists are picked when it resumes
            return
        queued = enqueue_baselines(study, settings, space, baselines)
        from .oneshot import enqueue_top_k

        top = enqueue_top_k(study, settings, exclude={spec.id for spec in baselines.values()})
        if top:
            log(f"proxy-training {len(top)} of the supernet's best from scratch (its ranks "
                f"{', '.join(str(rank) for rank, _ in top)}, each at least {settings.top_k_apart} layer(s) from "
                f"every better one where the ranking allows): trials {', '.join(str(t.number) for _, t in top)}")
        remaining = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        trial_settings = replace(settings, asha=False, time_limit_s=None)  # the few finalists train in full
    else:
        queued = enqueue_baselines(study, settings, space, baselines)
        warm = enqueue_warm_starts(study, settings, space, baselines)
        if warm:
            log(f"warm start from the paper's tables: {', '.join(warm)}")
        done = trained_count(study)
        remaining = remaining_trials(settings, plan)
        if settings.sampler == "grid" and settings.trials - done > remaining:
            log(f"the grid holds {space.size()} architectures: {remaining} trial(s) to go")
        if done:
            log(f"study {settings.study!r} holds {done} trained trial(s); {remaining} to go")
        trial_settings = settings
    if remaining > 0 and cluster is not None and not STOP.requested:
        if queued:
            log(f"baselines first: {', '.join(queued)}")
        run_trials(trial_settings, plan, baselines, remaining, cluster, lease)


def run(settings: SearchSettings, plan: Plan, cluster: Cluster | None) -> int:
    """Run (or resume) the search `prepare` checked on the Ray `connect` gave, write its reports;
    returns the exit status: 0, or 128 + the signal that stopped it (`search.stop`)."""
    interrupted, elsewhere = train_trials(settings, plan, cluster)
    if elsewhere:  # their results may change the best: the last driver to finish promotes and confirms
        log(f"{elsewhere} trial(s) of this study still run in other drivers: the promotion and the seed "
            f"confirmation are left to the last of them to finish, whose summary holds them")
    ours = not elsewhere  # the steps after the trials are this driver's: no other still trains
    rung = promotion_rung(settings) if settings.strategy != ONESHOT else 1
    if rung > 1 and "promotion" not in plan.study.user_attrs and ours and cluster is not None \
            and not STOP.requested:
        promotion = promote(settings, plan.study, cluster, rung)
        if promotion:
            rank_by = resolve_rank_by(settings, None, promotion)
            record_rank_by(plan.study, rank_by)
            log(f"ranking by {rank_by.why}")
    if settings.confirm_seeds and "confirmation" not in plan.study.user_attrs and ours and cluster is not None \
            and not STOP.requested:
        confirm(settings, plan.study, cluster)
    partial = STOP.requested and needs_ray(settings, plan)  # else the signal came when all was done
    from .report import write_reports

    summary = write_reports(plan.study, settings, stopped=STOP.name if partial else None)
    print("\n" + summary.read_text(), flush=True)
    log(f"open the study: optuna-dashboard {settings.storage_url}")
    if not STOP.requested:
        return 0
    say(stopped_line(f"{trained_count(plan.study)} trial(s) trained, {interrupted} interrupted and queued again; "
                     f"the reports are in {settings.study_dir}" + (" (marked partial)" if partial else "")))
    return STOP.exit_status


def quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Ray warns when the define-by-run function takes over 1 s: ours writes the trial's attributes
    # to the storage and, with --min-throughput, measures the candidate (cached on disk).
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
    logging.getLogger("ray").setLevel(logging.ERROR)
    if isinstance(sys.stdout, io.TextIOWrapper):  # not when a caller replaced it
        sys.stdout.reconfigure(line_buffering=True)
