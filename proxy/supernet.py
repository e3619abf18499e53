"""One-shot evaluation: a space's supernet at the proxy geometry, trained once, and candidates
scored with weights inherited from it after BatchNorm recalibration.

`space_supernet(space, protocol, data_shape)` builds the `localvit.supernet.Supernet` that
holds the proxy projection of every spec of a space; `train_supernet` trains it on the proxy
data with the proxy protocol's optimiser and schedule (checkpoint every epoch, resumable);
`score(supernet, spec, data, protocol)` is a candidate's validation top-1 with inherited
weights, in about a second instead of minutes of training.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypedDict

import torch
from torch import nn

from localvit.host import cpu_threads
from localvit.spec import ArchSpec, LayerSpec
from localvit.supernet import Supernet, recalibrate_bn
from space.budget import bounds
from space.space import ListSpace, SearchSpace, Space

from .data import ProxyData
from .protocol import ProxyProtocol, project_layer, proxy_of
from .runtime import autocast, prepare_device, resolve_precision
from .training import (NonFiniteLossError, TrainingStopped, evaluate, make_optimizer, scheduled_batches,
                       seed_everything)

__all__ = ["DEFAULT_SAMPLING", "SAMPLINGS", "ScoringFidelity", "check_checkpoint", "describe", "fair_specs",
           "load_supernet", "recalibration_batches", "sandwich_specs", "score", "space_supernet", "train_supernet",
           "training_key"]

#: How supernet training picks a step's subnets: `fair_specs` or `sandwich_specs`.
SAMPLINGS = ("fair", "sandwich")
DEFAULT_SAMPLING = "sandwich"  # audited: ranks as stand-alone training does at tau-b 0.70 (fair: 0.46)


def _space_bases(space: Space) -> list[ArchSpec]:
    if isinstance(space, ListSpace):
        return list(space.points.values())
    if space.embed_dims or space.depths:
        raise ValueError(f"space {space.name!r} chooses its embed_dim or depth; accepted for a supernet: a space "
                         f"with one width and depth (heads may vary)")
    return list(space.bases())


def space_supernet(space: Space, protocol: ProxyProtocol, data_shape: tuple[int, int]) -> Supernet:
    """The supernet that holds the proxy projection of every spec of `space`.

    Raises ValueError when it cannot: a stage backbone, a space that chooses width or depth, or
    head choices that the width multiplier turns into different proxy widths."""
    bases = _space_bases(space)
    if bases[0].backbone != "vit":
        raise ValueError(f"backbone={bases[0].backbone!r} is invalid for --strategy oneshot; accepted: deit_tiny, "
                         f"deit_small (the supernet holds ViT spaces)")
    proxies = [proxy_of(base, protocol, data_shape) for base in bases]
    widths = sorted({p.embed_dim for p in proxies if p.embed_dim is not None})  # every ViT has one
    if len(widths) > 1:
        heads = sorted({b.num_heads for b in bases if b.num_heads is not None})
        raise ValueError(f"width_mult={protocol.width_mult} gives heads {heads} the proxy widths {widths}; accepted "
                         f"for a supernet: one proxy width (e.g. width_mult 0.5 or 1)")
    dim = widths[0]
    blocks: list[dict[LayerSpec, None]] = [{} for _ in range(bases[0].depth)]
    for base in bases:
        if isinstance(space, SearchSpace):
            choices = space.block_choices(base)
            per_block = choices * base.depth if space.shared else choices
        else:
            per_block = [[layer] for layer in base.layers]
        for held, layers in zip(blocks, per_block):
            held.update(dict.fromkeys(project_layer(layer, dim) for layer in layers))
    return Supernet(proxies[0], [list(held) for held in blocks])


def fair_specs(space: Space, rng: random.Random) -> list[ArchSpec]:
    """Subnets for one training step, fair across FFN types (FairNAS's strict fairness):
    as many specs as a block has FFN types, and in every block each type is used by exactly
    one of them; every other choice is uniform. A paper space gives one random row."""
    if isinstance(space, ListSpace):
        return [space.sample(rng)]
    names = space.distributions()
    ffn_names = [name for name in names if name.endswith(".ffn")]
    count = len(space.layer.ffn)
    orders = {name: rng.sample(list(space.layer.ffn), count) for name in ffn_names}
    specs = []
    for k in range(count):
        params = {name: orders[name][k] if name in orders else rng.choice(choices) for name, choices in names.items()}
        specs.append(space.from_params(params))
    return specs


def sandwich_specs(space: Space, rng: random.Random, extremes: tuple[ArchSpec, ArchSpec], random_count: int = 2
                   ) -> list[ArchSpec]:
    """Subnets for one training step by BigNAS's sandwich rule: the largest subnet first (the
    teacher of in-place distillation), the smallest, and `random_count` uniform ones.

    `extremes` are the space's (largest, smallest) by parameters (`space.budget.bounds`); their
    weight-free choices (activations, heads) are drawn anew each step, so that every activation
    path of the largest branches is trained as well."""
    largest, smallest = (_redraw_weight_free(space, spec, rng) for spec in extremes)
    return [largest, smallest, *(space.sample(rng) for _ in range(random_count))]


def _redraw_weight_free(space: Space, spec: ArchSpec, rng: random.Random) -> ArchSpec:
    if isinstance(space, ListSpace):
        return spec
    params, choices = space.to_params(spec), space.distributions()
    for name in params:
        if name == "heads" or name.endswith(".act"):
            params[name] = rng.choice(choices[name])
    return space.from_params(params)


def recalibration_batches(data: ProxyData, protocol: ProxyProtocol, images: int, seed: int) -> Iterator[torch.Tensor]:
    """Training images (augmented as in training, seeded) for `recalibrate_bn`."""
    taken = 0
    for x, _ in data.batches("train", protocol.batch_size, epoch=0, seed=seed):
        yield x[:images - taken]
        taken += len(x)
        if taken >= images:
            return


class ScoringFidelity(TypedDict):
    """How `score` scores a candidate: BatchNorm recalibration images, and the validation images
    it scores on (0: all)."""

    recalibration_images: int
    score_images: int


def score(supernet: Supernet, spec: ArchSpec, data: ProxyData, protocol: ProxyProtocol, *,
          recalibration_images: int = 512, score_images: int = 0, seed: int = 0, split: str = "val") -> float:
    """Validation top-1 of a target `spec` with the supernet's weights, after recalibrating its
    BatchNorm statistics on `recalibration_images` training images (deterministic in `seed`).
    `recalibration_images=0` keeps the supernet's own (mixed) statistics; `score_images` > 0
    scores on the split's first that many images (the same ones for every candidate). Runs on
    the supernet's device."""
    device = str(supernet.device)
    model = supernet.extract(proxy_of(spec, protocol, (data.in_chans, data.num_classes)))
    precision = resolve_precision(protocol.precision, device)
    if recalibration_images:
        with autocast(precision, device):
            recalibrate_bn(model, recalibration_batches(data.to(device), protocol, recalibration_images, seed))
    return evaluate(model, data, split, protocol.eval_batch_size, precision, device, images=score_images or None)


