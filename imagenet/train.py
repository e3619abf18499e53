"""Train an architecture on ImageNet with the DeiT / LocalViT recipe, on the CPU or 1..N GPUs.

    python -m imagenet.train --config train.yaml --data-dir /path/to/imagenet
    torchrun --nproc_per_node=8 -m imagenet.train --config train.yaml --data-dir /path/to/imagenet
    python -m imagenet.train --config train.yaml --data-dir /path/to/imagenet --eval --checkpoint best.pth
    python -m imagenet.train --model localvit_tiny --data-dir /path/to/imagenet --eval --checkpoint localvit_t.pth

Built from timm's parts (dataset, transforms with RandAugment and random erasing, Mixup/CutMix,
SoftTargetCrossEntropy, optimizer and scheduler factories, ModelEmaV3, RepeatAugSampler) so that
it trains what timm's own script would, and small enough to read in one go. Every epoch it
validates the model and its EMA (top-1/top-5 over the whole validation split), appends a row
to `log.csv` and saves `last.pth` (and `best.pth` when the model's top-1 improved); checkpoints
are dicts with a `model` state dict, like the official LocalViT ones.

The model's head follows the data folder's class count (or `--num-classes`), so an exported
design trains on an ImageNet subset as it is. Every epoch the run also writes `result.yaml`,
a reference file of one row (the design, its best top-1, what it was trained on and whether
the run finished its epochs), which `python -m audit --references <folder>` and
`run_search.py --references <folder>` read: a user's results become the evidence the ranking
is audited on.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence, Sized, cast

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml
from PIL import Image
from timm.data import Mixup, auto_augment, create_dataset, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

import localvit
from imagenet.recipe import TrainConfig
from localvit.cli import usage_errors
from localvit.host import git_state
from localvit.spec import ArchSpec
from localvit.vision_transformer import OFFICIAL_NAMES, PAPER_SPECS

LOG_FIELDS = ("epoch", "lr", "train_loss", "top1", "top5", "ema_top1", "ema_top5", "time_s")


@dataclass(frozen=True)
class Process:
    """This process's place in the run (one process per device under torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Accuracy:
    """Validation top-1 / top-5 in % over `images` images."""

    top1: float
    top5: float
    images: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m imagenet.train", description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config", help="train.yaml written by imagenet.export")
    model.add_argument("--model", choices=sorted({*PAPER_SPECS, *OFFICIAL_NAMES}),
                       help="a paper model with the default recipe (e.g. to evaluate an official checkpoint)")
    parser.add_argument("--data-dir", help="ImageNet layout: <dir>/train/<class>/*, <dir>/val/<class>/*")
    parser.add_argument("--output", help="run folder (default: run.output, else train/ beside the config)")
    parser.add_argument("--epochs", type=int, help="override schedule.epochs")
    parser.add_argument("--batch-size", type=int, help="override run.batch_size (global; the lr follows it)")
    parser.add_argument("--workers", type=int, help="override data.workers (data loading processes per device)")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="classes of the model's head, at least the data's (default: the data folder's)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config value (a YAML value), e.g. --set augment.mixup=0.5")
    parser.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                        help="continue from a checkpoint (default: <output>/last.pth)")
    parser.add_argument("--eval", action="store_true", help="only evaluate --checkpoint on the validation split")
    parser.add_argument("--checkpoint", help="checkpoint to evaluate (ours or an official LocalViT one)")
    parser.add_argument("--ema", action="store_true", help="with --eval: use the checkpoint's EMA weights")
    args = parser.parse_args(argv)
    if args.eval != bool(args.checkpoint):
        parser.error("--eval and --checkpoint go together")
    return args


def load_config(args: argparse.Namespace) -> TrainConfig:
    """The config file (or a paper model's default recipe) with the command line's overrides."""
    if args.config:
        cfg = TrainConfig.load(args.config)
    else:
        cfg = TrainConfig.for_spec(PAPER_SPECS[OFFICIAL_NAMES.get(args.model, args.model)])
    changes: dict[str, Any] = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is invalid; accepted: SECTION.KEY=VALUE")
        changes[key] = _yaml_value(text)
    flags = {"data.dir": args.data_dir, "run.output": args.output, "schedule.epochs": args.epochs,
             "run.batch_size": args.batch_size, "data.workers": args.workers}
    changes.update({key: value for key, value in flags.items() if value is not None})
    cfg = cfg.override(changes) if changes else cfg
    if cfg.data.dir is None:
        raise ValueError("data dir is not set; accepted: --data-dir DIR or data.dir in the config")
    return cfg


