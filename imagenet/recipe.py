"""The DeiT / LocalViT ImageNet training recipe as one typed, strictly checked config.

A `TrainConfig` is what `imagenet.train` runs and what the export writes as `train.yaml`. The
model section holds the architecture spec inline, so the YAML file alone describes a run.
Loading is strict: an unknown key or a value of the wrong type is a ValueError naming the key,
the value and what is accepted, because a misspelt key in a 300-epoch recipe would otherwise
surface days later as a worse model. Keys left out take the recipe's value.

`to_timm_args` writes the same recipe under the argument names of timm's own `train.py`.
"""
from __future__ import annotations

import types
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Union, get_args, get_origin, get_type_hints

import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from localvit.cli import fail
from localvit.spec import ArchSpec, as_spec

CONFIG_VERSION = 1
Bounds = dict[str, tuple[float, float | None]]
TIMM_GPUS = 8
"""The GPU count the timm variant's per-GPU batch is written for (DeiT's 8 x 128 = 1024)."""


@dataclass(frozen=True)
class ModelConfig:
    """The network: a spec of the LocalViT family, built with timm's `localvit_custom`."""

    spec: ArchSpec
    drop_path: float = 0.1

    bounds: ClassVar[Bounds] = {"drop_path": (0.0, 0.99)}


@dataclass(frozen=True)
class DataConfig:
    """An ImageNet-layout folder (`<dir>/<split>/<class>/<image>`) and its preprocessing."""

    dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    workers: int = 10
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD

    bounds: ClassVar[Bounds] = {"workers": (0, None), "crop_pct": (1e-3, 1.0)}


@dataclass(frozen=True)
class OptimConfig:
    """AdamW; the learning rate is `lr_base` per `lr_base_size` images of global batch."""

    opt: str = "adamw"
    lr_base: float = 5e-4
    lr_base_size: int = 512
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    clip_grad: float | None = None

    bounds: ClassVar[Bounds] = {"lr_base": (0.0, None), "lr_base_size": (1, None), "weight_decay": (0.0, None)}


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay per epoch after a linear warm-up (DeiT trains exactly `epochs`, no cool-down)."""

    epochs: int = 300
    sched: Literal["cosine"] = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0

    bounds: ClassVar[Bounds] = {"epochs": (1, None), "warmup_epochs": (0, None), "cooldown_epochs": (0, None)}


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation and label regularisation. `repeated_aug` is the repeat count (0: off);
    `color_jitter` applies only when `auto_augment` is null (timm's rule, as in DeiT's runs)."""

    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    reprob: float = 0.25
    remode: Literal["pixel", "rand", "const"] = "pixel"
    recount: int = 1
    repeated_aug: int = 3
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    smoothing: float = 0.1

    bounds: ClassVar[Bounds] = {name: (0.0, 1.0) for name in (
        "hflip", "reprob", "mixup_prob", "mixup_switch_prob", "smoothing")} | {
        "repeated_aug": (0, None), "recount": (1, None), "mixup": (0.0, None), "cutmix": (0.0, None)}


@dataclass(frozen=True)
class RunConfig:
    """How the run is carried out. `batch_size` is global (split over the processes);
    `amp` is float16 autocast on CUDA; `output` defaults to `train/` beside the config file."""

    batch_size: int = 1024
    amp: bool = True
    model_ema: bool = True
    model_ema_decay: float = 0.99996
    seed: int = 0
    output: str | None = None

    bounds: ClassVar[Bounds] = {"batch_size": (1, None), "model_ema_decay": (0.0, 1.0)}


@dataclass(frozen=True)
class TrainConfig:
    """A complete training job: model, data, optimiser, schedule, augmentation, run."""

    model: ModelConfig
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self) -> None:
        chans = self.model.spec.in_chans
        for name in ("mean", "std"):
            if len(getattr(self.data, name)) != chans:
                fail(f"data.{name}", list(getattr(self.data, name)), f"{chans} numbers (model.spec.in_chans)")

    @classmethod
    def for_spec(cls, spec: ArchSpec) -> TrainConfig:
        """The full recipe for one architecture."""
        return cls(model=ModelConfig(spec=spec))

    @property
    def lr(self) -> float:
        """The peak learning rate, scaled linearly with the global batch (DeiT's rule)."""
        return self.optim.lr_base * self.run.batch_size / self.optim.lr_base_size

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **_to_plain(self)}

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """Check every key and value (see the module doc); the spec is validated as an ArchSpec."""
        if not isinstance(data, Mapping):
            fail("config", data, "a mapping of sections")
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            fail("version", version, str(CONFIG_VERSION))
        return _build(cls, data, "")

    def dump(self, header: str = "") -> str:
        """YAML text, `header` as leading comment lines."""
        comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return comment + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path, header: str = "") -> None:
        Path(path).write_text(self.dump(header))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config={str(path)!r} is invalid; accepted: an existing YAML file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config {path} is not valid YAML: {' '.join(str(err).split())}") from None
        return cls.from_dict(data)

    def override(self, changes: Mapping[str, Any]) -> TrainConfig:
        """A copy with dotted keys changed (`{"schedule.epochs": 1}`), checked like a loaded file."""
        data = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.partition(".")
            if not name or section not in data or section == "version":
                fail(key, value, "section.key, sections: " + ", ".join(f.name for f in fields(self)))
            data[section][name] = value
        return TrainConfig.from_dict(data)


