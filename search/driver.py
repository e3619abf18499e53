"""One search, end to end: check the budget, prepare the study, run the trials on Ray Tune,
write the reports and export the best architectures.

The Optuna storage is the single source of truth: a search that is run again with the same
study (or `--resume`) continues from what the storage holds. Trials that a crash left
RUNNING are closed as failed and their candidates queued again, so no trial is lost or
trained twice, and the number of trained trials ends as asked.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import optuna
import sqlalchemy
import sqlalchemy.event
from optuna.trial import TrialState

from localvit.backbones import baseline_spec, localvit_spec
from localvit.spec import ArchSpec
from space.budget import Bounds, format_count, require_feasible
from space.cost import target_cost
from space.space import ListSpace, Space, make_space

from .cluster import Cluster, ray_output, start_cluster
from .data import get_proxy_data
from .evolution import RegularizedEvolutionSampler
from .proxy import precision_record
from .settings import ONESHOT, TRAIN, SearchSettings
from .tune import BaselineSparingASHA, ConstrainedOptunaSearch, DefineByRun, confirm_candidate, train_candidate

#: The paper's names of each backbone's LocalViT model and of the transformer it improves.
BASELINE_NAMES: dict[str, tuple[str, str]] = {
    "deit_tiny": ("LocalViT-T", "DeiT-T"), "deit_small": ("LocalViT-S", "DeiT-S"),
    "pvt_tiny": ("LocalViT-PVT", "PVT-T"), "swin_tiny": ("LocalViT-Swin", "Swin-T"),
    "swin_mini": ("LocalViT-Swin-M", "Swin-M"), "tnt_tiny": ("LocalViT-TNT", "TNT-T"),
    "t2t_7": ("LocalViT-T2T", "T2T-ViT-7"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the study --------------------------------------------------------------------------------

def make_sampler(settings: SearchSettings, space: Space, offset: int = 0) -> optuna.samplers.BaseSampler:
    """Constraints reach the samplers through `trial.set_constraint` (Optuna 5), not constraints_func.

    The seed is offset by the trials the study holds, so that a resumed search does not replay
    the proposals of the run it continues."""
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
    return _GridSampler(space.distributions(), seed=seed)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its end: telling the trial that completes the grid calls
    `study.stop()`, which raises outside `study.optimize` (our trials are told by Ray Tune's
    searcher and the one-shot loop; a resumed grid audit met it). The searches end by counting
    the grid's trials themselves."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass


def open_storage(url: str) -> optuna.storages.RDBStorage:
    try:
        storage = optuna.storages.RDBStorage(url)
    except ImportError:
        raise ValueError(f"storage {url!r} cannot be opened: its database driver is not installed; accepted: "
                         f"SQLite, or PostgreSQL with pip install -e '.[postgres]' (psycopg 3)") from None
    except Exception as err:  # SQLAlchemy's many error types: report the URL, not a trace
        raise ValueError(f"storage {url!r} cannot be opened: {str(err).splitlines()[0]}; accepted: an "
                         f"SQLAlchemy database URL such as sqlite:///path/study.db") from None
    if storage.engine.dialect.name == "sqlite":
        _commit_without_fsync_each(storage.engine)
    return storage


def _commit_without_fsync_each(engine: sqlalchemy.engine.Engine) -> None:
    """SQLite in write-ahead-log mode with synchronous=NORMAL: a commit no longer waits for an
    fsync, which made the study's writes (one commit per sampled parameter) cost half of each
    one-shot candidate. A killed process loses nothing committed; a power cut may lose the last
    commits, never the database. WAL needs a local disk (NFS: use PostgreSQL)."""

    def on_connect(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connections opened before the listener


def open_study(settings: SearchSettings, space: Space, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create the study, or load it and check that it was made by the same kind of search."""
    directions = ["maximize" if o == "accuracy" else "minimize" for o in settings.objectives]
    exists = any(s.study_name == settings.study for s in storage.get_all_studies())
    held = 0
    here = precision_record(settings.protocol.precision)
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
        reason = "interrupted (the driver stopped)" if status == "interrupted" else "queued again behind the interrupted"
        study._storage.set_trial_user_attr(trial._trial_id, "failure", reason)
        study._storage.set_trial_user_attr(trial._trial_id, "status", status)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        attrs = {k: trial.user_attrs[k] for k in ("baseline", "warm_start", "oneshot_rank", "supernet_accuracy",
                                                  "supernet_trial") if k in trial.user_attrs}
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


