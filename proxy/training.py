"""Proxy training: a candidate trained briefly at a small resolution and scored on validation top-1.

``train_proxy(spec, protocol, data, report=...)`` trains the projected model with AdamW,
a per-step linear warm-up + cosine schedule and label smoothing, seeded, evaluates validation
top-1 after every epoch and calls ``report(epoch, val_acc, extra)``; a non-finite loss raises
``NonFiniteLossError`` (the driver records the trial as failed and goes on). Supernet training
(`proxy.supernet`) shares the optimiser, the schedule and the batches.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from localvit.builder import build_model
from localvit.host import cpu_threads
from localvit.spec import ArchSpec, as_spec
from space.cost import model_cost

from .data import ProxyData, get_proxy_data
from .protocol import ProxyProtocol, project_to_proxy
from .runtime import autocast, prepare_device, resolve_precision


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial failed (not the search)."""

    def __init__(self, epoch: int, step: int, value: float, spec_id: str = "") -> None:
        self.epoch, self.step, self.value, self.spec_id = epoch, step, value, spec_id
        super().__init__(f"non-finite training loss {value} at epoch {epoch}, step {step}"
                         + (f" (spec {spec_id})" if spec_id else "")
                         + "; the trial failed (learning rate too high or an unstable architecture)")



class TrainingStopped(RuntimeError):
    """Training was asked to stop (a signal reached the process) before it finished."""


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
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]



def make_optimizer(model: nn.Module, protocol: ProxyProtocol) -> torch.optim.AdamW:
    """The protocol's AdamW, with no weight decay where timm has none (`param_groups`)."""
    return torch.optim.AdamW(param_groups(model, protocol.weight_decay), lr=protocol.lr, betas=(0.9, 0.999),
                             eps=1e-8)


@torch.no_grad()
def evaluate(model: nn.Module, data: ProxyData, split: str = "val", batch_size: int = 500,
             precision: str = "fp32", device: str = "cpu", images: int | None = None) -> float:
    """Top-1 accuracy (fraction) of `model` on a split, in eval mode; on its first `images` only
    when given (the splits are in file order, which mixes the classes)."""
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in data.to(device).batches(split, batch_size):  # made on the device
            if images is not None:
                if total >= images:
                    break
                x, y = x[:images - total], y[:images - total]
            with autocast(precision, device):
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
    data = data.to(device)  # the images move to the device once; batches are made there
    proxy_spec = project_to_proxy(target, protocol, num_classes=data.num_classes, in_chans=data.in_chans)
    cost = model_cost(proxy_spec)
    precision = prepare_device(protocol.precision, device)
    result = ProxyResult(spec_id=target.id, proxy_spec=proxy_spec.to_dict(), protocol=protocol.to_dict(),
                         precision=precision, proxy_flops=cost.flops, proxy_params=cost.params)

    with cpu_threads(protocol.threads):
        seed_everything(protocol.seed)
        model = build_model(proxy_spec).to(device)
        model.train()
        if protocol.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, protocol)
        criterion = nn.CrossEntropyLoss(label_smoothing=protocol.label_smoothing)
        step_model = torch.compile(model) if protocol.compile else model
        result.setup_time_s = time.perf_counter() - t_start

        for epoch in range(1, protocol.epochs + 1):
            t_epoch = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for i, x, y, lr in scheduled_batches(data, protocol, optimizer, epoch, protocol.epochs):  # noqa: B007 (last lr reported)
                if protocol.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(precision, device):
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
    result.total_time_s = time.perf_counter() - t_start
    return result


__all__ = ["NonFiniteLossError", "ProxyResult", "TrainingStopped", "evaluate", "lr_at", "make_optimizer",
           "param_groups", "scheduled_batches", "seed_everything", "train_proxy"]
