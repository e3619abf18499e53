"""Proxy training: a candidate trained briefly at a small resolution and scored on validation top-1.

``project_to_proxy(spec, protocol)`` maps a target spec (224x224, RGB, 1000 classes) onto the
proxy task: the protocol's image size, patch size, channels and classes, and a width
multiplier applied to the embedding width and head count. Every per-layer choice (FFN type,
activation, channel attention, SE ratio, expansion gamma, kernel) and the depth are kept.

``train_proxy(spec, protocol, data, report=...)`` trains the projected model with AdamW,
a per-step linear warm-up + cosine schedule and label smoothing, seeded, evaluates validation
top-1 after every epoch and calls ``report(epoch, val_acc, extra)``; a non-finite loss raises
``NonFiniteLossError`` (the driver records the trial as failed and goes on).

The default protocol and why it was chosen (measured on the 2-core CPU this project runs on)
are documented in ``ProxyProtocol`` and in bench/results/ (bench/bench_proxy_training.py).
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from localvit.backbones import proxy_spec
from localvit.builder import build_model
from localvit.spec import ArchSpec, LayerSpec, as_spec
from space.cost import model_cost

from .data import DataConfig, ProxyData, get_proxy_data

PRECISIONS = ("auto", "fp32", "bf16")
JEMALLOC_PATH = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial failed (not the search)."""

    def __init__(self, epoch: int, step: int, value: float, spec_id: str = "") -> None:
        self.epoch, self.step, self.value, self.spec_id = epoch, step, value, spec_id
        super().__init__(f"non-finite training loss {value} at epoch {epoch}, step {step}"
                         + (f" (spec {spec_id})" if spec_id else "")
                         + "; the trial failed (learning rate too high or an unstable architecture)")


@dataclass(frozen=True)
class ProxyProtocol:
    """How a candidate is proxy-trained. JSON-able (``to_dict``/``from_dict``).

    Default protocol (the default search's; chosen by measurement on the 2-core EPYC this
    project targets, see bench/protocol_study.py, bench/bench_proxy_training.py, README):

    * data: fashion-rotations (Fashion-MNIST items each turned by a quarter turn, class = item
      and turn: 40 classes), 4000 train / 2000 validation images drawn from the TRAIN files
      (stratified, ``split_seed`` 0, the same validation set for every trial; the t10k test
      files are never read during search), 28x28, random crop (pad 2), no flip.
    * model: patch 4 (7x7 = 49 tokens + class token), 1 channel, the data's classes, width x0.5
      (LocalViT-T and DeiT-T: dim 96, 2 heads), depth and every per-layer choice kept, no
      drop-path.
    * optimisation: 3 epochs of batch 128 (93 steps), AdamW lr 2e-3, betas (0.9, 0.999), weight
      decay 0.05 (not on biases, norms, tokens), linear warm-up over 0.5 epoch then cosine to
      1e-5, per step; label smoothing 0.1; seed 0.
    * speed: ``precision="auto"`` (bf16 autocast only on CPUs with native bf16; on AVX2 CPUs
      bf16 convolutions were measured 10x slower than fp32), no torch.compile (16-50 s of
      compilation per new architecture against a <=10% gain on a ~2-minute trial), 1 thread
      (two trials side by side on 2 cores), jemalloc preloaded by the driver (`jemalloc_env`),
      evaluation in batches of 128 (500 images took 1.8 s in batches of 500 and 1.2 s in
      batches of 128 here, with the same predictions: smaller batches stay in the caches).

    Why: at this size one trial is a few minutes of one core (about 12k training images and
    6k evaluations), so the 30-minute default search fits baselines, several candidates and
    re-training with two more seeds; of the protocols audited at that cost, rotations ranks the
    paper's 18 ImageNet designs best (Kendall tau-b 0.45-0.55 with one seed, against 0.33-0.36
    for plain Fashion-MNIST) and agrees best with itself across seeds.
    """

    # data: the defaults are DataConfig's, so each lives in one place
    dataset: str = DataConfig.dataset
    data_dir: str | None = DataConfig.data_dir
    train_size: int = DataConfig.train_size
    val_size: int = DataConfig.val_size
    img_size: int = DataConfig.img_size
    split_seed: int = DataConfig.split_seed
    augment: bool = DataConfig.augment
    # projection
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    width_mult: float = 0.5
    drop_path_rate: float = 0.0
    # optimisation
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    seed: int = 0
    # speed
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = False
    threads: int | None = 1
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is invalid; accepted: {', '.join(PRECISIONS)}")
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; accepted: a positive integer")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is invalid; accepted: a multiple of patch_size="
                             f"{self.patch_size}")
        if not 0 < float(self.width_mult) <= 4:
            raise ValueError(f"width_mult={self.width_mult!r} is invalid; accepted: a number in (0, 4]")
        if not (self.lr > 0 and self.min_lr >= 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0
                and 0 <= self.label_smoothing < 1):
            raise ValueError("lr > 0, min_lr >= 0, weight_decay >= 0, warmup_epochs >= 0 and "
                             f"0 <= label_smoothing < 1 are required; got lr={self.lr}, min_lr={self.min_lr}, "
                             f"weight_decay={self.weight_decay}, warmup_epochs={self.warmup_epochs}, "
                             f"label_smoothing={self.label_smoothing}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads={self.threads!r} is invalid; accepted: a positive integer or None "
                             f"(leave torch's setting)")
        self.data_config()  # validates dataset, sizes

    def data_config(self) -> DataConfig:
        return DataConfig(dataset=self.dataset, data_dir=self.data_dir, train_size=self.train_size,
                          val_size=self.val_size, img_size=self.img_size, split_seed=self.split_seed,
                          augment=self.augment)

    def replace(self, **changes: Any) -> "ProxyProtocol":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxyProtocol":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"protocol field {sorted(unknown)[0]!r} is invalid; accepted: {', '.join(sorted(names))}")
        return cls(**data)