def to_timm_args(cfg: TrainConfig, gpus: int = TIMM_GPUS) -> dict[str, Any]:
    """The recipe under timm `train.py`'s argument names (its YAML keys), for `gpus` processes.

    timm takes a per-process batch, so the global batch is divided by `gpus`; it computes the
    learning rate from `lr_base` when `lr` is null, and needs `lr_base_scale: linear` because it
    would scale adaptive optimisers by the square root. `device_modules` imports our package so
    that `localvit_custom` is registered before timm creates the model.
    """
    if cfg.run.batch_size % gpus:
        fail("gpus", gpus, f"a divisor of the global batch size {cfg.run.batch_size}")
    spec, data, optim, sched, aug, run = cfg.model.spec, cfg.data, cfg.optim, cfg.schedule, cfg.augment, cfg.run
    return {
        "model": "localvit_custom", "model_kwargs": {"spec": spec.to_dict()}, "device_modules": ["localvit"],
        "num_classes": spec.num_classes, "in_chans": spec.in_chans, "img_size": spec.img_size,
        "drop_path": cfg.model.drop_path, "drop": 0.0,
        "train_split": data.train_split, "val_split": data.val_split, "workers": data.workers,
        "interpolation": data.interpolation, "train_interpolation": data.interpolation,
        "crop_pct": data.crop_pct, "mean": list(data.mean), "std": list(data.std),
        "batch_size": run.batch_size // gpus, "validation_batch_size": run.batch_size // gpus,
        "opt": optim.opt, "opt_eps": optim.eps, "opt_betas": list(optim.betas),
        "weight_decay": optim.weight_decay, "clip_grad": optim.clip_grad,
        "lr": None, "lr_base": optim.lr_base, "lr_base_size": optim.lr_base_size, "lr_base_scale": "linear",
        "sched": sched.sched, "epochs": sched.epochs, "warmup_epochs": sched.warmup_epochs,
        "warmup_lr": sched.warmup_lr, "min_lr": sched.min_lr, "cooldown_epochs": sched.cooldown_epochs,
        "warmup_prefix": False, "sched_on_updates": False,
        "aa": aug.auto_augment, "color_jitter": aug.color_jitter, "scale": list(aug.scale),
        "ratio": list(aug.ratio), "hflip": aug.hflip, "vflip": 0.0,
        "reprob": aug.reprob, "remode": aug.remode, "recount": aug.recount, "aug_repeats": aug.repeated_aug,
        "mixup": aug.mixup, "cutmix": aug.cutmix, "mixup_prob": aug.mixup_prob,
        "mixup_switch_prob": aug.mixup_switch_prob, "mixup_mode": aug.mixup_mode, "smoothing": aug.smoothing,
        "model_ema": run.model_ema, "model_ema_decay": run.model_ema_decay, "model_ema_warmup": False,
        "amp": run.amp, "amp_dtype": "float16", "seed": run.seed,
    }


# -- strict conversion of plain data into the dataclasses ------------------------------------

def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ArchSpec):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    return obj


def _build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the dataclass `cls` from a mapping, every key and value checked."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        fail(where, data, "a mapping with keys " + ", ".join(f.name for f in fields(cls)))
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"{prefix}{key}={value!r} is an unknown key; accepted keys in {where}: "
                             + ", ".join(names))
    kwargs = {}
    for f in fields(cls):
        key = prefix + f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is MISSING:
            raise ValueError(f"{key} is missing; accepted: {_describe(hints[f.name])}")
    for name, (low, high) in getattr(cls, "bounds", {}).items():
        value = kwargs.get(name)
        if value is not None and (value < low or (high is not None and value > high)):
            fail(prefix + name, value, f"a value from {low} to {high}" if high is not None else f"at least {low}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is ArchSpec:
        if not isinstance(value, (Mapping, ArchSpec)):
            fail(key, value, _describe(hint))
        try:
            return as_spec(value)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    if hasattr(hint, "__dataclass_fields__"):
        return _build(hint, value, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if value is None:
            fail(key, value, _describe(hint))
        return _convert(inner, value, key)
    if origin is Literal:
        if value not in args:
            fail(key, value, _describe(hint))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)) \
                or not value:
            fail(key, value, _describe(hint))
        return tuple(_convert(args[0] if args[-1] is Ellipsis else args[i], v, f"{key}[{i}]")
                     for i, v in enumerate(value))
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `5e-4` as a string
        try:
            return float(value)
        except ValueError:
            fail(key, value, _describe(hint))
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}
    if not ok[hint]:
        fail(key, value, _describe(hint))
    return float(value) if hint is float else value


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if hint is ArchSpec:
        return "an architecture spec (a mapping, as written by ArchSpec.to_dict)"
    if origin in (Union, types.UnionType):
        return "null or " + _describe(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if hasattr(hint, "__dataclass_fields__"):
        return "a mapping with keys " + ", ".join(f.name for f in fields(hint))
    if origin is tuple:
        count = "numbers" if args[-1] is Ellipsis else f"{len(args)} numbers"
        return f"a list of {count}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


__all__ = ["AugmentConfig", "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "ScheduleConfig",
           "TrainConfig", "to_timm_args"]
