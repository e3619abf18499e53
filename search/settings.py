"""Everything one search needs, validated before any compute starts.

Each field that a user may set carries its command-line option in its metadata (help, group,
flag, parser); `search.options` builds `run_search.py`'s parser, the audit's and the
benchmarks' from them, so that a name, a default, a help text and a check are written once.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localvit.backbones import SEARCH_BACKBONES
from localvit.cli import option as _option
from proxy.protocol import ProxyProtocol
from proxy.supernet import DEFAULT_SAMPLING, SAMPLINGS, ScoringFidelity
from ranking.signals import rank_by_choices
from space.budget import Budget

from .storage import has_password

SAMPLERS = ("tpe", "evolution", "nsga2", "random", "grid")
#: The sampler of `sampler="auto"` by strategy: TPE learns most from a few dozen trained trials;
#: aging evolution proposes the thousands of one-shot candidates at a small cost a proposal.
AUTO_SAMPLERS = {"train": "tpe", "oneshot": "evolution"}
#: `train`: every candidate proxy-trained from scratch; `oneshot`: scored on a trained supernet,
#: the top-k then proxy-trained from scratch.
STRATEGIES = ("train", "oneshot")
ONESHOT = "oneshot"
#: What became of a proposed candidate (the trial's `status` attribute); SUPERNET: scored with
#: inherited weights (the trial's `fidelity` attribute says `supernet`, trained trials `trained`).
TRAIN, INFEASIBLE, DUPLICATE, SUPERNET = "train", "infeasible", "duplicate", "supernet"


def measured_by(strategy: str) -> str:
    """What a strategy's trial values measure: the supernet's score (one-shot) or the proxy's top-1."""
    return "supernet" if strategy == ONESHOT else "proxy"

#: A trial whose node or worker was lost with every retry spent: its candidate is queued again.
LOST = "lost"
OBJECTIVES = ("accuracy", "flops")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

SEARCH, ONESHOT_GROUP, WHERE, COMPUTE, TIME = (
    "what to search", "one-shot (--strategy oneshot)", "where", "compute", "time")


def parse_duration(text: str) -> float | None:
    """'25m', '1h30m', '90s', '600' (seconds) -> seconds; 'none' -> None (no limit)."""
    if text.strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise ValueError(f"duration {text!r} is invalid; accepted: e.g. 25m, 1h30m, 90s, seconds, or none")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"duration {text!r} is invalid; accepted: a positive duration")
    return total


#: `gpus_per_trial`'s default: the number is chosen when the cluster is known (`search.cluster.gpu_plan`).
AUTO = "auto"
#: Concurrent trials by default where trials train on CPUs (where they get GPUs: `search.cluster.gpu_plan`).
CPU_WORKERS = 2