# --- projection -------------------------------------------------------------------------------

def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scaled_width(embed_dim: int, num_heads: int, width_mult: float) -> tuple[int, int]:
    """Width and heads under a multiplier: heads scaled (at least 1), head width scaled, rounded.

    LocalViT-T (192, 4) and DeiT-T (192, 3) both give (96, 2) at x0.5; DeiT-S (384, 6) -> (192, 3).
    """
    if width_mult == 1:
        return embed_dim, num_heads
    heads = max(1, _round_half_up(num_heads * width_mult))
    head_dim = max(1, _round_half_up(embed_dim * width_mult / heads))
    return heads * head_dim, heads


def project_layer(layer: LayerSpec, proxy_dim: int) -> LayerSpec:
    """The same layer design at width `proxy_dim`.

    SE: the ratio r is kept (a width multiplier scales the SE bottleneck h/r like every other
    width: LocalViT-T's r=192 gives 4 SE channels at h=768 and 2 at h=384), but clamped to the
    proxy hidden width so that at least one SE channel remains (r=192 with gamma 1 at width 96
    becomes r=96). Everything else is kept as is.
    """
    if layer.attn == "se":
        hidden = layer.hidden_dim(proxy_dim)
        if layer.se_ratio > hidden:
            return replace(layer, se_ratio=hidden)
    return layer


def project_to_proxy(spec: ArchSpec | Mapping | str, protocol: ProxyProtocol | None = None, *,
                     num_classes: int | None = None, in_chans: int | None = None) -> ArchSpec:
    """The proxy version of a target spec (pure function; depth and every per-layer choice kept).

    A ViT is made narrower by the width multiplier and gets the proxy patch; a stage backbone
    keeps its widths and takes the proxy geometry of `localvit.backbones.proxy_spec`.

    ``num_classes``/``in_chans`` override the protocol's (``train_proxy`` passes the data's).
    """
    spec = as_spec(spec)
    protocol = protocol or ProxyProtocol()
    if spec.backbone != "vit":
        # Stage presets fix their widths, and their geometry must fit the proxy grid (Swin's
        # window, TNT's patch): `proxy_spec` gives that geometry; the width multiplier is the ViT's.
        return proxy_spec(spec, img_size=protocol.img_size, in_chans=in_chans or protocol.in_chans,
                          num_classes=num_classes or protocol.num_classes).replace(
            drop_path_rate=protocol.drop_path_rate)
    dim, heads = scaled_width(spec.embed_dim, spec.num_heads, protocol.width_mult)
    layers = tuple(project_layer(layer, dim) for layer in spec.layers)
    if any(layer.hidden_dim(dim) < 1 for layer in layers):
        raise ValueError(f"width_mult={protocol.width_mult} is invalid for spec {spec.id}: a layer would have no "
                         f"hidden channel at width {dim}; accepted: a larger multiplier")
    return spec.replace(
        layers=layers, embed_dim=dim, num_heads=heads, img_size=protocol.img_size, patch_size=protocol.patch_size,
        in_chans=in_chans or protocol.in_chans, num_classes=num_classes or protocol.num_classes,
        drop_path_rate=protocol.drop_path_rate)