# --- Ray ----------------------------------------------------------------------------------------

def needs_ray(settings: SearchSettings, plan: Plan) -> bool:
    """Whether trials remain to train (one-shot: candidates to score or finalists to train) or the
    seed confirmation is still to run."""
    attrs = plan.study.user_attrs
    if settings.strategy == ONESHOT:
        return "oneshot_top_k" not in attrs or "confirmation" not in attrs
    return remaining_trials(settings, plan) > 0 or bool(settings.confirm_seeds and "confirmation" not in attrs)


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
               cluster: Cluster) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from .progress import Progress

    resources = cluster.resources
    protocol = settings.protocol.replace(threads=max(1, int(resources["cpu"])))
    throughput = _throughput_measurer(settings) if settings.budget.min_throughput else None
    searcher = ConstrainedOptunaSearch(
        space=DefineByRun(plan.space, settings.budget, protocol, baselines, plan.data_shape, throughput),
        metric=list(settings.objectives) if settings.multi_objective else "accuracy",
        mode=["max" if o == "accuracy" else "min" for o in settings.objectives] if settings.multi_objective
        else "max",
        sampler=plan.study.sampler, study_name=plan.study.study_name, storage=plan.study._storage,
        objectives=settings.objectives, full_epochs=protocol.epochs, target=remaining)
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
    if searcher.lost:
        log(f"{searcher.lost} trial(s) lost to the infrastructure after {settings.max_retries} retries each; their "
            f"candidates were queued again, to be proposed first (see Ray's log: {cluster.log})")


def _throughput_measurer(settings: SearchSettings) -> Any:
    from space.throughput import measure

    def measure_spec(spec: ArchSpec) -> Any:
        return measure(spec, batch=settings.throughput_batch, threads=settings.throughput_threads,
                       cache=settings.study_dir.parent / ".throughput_cache.jsonl")
    return measure_spec


def confirm(settings: SearchSettings, study: optuna.Study, cluster: Cluster) -> dict[str, Any]:
    """Re-train the best found spec and the LocalViT baseline with other seeds (same protocol)."""
    from ray import tune

    from .report import best_trial, baseline_trials

    best = best_trial(study)
    name = BASELINE_NAMES[settings.backbone][0]
    localvit = baseline_trials(study).get(name)
    if best is None or localvit is None or settings.confirm_seeds == 0:
        return {}
    seeds = [settings.protocol.seed + k for k in range(1, settings.confirm_seeds + 1)]
    subjects = {"best": best, name: localvit}
    log(f"confirming: re-training the best (trial {best.number}) and {name} with seeds {seeds}")
    resources = cluster.resources
    protocol = settings.protocol.replace(threads=max(1, int(resources["cpu"])))
    configs = [{"name": name, "seed": seed, "spec": t.user_attrs["spec"], "flops": t.user_attrs["flops"],
                "params": t.user_attrs["params"], "protocol": protocol.to_dict()}
               for name, t in subjects.items() for seed in seeds]
    tuner = tune.Tuner(
        tune.with_resources(confirm_candidate, resources),
        param_space={"candidate": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=settings.workers, reuse_actors=True),
        run_config=tune.RunConfig(name="confirm", storage_path=cluster.storage_path, verbose=0,
                                  progress_reporter=None,
                                  failure_config=tune.FailureConfig(max_failures=settings.max_retries)))
    with ray_output(cluster.log):
        results = tuner.fit()
    outcome: dict[str, Any] = {name: {"trial": t.number, "seeds": {str(settings.protocol.seed): t.values[0]}}
                               for name, t in subjects.items()}
    for result in results:
        cfg = result.config["candidate"]
        accuracy = (result.metrics or {}).get("accuracy")
        outcome[cfg["name"]]["seeds"][str(cfg["seed"])] = accuracy
    for entry in outcome.values():
        values = [v for v in entry["seeds"].values() if v is not None]
        entry["mean"] = sum(values) / len(values) if values else None
    study.set_user_attr("confirmation", outcome)
    return outcome