def describe(supernet: Supernet) -> dict[str, Any]:
    """What a supernet holds, for records and checkpoints."""
    return {"base": supernet.base.to_dict(), "params": sum(p.numel() for p in supernet.parameters()),
            "blocks": [{ffn: vars(caps) for ffn, caps in caps_of.items()} for caps_of in supernet.block_caps()]}


# --- training -----------------------------------------------------------------------------------

def training_key(space: Space, supernet: Supernet, protocol: ProxyProtocol, epochs: int,
                 sampling: str = DEFAULT_SAMPLING) -> dict[str, Any]:
    """What a trained supernet depends on: a checkpoint is reused only when this is equal."""
    _check_sampling(sampling)
    recipe = {k: v for k, v in protocol.to_dict().items() if k not in ("threads", "eval_batch_size")}  # how fast
    key = {"space": space.name, "choices": space.distributions(), "supernet": describe(supernet),
           "protocol": recipe, "epochs": epochs, "sampling": sampling}
    key["digest"] = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return key


def _load_checkpoint(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle's and torch's many errors: name the file, not a trace
        raise ValueError(f"supernet checkpoint {str(path)!r} cannot be read ({type(err).__name__}); accepted: a "
                         f"checkpoint train_supernet wrote") from None
    held = state.get("key", {}) if isinstance(state, dict) else {}
    if held.get("digest") != key["digest"]:
        differs = [name for name in ("space", "choices", "supernet", "protocol", "epochs", "sampling")
                   if held.get(name) != key[name]] or ["its format"]
        raise ValueError(f"supernet checkpoint {str(path)!r} was made with another {', '.join(differs)}; accepted: "
                         f"a checkpoint of the same space, protocol, epochs and sampling (or a new --study)")
    return state


def check_checkpoint(path: str | Path, key: dict[str, Any]) -> None:
    """ValueError when a checkpoint exists at `path` and was made for another `training_key`."""
    _load_checkpoint(Path(path), key)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written next to the old one and renamed over it: a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


EpochReport = Callable[[int, dict[str, Any]], Any]


def load_supernet(space: Space, protocol: ProxyProtocol, data_shape: tuple[int, int], checkpoint: str | Path,
                  epochs: int, sampling: str = DEFAULT_SAMPLING, device: str = "cpu") -> Supernet:
    """The supernet of a finished `train_supernet` checkpoint, in eval mode, on `device`."""
    supernet = space_supernet(space, protocol, data_shape)
    state = _load_checkpoint(Path(checkpoint), training_key(space, supernet, protocol, epochs, sampling))
    if state is None or len(state["history"]) < epochs:
        done = 0 if state is None else len(state["history"])
        raise ValueError(f"supernet checkpoint {str(checkpoint)!r} holds {done} of {epochs} epochs; accepted: a "
                         f"finished one (train_supernet)")
    supernet.load_state_dict(state["model"])
    return supernet.to(device).eval()


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r} is invalid; accepted: {', '.join(SAMPLINGS)}")