def output_dir(cfg: TrainConfig, args: argparse.Namespace) -> Path:
    """`run.output`, else `train/` beside the config file (beside the exported job)."""
    if cfg.run.output:
        return Path(cfg.run.output)
    return Path(args.config).parent / "train" if args.config else Path("results") / "train" / args.model


def setup_process(device: str | None) -> Process:
    """Join the process group when launched by torchrun (NCCL on GPUs, Gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={kind!r} is invalid; accepted: cpu (no CUDA device here)")
    dev = torch.device(f"cuda:{local_rank}" if kind == "cuda" and world_size > 1 else kind)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Process(rank, world_size, dev)


# -- data ----------------------------------------------------------------------------------

def imagenet_datasets(cfg: TrainConfig) -> tuple[Any, Any]:
    """Train and validation ImageDatasets, after checking the folder is an ImageNet layout whose
    two splits hold the same classes (timm would fall back to the root folder for a missing split, and
    drop validation images of classes the training split lacks, without a word)."""
    assert cfg.data.dir is not None  # main() requires it
    root, data = Path(cfg.data.dir), cfg.data
    layout = f"an ImageNet layout folder: {data.train_split}/<class>/<images> and {data.val_split}/<class>/<images>"
    if not root.is_dir():
        raise ValueError(f"data dir={str(root)!r} is invalid; accepted: {layout}")
    for split in (data.train_split, data.val_split):
        if not (root / split).is_dir():
            raise ValueError(f"data dir={str(root)!r} has no {split}/ folder; accepted: {layout}")
    train = create_dataset("", root=str(root), split=data.train_split, is_training=True)
    val = create_dataset("", root=str(root), split=data.val_split, class_map=train.reader.class_to_idx)
    classes = train.reader.class_to_idx
    for split, dataset in ((data.train_split, train), (data.val_split, val)):
        if len(dataset) == 0 or "" in dataset.reader.class_to_idx:
            raise ValueError(f"data dir={str(root)!r}: {split}/ must hold images in class folders; accepted: {layout}")
    extra = sorted({p.name for p in (root / data.val_split).iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise ValueError(f"data dir={str(root)!r}: {data.val_split}/ has classes not in {data.train_split}/: "
                         f"{', '.join(extra[:5])}; accepted: the same class folders in both")
    return train, val


def with_head(cfg: TrainConfig, classes: int, num_classes: int | None) -> TrainConfig:
    """The config whose model has a head of `num_classes` (default: the data's `classes`); the
    design (its layers) is the config's."""
    head = num_classes or classes
    if head < classes:
        raise ValueError(f"--num-classes {head} is invalid: the data dir has {classes} classes; accepted: at least "
                         f"{classes}")
    if head == cfg.model.spec.num_classes:
        return cfg
    return replace(cfg, model=replace(cfg.model, spec=cfg.model.spec.replace(num_classes=head)))


def _seed_worker(worker_id: int) -> None:
    """numpy drives RandAugment's op choice; torch seeds only `random` and itself per worker."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


def keep_zero_bit_posterize() -> None:
    """Make timm's RandAugment posterize to 0 bits give a black image again, as with Pillow < 13.

    `rand-m9-mstd0.5-inc1` asks for 0 bits when the sampled magnitude reaches 10 (about 1 image in
    800); Pillow 13 raises on it, which would end an ImageNet epoch within seconds.
    """
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        op = auto_augment.NAME_TO_OP[name]
        if op not in _ZERO_BIT_POSTERIZE:
            # mypy joins timm's untyped ops to `builtins.function`, which it does not call
            auto_augment.NAME_TO_OP[name] = _zero_bit_posterize(op)  # type: ignore[arg-type]


_ZERO_BIT_POSTERIZE: set[Callable[..., Image.Image]] = set()
"""The wrappers `keep_zero_bit_posterize` installed (so that a second call wraps nothing twice)."""


def _zero_bit_posterize(op: Callable[..., Any]) -> Callable[..., Image.Image]:
    def posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
        return Image.new(img.mode, img.size) if bits_to_keep <= 0 else op(img, bits_to_keep, **kwargs)

    _ZERO_BIT_POSTERIZE.add(posterize)
    return posterize


def build_loaders(cfg: TrainConfig, proc: Process, datasets: tuple[Any, Any]) -> tuple[DataLoader, DataLoader]:
    data, aug = cfg.data, cfg.augment
    if cfg.run.batch_size % proc.world_size:
        raise ValueError(f"run.batch_size={cfg.run.batch_size} is invalid; accepted: a multiple of the "
                         f"{proc.world_size} processes")
    batch = cfg.run.batch_size // proc.world_size
    if _mixes(cfg) and batch % 2:
        raise ValueError(f"run.batch_size={cfg.run.batch_size} is invalid; accepted: an even batch per process "
                         f"(mixup/cutmix pair images)")
    train_set, val_set = datasets
    keep_zero_bit_posterize()
    img_size = cfg.model.spec.img_size
    train_set.transform = create_transform(
        img_size, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip, vflip=0.0,
        color_jitter=aug.color_jitter, auto_augment=aug.auto_augment, interpolation=data.interpolation,
        mean=data.mean, std=data.std, re_prob=aug.reprob, re_mode=aug.remode, re_count=aug.recount)
    val_set.transform = create_transform(img_size, interpolation=data.interpolation, crop_pct=data.crop_pct,
                                         mean=data.mean, std=data.std)
    sampler: RepeatAugSampler | DistributedSampler
    if aug.repeated_aug:
        sampler = RepeatAugSampler(train_set, num_replicas=proc.world_size, rank=proc.rank,
                                   num_repeats=aug.repeated_aug)
    else:
        sampler = DistributedSampler(train_set, num_replicas=proc.world_size, rank=proc.rank, seed=cfg.run.seed)
    if len(sampler) < batch:
        raise ValueError(f"run.batch_size={cfg.run.batch_size} is invalid; accepted: at most "
                         f"{len(sampler) * proc.world_size} (the images of one epoch)")
    common: dict[str, Any] = dict(num_workers=data.workers, pin_memory=proc.device.type == "cuda",
                  persistent_workers=data.workers > 0, worker_init_fn=_seed_worker)
    train_loader = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True, **common)
    val_shard = Subset(val_set, range(proc.rank, len(val_set), proc.world_size))  # exact counts, no padding
    val_loader = DataLoader(val_shard, batch_size=batch, shuffle=False, **common)
    return train_loader, val_loader


def _mixes(cfg: TrainConfig) -> bool:
    return (cfg.augment.mixup > 0 or cfg.augment.cutmix > 0) and cfg.augment.mixup_prob > 0


# -- model, evaluation, checkpoints ----------------------------------------------------------

def build_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The spec's model, any backbone; the recipe's `model.drop_path` replaces the spec's rate."""
    return localvit.build_model(cfg.model.spec.replace(drop_path_rate=cfg.model.drop_path)).to(device)


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.float16, enabled=cfg.run.amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, proc: Process, cfg: TrainConfig) -> Accuracy:
    """Top-1/top-5 over the whole validation split, counted exactly across processes."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=proc.device)
    for images, targets in loader:
        images, targets = images.to(proc.device, non_blocking=True), targets.to(proc.device, non_blocking=True)
        with _autocast(cfg, proc.device):
            logits = model(images)
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        counts[0] += hits[:, 0].sum()
        counts[1] += hits.any(dim=1).sum()
        counts[2] += len(targets)
    if proc.world_size > 1:
        torch_dist.all_reduce(counts)
    top1, top5, images = counts.tolist()
    return Accuracy(100 * top1 / images, 100 * top5 / images, int(images))


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, criterion: nn.Module, mixup: Mixup | None,
                    ema: ModelEmaV3 | None, cfg: TrainConfig, proc: Process) -> float:
    """One pass over the sampler's images; returns the mean training loss of this process."""
    model.train()
    total, steps = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(proc.device, non_blocking=True), targets.to(proc.device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with _autocast(cfg, proc.device):
            loss = criterion(model(images), targets)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {steps}; stopping")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(_unwrap(model))
        total, steps = total + value, steps + 1
    return total / max(steps, 1)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _save(state: dict[str, Any], path: Path) -> None:
    """Write atomically, so an interrupted save never leaves a broken `last.pth`."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_for_eval(model: nn.Module, path: str, use_ema: bool) -> None:
    if not Path(path).is_file():
        raise ValueError(f"checkpoint={path!r} is invalid; accepted: an existing checkpoint file")
    try:
        load_checkpoint(model, path, use_ema=use_ema, strict=True)
    except RuntimeError as err:  # state dict keys or shapes differ from the model's
        raise ValueError(f"checkpoint={path!r} does not fit the model: {str(err).splitlines()[-1].strip()}") from None


# -- the command -----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    with usage_errors():  # everything that checks the input; errors after this point keep their traceback
        args = parse_args(argv)
        design = load_config(args)
        proc = setup_process(args.device)
        seed = design.run.seed + proc.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        datasets = imagenet_datasets(design)
        classes = len(datasets[0].reader.class_to_idx)
        cfg = with_head(design, classes, args.num_classes)
        if cfg is not design and proc.main:
            print(f"the data dir has {classes} classes: the model's head has {cfg.model.spec.num_classes} (the "
                  f"design's {design.model.spec.num_classes})", flush=True)
        train_loader, val_loader = build_loaders(cfg, proc, datasets)
        model = build_model(cfg, proc.device)
        if args.eval:
            _load_for_eval(model, args.checkpoint, args.ema)
        out = output_dir(cfg, args)
        resume = _read_resume(out / "last.pth" if args.resume == "last" else Path(args.resume), cfg) \
            if args.resume and not args.eval else None
    if args.eval:
        acc = evaluate(model, val_loader, proc, cfg)
        if proc.main:
            print(f"top-1: {acc.top1:.2f} top-5: {acc.top5:.2f} ({acc.images} images, {args.checkpoint})", flush=True)
    else:
        assert cfg.data.dir is not None  # checked with the options
        result = RunResult(design.model.spec, _arch_file(args), cfg, Path(cfg.data.dir), classes,
                           len(datasets[0]), len(datasets[1]))
        fit(cfg, model, train_loader, val_loader, proc, out, resume, result)
    if proc.world_size > 1:
        torch_dist.destroy_process_group()
    return 0


def _read_resume(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"resume checkpoint={str(path)!r} is invalid; accepted: an existing checkpoint file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("spec_id") != cfg.model.spec.id:
        raise ValueError(f"resume checkpoint={str(path)!r} is of spec {state.get('spec_id')!r}; accepted: a "
                         f"checkpoint of this config's spec {cfg.model.spec.id!r}")
    return state


def fit(cfg: TrainConfig, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, proc: Process,
        out: Path, resume: dict[str, Any] | None = None, result: RunResult | None = None) -> float:
    """Train to `schedule.epochs` (from a checkpoint's state if given); returns the best top-1.
    With `result`, `result.yaml` is written beside the checkpoints every epoch."""
    optimizer = create_optimizer_v2(model, opt=cfg.optim.opt, lr=cfg.lr, weight_decay=cfg.optim.weight_decay,
                                    eps=cfg.optim.eps, betas=cfg.optim.betas)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.schedule.sched, num_epochs=cfg.schedule.epochs, warmup_epochs=cfg.schedule.warmup_epochs,
        warmup_lr=cfg.schedule.warmup_lr, min_lr=cfg.schedule.min_lr, cooldown_epochs=cfg.schedule.cooldown_epochs)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=cfg.run.amp and proc.device.type == "cuda")
    ema = ModelEmaV3(model, decay=cfg.run.model_ema_decay) if cfg.run.model_ema else None
    aug = cfg.augment
    mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                  switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode, label_smoothing=aug.smoothing,
                  num_classes=cfg.model.spec.num_classes) if _mixes(cfg) else None
    criterion = SoftTargetCrossEntropy() if mixup else (
        LabelSmoothingCrossEntropy(aug.smoothing) if aug.smoothing else nn.CrossEntropyLoss())

    start, best, best_epoch = 0, -1.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        if ema is not None and resume.get("model_ema") is not None:
            ema.module.load_state_dict(resume["model_ema"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        start, best, best_epoch = resume["epoch"], resume["best_top1"], resume["best_epoch"]
    if proc.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    scheduler.step(start)  # the schedule is a function of the epoch, so a resumed run may extend `epochs`

    log_path = out / "log.csv"
    if proc.main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml", "The effective config of this run (overrides applied).")
        if resume is None or not log_path.is_file():
            with log_path.open("w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)
        print(f"training {cfg.model.spec.id} on {proc.world_size} x {proc.device}, epochs {start + 1}-"
              f"{cfg.schedule.epochs}: global batch {cfg.run.batch_size}, lr {cfg.lr:g}, "
              f"{len(cast(Sized, train_loader.dataset))} train / "
              f"{len(cast(Sized, val_loader.dataset)) * proc.world_size} val images, "
              f"amp {'on' if scaler.is_enabled() else 'off'}, output {out}", flush=True)

    for epoch in range(start, cfg.schedule.epochs):
        tic = time.perf_counter()
        assert isinstance(train_loader.sampler, (DistributedSampler, RepeatAugSampler))  # build_loaders' samplers
        train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss = train_one_epoch(model, train_loader, optimizer, scaler, criterion, mixup, ema, cfg, proc)
        scheduler.step(epoch + 1)
        if proc.world_size > 1:
            distribute_bn(model, proc.world_size, reduce=True)
            if ema is not None:
                distribute_bn(ema, proc.world_size, reduce=True)
        acc = evaluate(_unwrap(model), val_loader, proc, cfg)
        ema_acc = evaluate(ema.module, val_loader, proc, cfg) if ema is not None else None
        seconds = time.perf_counter() - tic
        if acc.top1 > best:
            best, best_epoch = acc.top1, epoch + 1
        if not proc.main:
            continue
        with log_path.open("a", newline="") as f:
            csv.writer(f).writerow([
                epoch + 1, f"{lr:.6g}", f"{loss:.4f}", f"{acc.top1:.4f}", f"{acc.top5:.4f}",
                f"{ema_acc.top1:.4f}" if ema_acc else "", f"{ema_acc.top5:.4f}" if ema_acc else "", f"{seconds:.1f}"])
        _save({"model": _unwrap(model).state_dict(), "model_ema": ema.module.state_dict() if ema else None,
               "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
               "best_top1": best, "best_epoch": best_epoch, "spec_id": cfg.model.spec.id,
               "config": cfg.to_dict()}, out / "last.pth")
        if best_epoch == epoch + 1:
            shutil.copyfile(out / "last.pth", out / "best.pth")
        if result is not None:
            result.write(out, best, best_epoch, epoch + 1)
        print(f"epoch {epoch + 1}/{cfg.schedule.epochs} lr {lr:.3g} loss {loss:.4f} top-1 {acc.top1:.2f} "
              f"top-5 {acc.top5:.2f}" + (f" ema top-1 {ema_acc.top1:.2f}" if ema_acc else "") + f" {seconds:.0f} s",
              flush=True)
    if proc.main:
        print(f"best top-1: {best:.2f} (epoch {best_epoch})", flush=True)
    return best


@dataclass(frozen=True)
class RunResult:
    """What a run's `result.yaml` says besides its accuracy: the design, what it trained on."""

    design: ArchSpec  # the design as configured (an export's: 1000 classes)
    arch: Path | None  # the exported arch.json beside the config, when there is one
    cfg: TrainConfig  # what trained (its head follows the data)
    data_dir: Path
    classes: int
    train_images: int
    val_images: int

    @cached_property
    def made_by(self) -> dict[str, Any]:
        """The recipe's hash and the code's commit, fixed for the run (read once, not each epoch)."""
        return {"recipe_hash": recipe_hash(self.cfg), "commit": (git_state() or {}).get("commit")}

    def row(self, out: Path, best: float, best_epoch: int, epochs_done: int) -> dict[str, Any]:
        """One reference row (`space.references`): the spec as the path of its arch.json (relative
        to `out`, where the file is written) or inline."""
        spec: Any = os.path.relpath(self.arch, out) if self.arch else self.design.to_dict()
        epochs = self.cfg.schedule.epochs
        source = {"dataset": self.data_dir.resolve().name, "data_dir": str(self.data_dir.resolve()),
                  "classes": self.classes, "train_images": self.train_images, "val_images": self.val_images,
                  "img_size": self.cfg.model.spec.img_size, "epochs": epochs, "epochs_done": epochs_done,
                  "finished": epochs_done >= epochs, "best_epoch": best_epoch,
                  "trained_spec_id": self.cfg.model.spec.id, "trained_num_classes": self.cfg.model.spec.num_classes,
                  **self.made_by, "run": str(out.resolve())}
        return {"name": self.design.id, "accuracy": round(best, 4), "spec": spec, "source": source}

    def write(self, out: Path, best: float, best_epoch: int, epochs_done: int) -> None:
        """`result.yaml` beside the checkpoints, written whole (a stopped run leaves its last epoch's)."""
        row = self.row(out, best, best_epoch, epochs_done)
        source = row["source"]
        text = yaml.safe_dump({
            "name": f"result-{self.design.id}",
            "target": f"{source['dataset']} top-1 (%), {source['img_size']}x{source['img_size']}, "
                      f"{source['epochs']} epochs",
            "rows": [row]}, sort_keys=False)
        tmp = out / "result.yaml.tmp"
        tmp.write_text("# A reference row: python -m audit --references <a folder of these>\n" + text)
        os.replace(tmp, out / "result.yaml")


def recipe_hash(cfg: TrainConfig) -> str:
    """A short hash of the recipe (everything but the model and where data and outputs are)."""
    recipe = cfg.to_dict()
    recipe.pop("model")
    for section, key in (("data", "dir"), ("data", "workers"), ("run", "output")):
        recipe[section].pop(key, None)
    return hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _arch_file(args: argparse.Namespace) -> Path | None:
    """The arch.json an export wrote beside the config, if the run's config is such an export."""
    if args.config and (Path(args.config).parent / "arch.json").is_file():
        return (Path(args.config).parent / "arch.json").resolve()
    return None


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


if __name__ == "__main__":
    sys.exit(main())