# --- training ---------------------------------------------------------------------------------

@dataclass
class ProxyResult:
    """What one proxy training gives; ``to_dict()`` is JSON-able."""

    spec_id: str
    proxy_spec: dict
    protocol: dict
    precision: str = "fp32"                # the precision used (`auto` resolved)
    val_acc: float = float("nan")          # top-1 (fraction) after the last epoch trained
    best_val_acc: float = float("nan")
    val_curve: list[float] = field(default_factory=list)
    train_loss_curve: list[float] = field(default_factory=list)
    epochs_done: int = 0
    stopped_early: bool = False
    test_acc: float | None = None          # only with eval_test=True (final reporting)
    proxy_flops: int = 0                   # forward multiply-adds per image at the proxy
    proxy_params: int = 0
    train_images: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    setup_time_s: float = 0.0
    total_time_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_time_s if self.train_time_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from lr/warmup to lr, then cosine from lr to min_lr at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def scheduled_batches(data: ProxyData, protocol: ProxyProtocol, optimizer: torch.optim.Optimizer, epoch: int,
                      epochs: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, float]]:
    """One epoch's training batches as (index, images, labels, lr), the optimizer's learning rate
    set for each step: linear warm-up, then cosine over `epochs` (the proxy's and the supernet's
    schedule)."""
    steps_per_epoch = data.steps_per_epoch(protocol.batch_size)
    total_steps = steps_per_epoch * epochs
    warmup_steps = min(total_steps, int(round(protocol.warmup_epochs * steps_per_epoch)))
    batches = data.batches("train", protocol.batch_size, epoch=epoch, seed=protocol.seed)
    for i, (x, y) in zip(range(steps_per_epoch), batches):
        lr = lr_at((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps, protocol.lr, protocol.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        yield i, x, y, lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position/class tokens (1-D or token parameters), as in timm."""
    decay, no_decay = [], []
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 autocast only where the CPU computes bf16 natively (oneDNN bf16: AVX512-BF16/AMX);
    on AVX2-only CPUs (this project's 2-core EPYC) bf16 convolutions fall back to a slow path that
    was measured 10x slower than fp32, so `auto` means fp32 there."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid; accepted: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def precision_record(precision: str) -> dict[str, Any]:
    """What `precision` resolves to on this machine and why (`auto` differs from one CPU to the
    next): stored with a study, so that a study resumed elsewhere can say it changed."""
    return {"requested": precision, "resolved": resolve_precision(precision), "cpu": cpu_name()}


def cpu_name() -> str:
    """The processor's model name and whether oneDNN computes bf16 natively on it."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {'native' if resolve_precision('auto') == 'bf16' else 'no native'} bf16"


def _autocast(precision: str, device: str = "cpu"):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(model: nn.Module, data: ProxyData, split: str = "val", batch_size: int = 500,
             precision: str = "fp32", device: str = "cpu", images: int | None = None) -> float:
    """Top-1 accuracy (fraction) of `model` on a split, in eval mode; on its first `images` only
    when given (the splits are in file order, which mixes the classes)."""
    precision = resolve_precision(precision)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in data.batches(split, batch_size):
            if images is not None:
                if total >= images:
                    break
                x, y = x[:images - total], y[:images - total]
            x, y = x.to(device), y.to(device)
            with _autocast(precision, device):
                logits = model(x)
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / max(1, total)


ReportFn = Callable[[int, float, dict], Any]


def train_proxy(spec: ArchSpec | Mapping | str, protocol: ProxyProtocol | None = None, data: ProxyData | None = None,
                report: ReportFn | None = None, *, eval_test: bool = False, device: str = "cpu") -> ProxyResult:
    """Proxy-train `spec` (a TARGET spec; it is projected here) and return its validation curve.

    ``report(epoch, val_acc, extra)`` is called after every epoch (epochs count from 1; ``extra``
    holds train_loss, lr, epoch/eval seconds, images/s); if it returns True, training stops
    there (``stopped_early``). A NaN/inf loss raises ``NonFiniteLossError``. ``eval_test=True``
    also scores the test split at the end (final reporting only; never during search).
    ``device`` is where it trains (a Ray trial passes the GPU Ray assigned it, else the CPU).
    """
    t_start = time.perf_counter()
    protocol = protocol or ProxyProtocol()
    target = as_spec(spec)
    if data is None:
        data = get_proxy_data(protocol.data_config())
    if data.img_size != protocol.img_size:
        raise ValueError(f"data img_size={data.img_size} is invalid for protocol img_size={protocol.img_size}; "
                         f"accepted: data built from protocol.data_config()")
    proxy_spec = project_to_proxy(target, protocol, num_classes=data.num_classes, in_chans=data.in_chans)
    cost = model_cost(proxy_spec)
    precision = resolve_precision(protocol.precision)
    result = ProxyResult(spec_id=target.id, proxy_spec=proxy_spec.to_dict(), protocol=protocol.to_dict(),
                         precision=precision, proxy_flops=cost.flops, proxy_params=cost.params)

    old_threads = torch.get_num_threads()
    if protocol.threads:
        torch.set_num_threads(protocol.threads)
    try:
        seed_everything(protocol.seed)
        model = build_model(proxy_spec).to(device)
        model.train()
        if protocol.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(param_groups(model, protocol.weight_decay), lr=protocol.lr,
                                      betas=(0.9, 0.999), eps=1e-8)
        criterion = nn.CrossEntropyLoss(label_smoothing=protocol.label_smoothing)
        step_model = torch.compile(model) if protocol.compile else model
        result.setup_time_s = time.perf_counter() - t_start

        for epoch in range(1, protocol.epochs + 1):
            t_epoch = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for i, x, y, lr in scheduled_batches(data, protocol, optimizer, epoch, protocol.epochs):
                x, y = x.to(device), y.to(device)
                if protocol.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(precision, device):
                    loss = criterion(step_model(x).float(), y)
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(epoch, i, value, target.id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if protocol.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), protocol.grad_clip)
                optimizer.step()
                loss_sum += value * len(y)
                seen += len(y)
            train_s = time.perf_counter() - t_epoch
            t_eval = time.perf_counter()
            val_acc = evaluate(model, data, "val", protocol.eval_batch_size, precision, device)
            eval_s = time.perf_counter() - t_eval
            result.train_time_s += train_s
            result.eval_time_s += eval_s
            result.train_images += seen
            result.val_curve.append(val_acc)
            result.train_loss_curve.append(loss_sum / max(1, seen))
            result.epochs_done = epoch
            result.val_acc = val_acc
            result.best_val_acc = max(result.val_curve)
            if report is not None:
                extra = {"train_loss": loss_sum / max(1, seen), "lr": lr, "train_s": train_s, "eval_s": eval_s,
                         "images_per_s": seen / train_s if train_s else 0.0, "epochs_total": protocol.epochs,
                         "precision": precision,
                         "proxy_flops": cost.flops, "proxy_params": cost.params}
                if report(epoch, val_acc, extra) is True:
                    result.stopped_early = epoch < protocol.epochs
                    break
        if eval_test:
            result.test_acc = evaluate(model, data, "test", protocol.eval_batch_size, precision, device)
    finally:
        torch.set_num_threads(old_threads)
    result.total_time_s = time.perf_counter() - t_start
    return result


def jemalloc_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (e.g. a Ray worker's ``runtime_env["env_vars"]``) that
    preloads jemalloc when it is installed (Debian ``libjemalloc2``); unchanged otherwise."""
    env = dict(os.environ if env is None else env)
    if Path(JEMALLOC_PATH).is_file() and JEMALLOC_PATH not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(x for x in (JEMALLOC_PATH, env.get("LD_PRELOAD", "")) if x)
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


__all__ = ["ProxyProtocol", "ProxyResult", "NonFiniteLossError", "project_to_proxy", "project_layer",
           "scaled_width", "train_proxy", "evaluate", "resolve_precision", "precision_record", "cpu_name", "lr_at",
           "scheduled_batches", "jemalloc_env", "PRECISIONS"]