def train_supernet(space: Space, protocol: ProxyProtocol, data: ProxyData, *, epochs: int,
                   sampling: str = DEFAULT_SAMPLING, checkpoint: str | Path | None = None,
                   report: EpochReport | None = None, stop: Callable[[], bool] | None = None,
                   device: str = "cpu") -> tuple[Supernet, list[dict[str, Any]]]:
    """Train the supernet of `space` on the proxy data; return it (in eval mode) and its figures per epoch.

    Every step trains a few subnets on one batch, their gradients accumulated (each loss
    divided by their number), then one AdamW step. `sampling` picks them: `sandwich`
    (`sandwich_specs`) trains the largest on the labels and the others on its predictions
    (BigNAS's in-place distillation), so that the channels only large designs use are trained
    every step; `fair` (`fair_specs`, FairNAS) trains one subnet per FFN type on the labels,
    every block's branches equally often. The learning rate follows the
    protocol's warm-up and cosine over `epochs`, per step, as stand-alone proxy training does.
    With `checkpoint`, the state is saved there after every epoch and training resumes from
    it (an epoch cut short is trained again from its start, with the same batches and
    subnets, since both are seeded by the protocol's seed and the epoch); a finished
    checkpoint is returned without training. `report(epoch, figures)` is called per epoch;
    `stop()`, asked before every step, ends training with `TrainingStopped` (the checkpoint
    holds the last finished epoch). `device` is where it trains (the batches are made there, as
    in `train_proxy`); the checkpoint is the same on every device.
    """
    precision = prepare_device(protocol.precision, device)
    data = data.to(device)
    with cpu_threads(protocol.threads):
        seed_everything(protocol.seed)
        supernet = space_supernet(space, protocol, (data.in_chans, data.num_classes))
        key = training_key(space, supernet, protocol, epochs, sampling)
        supernet.to(device)
        optimizer = make_optimizer(supernet, protocol)
        path = Path(checkpoint) if checkpoint is not None else None
        state = _load_checkpoint(path, key) if path is not None else None
        history: list[dict[str, Any]] = []
        if state is not None:
            supernet.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = state["history"]
        criterion = nn.CrossEntropyLoss(label_smoothing=protocol.label_smoothing)
        if sampling == "sandwich":
            extremes = _extremes(space)
            subnets: Callable[[random.Random], list[ArchSpec]] = lambda rng: sandwich_specs(space, rng, extremes)
        else:
            subnets = lambda rng: fair_specs(space, rng)
        supernet.train()
        for epoch in range(len(history) + 1, epochs + 1):
            figures = _train_epoch(supernet, subnets, sampling == "sandwich", optimizer, criterion, data, protocol,
                                   precision, epoch, epochs, stop, device)
            history.append(figures)
            if path is not None:
                _save_checkpoint(path, {"key": key, "model": supernet.state_dict(),
                                        "optimizer": optimizer.state_dict(), "history": history})
            if report is not None:
                report(epoch, figures)
        return supernet.eval(), history