def run_oneshot(settings: SearchSettings, plan: Plan, cluster: Cluster, deadline: float | None) -> None:
    """Train or reuse the supernet, then score candidates on it until `deadline` (`search.oneshot_search`)."""
    from .oneshot_search import ensure_supernet, evaluate_candidates

    threads = max(1, min(os.cpu_count() or 1, int(sum(n.cpus for n in cluster.nodes))))  # before any actor starts
    checkpoint = ensure_supernet(settings, plan, threads)
    resources = cluster.resources
    protocol = settings.protocol.replace(threads=max(1, int(resources["cpu"])))
    throughput = _throughput_measurer(settings) if settings.budget.min_throughput else None
    define = DefineByRun(plan.space, settings.budget, protocol, {}, plan.data_shape, throughput)
    with ray_output(cluster.log) as console:
        figures = evaluate_candidates(settings, plan, checkpoint, resources, define, deadline, console)
    plan.study.set_user_attr("oneshot_scoring", figures)


# --- the whole search -------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What `prepare` checked and opened: the space, its cost bounds and the study."""

    space: Space
    bounds: Bounds
    study: optuna.Study
    data_shape: tuple[int, int]  # the proxy data's (channels, classes)


def prepare(settings: SearchSettings, resume: bool = False) -> Plan:
    """Every check that bad input can fail, before Ray starts or anything in the study changes."""
    if settings.backbone not in BASELINE_NAMES:
        raise ValueError(f"backbone={settings.backbone!r} is invalid; accepted: {', '.join(BASELINE_NAMES)}")
    space = make_space(settings.space, settings.backbone)
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
    storage = open_storage(settings.storage_url)
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
    if settings.strategy == ONESHOT:  # a space no supernet holds, another space's checkpoint
        from .oneshot_search import supernet_checkpoint

        supernet_checkpoint(settings, space, (data.in_chans, data.num_classes))
    return Plan(space, bounds, open_study(settings, space, storage), (data.in_chans, data.num_classes))


def train_trials(settings: SearchSettings, plan: Plan, cluster: Cluster | None) -> None:
    """Close what a crash left running, queue baselines and warm starts, and train trials until the
    study holds as many as asked (one-shot: score candidates on the supernet first, then train its
    top-k), on the Ray `connect` gave (None: nothing is left to train)."""
    started = time.time()
    space, study = plan.space, plan.study
    cost = plan.bounds.cheapest_flops[1]
    log(f"space {space.name!r} on {settings.backbone}: {space.size():.3g} architectures; cheapest "
        f"{format_count(cost.flops, 'FLOPs')} / {format_count(plan.bounds.cheapest_params[1].params)} params, "
        f"costliest {format_count(plan.bounds.costliest_flops[1].flops, 'FLOPs')}; "
        f"budget: {settings.budget.describe()}")
    interrupted = close_interrupted(study)
    if interrupted:
        log(f"resuming: closed {interrupted} interrupted trial(s) and queued them again")
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
        queued = enqueue_baselines(study, settings, space, baselines)
        from .oneshot_search import enqueue_top_k

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
    if remaining > 0 and cluster is not None:
        if queued:
            log(f"baselines first: {', '.join(queued)}")
        run_trials(trial_settings, plan, baselines, remaining, cluster)


def run(settings: SearchSettings, plan: Plan, cluster: Cluster | None) -> Path:
    """Run (or resume) the search `prepare` checked on the Ray `connect` gave; returns the study folder."""
    train_trials(settings, plan, cluster)
    if settings.confirm_seeds and "confirmation" not in plan.study.user_attrs and cluster is not None:
        confirm(settings, plan.study, cluster)
    from .report import write_reports

    summary = write_reports(plan.study, settings)
    print("\n" + summary.read_text(), flush=True)
    log(f"open the study: optuna-dashboard {settings.storage_url}")
    return settings.study_dir


def quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Ray warns when the define-by-run function takes over 1 s: ours writes the trial's attributes
    # to the storage and, with --min-throughput, measures the candidate (cached on disk).
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
    logging.getLogger("ray").setLevel(logging.ERROR)
    sys.stdout.reconfigure(line_buffering=True)