def parse_gpus(value: float | str) -> float | str:
    """`auto`, or a GPU share >= 0 as a float (from text or a number)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = -1.0
    if isinstance(value, bool) or not share >= 0 or share == float("inf"):
        raise ValueError(f"gpus_per_trial={value!r} is invalid; accepted: auto or a number >= 0 (fractions allowed)")
    return share


def _objectives(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(","))


@dataclass(frozen=True)
class SearchSettings:
    """One search: where it is stored, what it searches, under which budget, how it trains."""

    study: str = field(default="localvit-1.3G", metadata=_option(
        "study name", WHERE, cli_default=None, default_text="<backbone>-<space>-<budget>"))
    results_dir: str = field(default="results", metadata=_option("where studies and reports are written", WHERE))
    storage: str | None = field(default=None, metadata=_option(
        "Optuna storage URL, e.g. postgresql://user@host/db; its password is taken from PGPASSWORD or ~/.pgpass "
        "and never written to disk", WHERE, default_text="sqlite:///<results-dir>/<study>/study.db"))
    space: str = field(default="default", metadata=_option(
        "default, paper, a .yaml/.json space file, or a reference file (its designs; with --sampler grid)", SEARCH))
    backbone: str = field(default="deit_tiny", metadata=_option(", ".join(SEARCH_BACKBONES), SEARCH))
    budget: Budget = field(default_factory=Budget)
    sampler: str = field(default="auto", metadata=_option(
        f"auto, {', '.join(SAMPLERS)}; auto is tpe with --strategy train and evolution (aging evolution) with "
        f"--strategy oneshot", SEARCH))
    objectives: tuple[str, ...] = field(default=("accuracy",), metadata=_option(
        "accuracy, or accuracy,flops for a Pareto front", SEARCH, parse=_objectives, cli_default="accuracy"))
    trials: int = field(default=16, metadata=_option(
        "trained trials, baselines included; infeasible candidates are extra", SEARCH))
    workers: int | None = field(default=None, metadata=_option(
        "concurrent trials", COMPUTE, default_text=f"{CPU_WORKERS}; where trials get GPUs, as many as the GPUs hold"))
    cpus_per_trial: float | None = field(default=None, metadata=_option(
        "CPUs per trial", COMPUTE, default_text="the CPUs shared by the workers"))
    gpus_per_trial: float | str = field(default=AUTO, metadata=_option(
        "GPUs per trial: auto (where the cluster has GPUs, several trials share each one, docs/gpu.md; none "
        "elsewhere) or a number >= 0, fractions allowed; only what the cluster has", COMPUTE, parse=parse_gpus,
        metavar="auto|N"))
    ray_address: str | None = field(default=None, metadata=_option(
        "join an existing Ray cluster, e.g. auto or 10.0.0.1:6379; the project's code is shipped to its nodes",
        COMPUTE, default_text="start a local one"))
    ray_storage: str | None = field(default=None, metadata=_option(
        "Ray Tune's experiment folder, which every node must see: a shared folder or an s3:// or gs:// URI",
        COMPUTE, metavar="PATH_OR_URI", default_text="the study folder, enough for one machine"))
    max_retries: int = field(default=2, metadata=_option(
        "retry a trial lost to the infrastructure (a node or worker died) this many times on another node; it "
        "keeps its candidate and does not count as a trial; also how many times in a row Ray Tune itself may "
        "stop on a lost worker before the search ends (exit status 75)", COMPUTE))
    protocol: ProxyProtocol = field(default_factory=ProxyProtocol)
    asha: bool = field(default=True, metadata=_option(
        "train every trial for all epochs (no early stopping)", SEARCH, flag="--no-asha"))
    # On fashion-rotations the first epoch ranks designs against their final accuracy (all-locality
    # designs start slowest and end best), the second as the third does.
    asha_grace: int = field(default=2, metadata=_option("epochs every trial trains before ASHA may stop it",
                                                        SEARCH))
    baselines: bool = field(default=True, metadata=_option(
        "do not train LocalViT and DeiT baselines first", SEARCH, flag="--no-baselines"))
    warm_start: int = field(default=4, metadata=_option(
        "queue this many designs of the paper's tables that fit the budget, closest to it first", SEARCH))
    seed: int = field(default=0, metadata=_option("sampler and training seed", SEARCH))
    references: str | None = field(default=None, metadata=_option(
        "reference designs with their target accuracy, which rankings are audited on: a reference file, or a "
        "folder of them and of result.yaml files (python -m imagenet.train writes one per run)", SEARCH,
        default_text="the paper's ImageNet designs, space/references/paper_imagenet.yaml"))
    include_unfinished: bool = field(default=False, metadata=_option(
        "count the runs among --references that did not finish their epochs", SEARCH))
    rank_by: str = field(default="auto", metadata=_option(
        "what picks the best trial, the one-shot finalists, the order of the exports and the Pareto front's "
        "accuracy axis: the proxy (supernet with --strategy oneshot), params, flops, or a combination with the "
        "parameter count (proxy+params, proxy-params-rank, params-then-proxy); auto: the default of the audit "
        "the protocol rests on (docs/audit.md)", SEARCH))
    # auto: the rung the ladder trusts (its lowest rung whose audit beats counting), else none; so the
    # default search spends nothing on promotion until an audit says it pays (docs/audit.md, the ladder).
    max_rung: str = field(default="auto", metadata=_option(
        "train the best --finalists again at this rung of the proxy protocol (rung r: r times its optimizer "
        "steps) and rank them there; auto: the lowest rung whose audit beats counting, none when no rung does; "
        "1: no promotion", SEARCH))
    finalists: int = field(default=4, metadata=_option(
        "candidates (best by the proxy at rung 1) taken up to --max-rung", SEARCH))
    # The default keeps the default search within 30 minutes on 2 CPU cores, the one-shot one within 35.
    time_limit_s: float | None = field(default=1200.0, metadata=_option(
        "stop launching and running search trials (oneshot: stop scoring candidates; the top-k training "
        "follows) this long after the start, e.g. 45m or 2h; 'none' for no limit; the seed confirmation runs "
        "after it", TIME, flag="--time-limit", parse=parse_duration, cli_default="20m", metavar="DURATION"))
    confirm_seeds: int = field(default=2, metadata=_option(
        "re-train the best and LocalViT with this many other seeds", SEARCH))
    export_top: int = field(default=3, metadata=_option("export this many best trials as ImageNet jobs", WHERE))
    storage_retry_s: float = field(default=60.0, metadata=_option(
        "how long to retry a lost or refused database connection (a server restarting, a network blip) before "
        "the search stops, resumable, e.g. 30s or 5m", WHERE, flag="--storage-retry", parse=parse_duration,
        cli_default="1m", metavar="DURATION"))
    # Above --storage-retry and the retries' back-off: after a database outage every driver beats again
    # before another may judge it gone (docs/cluster.md).
    heartbeat_grace_s: float = field(default=120.0, metadata=_option(
        "a trial whose driver has not recorded a heartbeat for this long is judged crashed: another driver of "
        "the study closes it and queues its candidate again (a driver seen dead on this machine, at once)", WHERE,
        flag="--heartbeat-grace", parse=parse_duration, cli_default="2m", metavar="DURATION"))
    throughput_batch: int = 64
    throughput_threads: int = 1
    strategy: str = field(default="train", metadata=_option(
        f"{', '.join(STRATEGIES)}: proxy-train every candidate from scratch, or score candidates with weights "
        f"inherited from a supernet trained once and proxy-train only the top --top-k", SEARCH))
    supernet_epochs: int = field(default=4, metadata=_option("proxy epochs of supernet training", ONESHOT_GROUP))
    supernet_sampling: str = field(default=DEFAULT_SAMPLING, metadata=_option(
        "subnets trained per step: sandwich (largest, smallest and two random, the others distilled from the "
        "largest) or fair (one per FFN type)", ONESHOT_GROUP))
    candidates: int = field(default=2000, metadata=_option(
        "most candidates scored on the supernet; --time-limit may stop sooner", ONESHOT_GROUP))
    top_k: int = field(default=4, metadata=_option("best supernet candidates proxy-trained from scratch",
                                                   ONESHOT_GROUP))
    # The supernet's best few are near-ties, often one design's mutations a layer or two apart, which
    # train from scratch to the same accuracy within its noise: distinct finalists hedge the draw.
    top_k_apart: int = field(default=3, metadata=_option(
        "layers in which each of the top-k differs from every better one; 0: the plain top-k", ONESHOT_GROUP))
    # Audited (studies.supernet_audit): 128 and 250 rank as stand-alone training does at tau-b 0.64, 256
    # and 500 at 0.70, 512 and all 2,000 at 0.61, intervals +-0.18: more images do not rank better, and
    # these score a candidate twice as fast.
    recalibration_images: int = field(default=128, metadata=_option(
        "training images that re-estimate a candidate's BatchNorm statistics", ONESHOT_GROUP))
    score_images: int = field(default=250, metadata=_option(
        "validation images a candidate is scored on, the same for all; 0: the whole split", ONESHOT_GROUP))
    supernet_checkpoint: str | None = field(default=None, metadata=_option(
        "where the supernet is trained to or reused from", ONESHOT_GROUP, metavar="PATH",
        default_text="<results-dir>/.supernets/<key of space, protocol, epochs, sampling>.pt"))

    def __post_init__(self) -> None:
        if self.supernet_sampling not in SAMPLINGS:
            raise ValueError(f"supernet_sampling={self.supernet_sampling!r} is invalid; accepted: "
                             f"{', '.join(SAMPLINGS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is invalid; accepted: {', '.join(STRATEGIES)}")
        if self.backbone not in SEARCH_BACKBONES:
            raise ValueError(f"backbone={self.backbone!r} is invalid; accepted: {', '.join(SEARCH_BACKBONES)}")
        if not _STUDY_NAME.match(self.study):
            raise ValueError(f"study={self.study!r} is invalid; accepted: letters, digits, '_', '.', '-' "
                             f"(at most 100, not starting with a symbol)")
        if self.sampler == "auto":
            object.__setattr__(self, "sampler", AUTO_SAMPLERS[self.strategy])
        ranks = ("auto", *rank_by_choices(measured_by(self.strategy)))
        if self.rank_by not in ranks:
            raise ValueError(f"rank_by={self.rank_by!r} is invalid with strategy={self.strategy!r}; accepted: "
                             f"{', '.join(ranks)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is invalid; accepted: auto, {', '.join(SAMPLERS)}")
        objectives = tuple(self.objectives)
        if not objectives or objectives[0] != "accuracy" or len(set(objectives)) != len(objectives) \
                or any(o not in OBJECTIVES for o in objectives):
            raise ValueError(f"objectives={','.join(objectives)!r} is invalid; accepted: accuracy or accuracy,flops")
        object.__setattr__(self, "objectives", objectives)
        if self.sampler == "nsga2" and len(objectives) < 2:
            raise ValueError("sampler='nsga2' is invalid with one objective; accepted: --objectives accuracy,flops")
        if has_password(self.storage):
            raise ValueError("storage URL holds a password, which would be written to disk; accepted: a URL "
                             "without one (search.storage.without_password moves a PostgreSQL password to "
                             "PGPASSWORD)")
        for name, low in (("trials", 1), ("workers", 1), ("max_retries", 0), ("confirm_seeds", 0), ("export_top", 0),
                          ("warm_start", 0), ("asha_grace", 1), ("throughput_batch", 1), ("throughput_threads", 1),
                          ("supernet_epochs", 1), ("candidates", 1), ("top_k", 1), ("top_k_apart", 0),
                          ("recalibration_images", 0), ("score_images", 0), ("finalists", 1)):
            value = getattr(self, name)
            if name == "workers" and value is None:  # chosen with the cluster (`search.cluster.gpu_plan`)
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is invalid; accepted: an integer >= {low}")
        object.__setattr__(self, "gpus_per_trial", parse_gpus(self.gpus_per_trial))
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial={self.cpus_per_trial!r} is invalid; accepted: a number > 0")
        if self.max_rung != "auto" and not (str(self.max_rung).isdigit() and int(self.max_rung) >= 1):
            raise ValueError(f"max_rung={self.max_rung!r} is invalid; accepted: auto or a positive integer")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s={self.time_limit_s!r} is invalid; accepted: a positive number")
        if self.heartbeat_grace_s is None or self.heartbeat_grace_s < 2:
            raise ValueError(f"heartbeat_grace_s={self.heartbeat_grace_s!r} is invalid; accepted: a duration of at "
                             f"least 2 s")
        if self.storage_retry_s is None or self.storage_retry_s < 0:
            raise ValueError(f"storage_retry_s={self.storage_retry_s!r} is invalid; accepted: a duration >= 0")

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir).resolve() / self.study

    @property
    def tune_storage(self) -> str:
        """Where Ray Tune writes its experiments: `ray_storage`/<study>, else the study folder."""
        if self.ray_storage is None:
            return str(self.study_dir)
        if "://" in self.ray_storage:
            return f"{self.ray_storage.rstrip('/')}/{self.study}"
        return str(Path(self.ray_storage).resolve() / self.study)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.study_dir / 'study.db'}"

    @property
    def scoring_fidelity(self) -> ScoringFidelity:
        """How a one-shot candidate is scored, as `proxy.supernet.score` takes it and audits record it."""
        return {"recalibration_images": self.recalibration_images, "score_images": self.score_images}

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = list(self.objectives)
        data["protocol"] = self.protocol.to_dict()
        return data