def _extremes(space: Space) -> tuple[ArchSpec, ArchSpec]:
    extremes = bounds(space)
    return extremes.costliest_params[0], extremes.cheapest_params[0]


def accumulate_gradients(supernet: Supernet, specs: list[ArchSpec], x: torch.Tensor, y: torch.Tensor,
                         criterion: nn.Module, distill: bool, precision: str = "fp32", device: str = "cpu"
                         ) -> list[float]:
    """Add the gradients of one training step's subnets (proxy specs) to the supernet's and
    return their losses. Each loss counts 1/len(specs); one backward pass per subnet, so only
    one subnet's activations are held at a time. With `distill`, the first subnet learns from
    the labels and the others from its predicted distribution (soft cross-entropy, the teacher
    detached: in-place distillation)."""
    teacher: torch.Tensor | None = None
    losses = []
    for k, spec in enumerate(specs):
        with autocast(precision, device):
            logits = supernet(x, spec).float()
        if distill and k > 0:
            loss = -(teacher * logits.log_softmax(-1)).sum(-1).mean()
        else:
            loss = criterion(logits, y)
            teacher = logits.detach().softmax(-1) if distill else None
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            return losses  # the caller names the subnet
        (loss / len(specs)).backward()
    return losses


def _train_epoch(supernet: Supernet, subnets: Callable[[random.Random], list[ArchSpec]], distill: bool,
                 optimizer: torch.optim.Optimizer, criterion: nn.Module, data: ProxyData, protocol: ProxyProtocol,
                 precision: str, epoch: int, epochs: int, stop: Callable[[], bool] | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    data_shape = (data.in_chans, data.num_classes)
    rng = random.Random(f"supernet-{protocol.seed}-{epoch}")
    started = time.perf_counter()
    loss_sum, seen, trained = 0.0, 0, 0
    for i, x, y, lr in scheduled_batches(data, protocol, optimizer, epoch, epochs):  # noqa: B007 (the last lr is reported)
        if stop is not None and stop():
            raise TrainingStopped(f"supernet training stopped in epoch {epoch}, step {i}")
        targets = subnets(rng)
        specs = [proxy_of(spec, protocol, data_shape) for spec in targets]
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(supernet, specs, x, y, criterion, distill, precision, device)
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(epoch, i, losses[-1], targets[len(losses) - 1].id)
        loss_sum += sum(losses) * len(y)
        seen += len(y) * len(losses)
        if protocol.grad_clip:
            nn.utils.clip_grad_norm_(supernet.parameters(), protocol.grad_clip)
        optimizer.step()
        trained += len(specs)
    seconds = time.perf_counter() - started
    return {"epoch": epoch, "device": device, "train_loss": loss_sum / max(1, seen), "lr": lr, "subnets": trained,
            "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1) if seconds else 0.0}
