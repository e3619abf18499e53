"""Everything one search needs, validated before any compute starts."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from space.budget import Budget

from .oneshot import DEFAULT_SAMPLING, SAMPLINGS
from .proxy import ProxyProtocol
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
#: A trial whose node or worker was lost with every retry spent: its candidate is queued again.
LOST = "lost"
OBJECTIVES = ("accuracy", "flops")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class SearchSettings:
    """One search: where it is stored, what it searches, under which budget, how it trains."""

    study: str = "localvit-1.3G"
    results_dir: str = "results"
    storage: str | None = None  # any Optuna RDB URL; default SQLite at results/<study>/study.db
    space: str = "default"  # `default`, `paper` or a space file
    backbone: str = "deit_tiny"
    budget: Budget = field(default_factory=Budget)
    sampler: str = "auto"  # AUTO_SAMPLERS by strategy
    objectives: tuple[str, ...] = ("accuracy",)
    trials: int = 16  # trained trials, baselines included
    workers: int = 2
    cpus_per_trial: float | None = None  # default: the machine's CPUs shared by the workers
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    ray_storage: str | None = None  # Ray Tune's experiment folder, seen by every node; default: the study folder
    max_retries: int = 2  # retries of a trial lost to the infrastructure (a node or worker died)
    protocol: ProxyProtocol = field(default_factory=ProxyProtocol)
    asha: bool = True
    # Epochs every trial trains before ASHA may stop it. On fashion-rotations the first epoch ranks
    # designs against their final accuracy (all-locality designs start slowest and end best), the
    # second as the third does.
    asha_grace: int = 2
    baselines: bool = True
    warm_start: int = 4  # queue this many of the paper's designs that fit, after the baselines
    seed: int = 0
    time_limit_s: float | None = None
    confirm_seeds: int = 2  # re-train the best and LocalViT-T with this many other seeds
    export_top: int = 3
    throughput_batch: int = 64
    throughput_threads: int = 1
    strategy: str = "train"
    supernet_epochs: int = 4  # oneshot: proxy epochs of supernet training
    supernet_sampling: str = DEFAULT_SAMPLING  # oneshot: subnets per training step (search.oneshot.SAMPLINGS)
    candidates: int = 2000  # oneshot: most candidates scored on the supernet (--time-limit stops sooner)
    top_k: int = 4  # oneshot: best supernet candidates proxy-trained from scratch
    # oneshot: layers in which each finalist differs from every better one (0: the plain top-k). The
    # supernet's best few are near-ties, often one design's mutations a layer or two apart, which
    # train from scratch to the same accuracy within its noise: distinct finalists hedge the draw.
    top_k_apart: int = 3
    # oneshot: training images that re-estimate a subnet's BatchNorm, and validation images a candidate
    # is scored on (0: the whole split). Audited (bench_supernet_audit): 128 and 250 rank as stand-alone
    # training does at tau-b 0.64, 256 and 500 at 0.70, 512 and all 2,000 at 0.61, intervals +-0.18: more
    # images do not rank better, and these score a candidate twice as fast.
    recalibration_images: int = 128
    score_images: int = 250
    supernet_checkpoint: str | None = None  # oneshot: default <results_dir>/.supernets/<key>.pt

    def __post_init__(self) -> None:
        if self.supernet_sampling not in SAMPLINGS:
            raise ValueError(f"supernet_sampling={self.supernet_sampling!r} is invalid; accepted: "
                             f"{', '.join(SAMPLINGS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is invalid; accepted: {', '.join(STRATEGIES)}")
        if not _STUDY_NAME.match(self.study):
            raise ValueError(f"study={self.study!r} is invalid; accepted: letters, digits, '_', '.', '-' "
                             f"(at most 100, not starting with a symbol)")
        if self.sampler == "auto":
            object.__setattr__(self, "sampler", AUTO_SAMPLERS[self.strategy])
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
                          ("supernet_epochs", 1), ("candidates", 1), ("top_k", 1), ("top_k_apart", 0), ("recalibration_images", 0), ("score_images", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is invalid; accepted: an integer >= {low}")
        if self.gpus_per_trial < 0 or (self.cpus_per_trial is not None and self.cpus_per_trial <= 0):
            raise ValueError(f"gpus_per_trial={self.gpus_per_trial!r}, cpus_per_trial={self.cpus_per_trial!r} are "
                             f"invalid; accepted: gpus >= 0 (fractions allowed), cpus > 0")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s={self.time_limit_s!r} is invalid; accepted: a positive number")

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
    def scoring_fidelity(self) -> dict[str, int]:
        """How a one-shot candidate is scored, as `search.oneshot.score` takes it and audits record it."""
        return {"recalibration_images": self.recalibration_images, "score_images": self.score_images}

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = list(self.objectives)
        data["protocol"] = self.protocol.to_dict()
        return data


def parse_duration(text: str) -> float:
    """'25m', '1h30m', '90s', '600' (seconds) -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise ValueError(f"duration {text!r} is invalid; accepted: e.g. 25m, 1h30m, 90s or seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"duration {text!r} is invalid; accepted: a positive duration")
    return total
