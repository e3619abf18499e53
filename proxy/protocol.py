"""The proxy protocol (how a candidate is trained cheaply) and the projection of a target spec
onto it.

``project_to_proxy(spec, protocol)`` maps a target spec (224x224, RGB, 1000 classes) onto the
proxy task: the protocol's image size, patch size, channels and classes, and a width
multiplier applied to the embedding width and head count. Every per-layer choice (FFN type,
activation, channel attention, SE ratio, expansion gamma, kernel) and the depth are kept.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Any, Mapping

from localvit.backbones import PROXY_IMG_SIZE, proxy_spec
from localvit.cli import option, option_flag
from localvit.spec import ArchSpec, LayerSpec, as_spec

from .data import DATASETS, DEFAULT_FASHION_MNIST_DIR, DataConfig, get_proxy_data
from .runtime import PRECISIONS

#: The command-line group of the protocol's options (`search.options` reads the fields' metadata).
PROXY_GROUP = "proxy training"


_option = partial(option, group=PROXY_GROUP)


@dataclass(frozen=True)
class ProxyProtocol:
    """How a candidate is proxy-trained. JSON-able (``to_dict``/``from_dict``).

    Default protocol (the default search's; chosen by measurement on the 2-core EPYC this
    project targets, see studies/protocol_study.py, bench/bench_proxy_training.py, README):

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
    * speed: ``precision="auto"`` (bf16 autocast only on CPUs with native bf16, where it is
      about 1.4x faster; `proxy.runtime`), no torch.compile (16-50 s of
      compilation per new architecture against a <=10% gain on a ~2-minute trial), 1 thread
      (two trials side by side on 2 cores), jemalloc preloaded by the driver (`proxy.allocator`),
      evaluation in batches of 128 (500 images took 1.8 s in batches of 500 and 1.2 s in
      batches of 128 here, with the same predictions: smaller batches stay in the caches).

    Why: at this size one trial is a few minutes of one core (about 12k training images and
    6k evaluations), so the 30-minute default search fits baselines, several candidates and
    re-training with two more seeds; of the protocols audited at that cost, rotations ranks the
    paper's 18 ImageNet designs best (Kendall tau-b 0.45-0.55 with one seed, against 0.33-0.36
    for plain Fashion-MNIST) and agrees best with itself across seeds.
    """

    # data: the defaults are DataConfig's, so each lives in one place
    dataset: str = field(default=DataConfig.dataset, metadata=_option(
        f"{', '.join(DATASETS)}; fashion-pairs: use --img-size 56 --patch-size 8; fashion-rotations: 40 classes, "
        "each item and its quarter turn"))
    data_dir: str | None = field(default=DataConfig.data_dir, metadata=_option(
        "Fashion-MNIST idx files (every fashion-* task), or an ImageNet-layout folder",
        default_text=str(DEFAULT_FASHION_MNIST_DIR)))
    train_size: int = field(default=DataConfig.train_size, metadata=_option("training images"))
    val_size: int = field(default=DataConfig.val_size, metadata=_option("validation images"))
    img_size: int = field(default=DataConfig.img_size, metadata=_option(
        "proxy resolution", cli_default=None,
        default_text=f"{DataConfig.img_size} for the ViT backbones, {PROXY_IMG_SIZE} for the stage backbones"))
    split_seed: int = DataConfig.split_seed
    augment: bool = field(default=DataConfig.augment, metadata=_option("no random crop and flip", flag="--no-augment"))
    # projection
    patch_size: int = field(default=4, metadata=_option("proxy patch of the ViT backbones"))
    in_chans: int = 1
    num_classes: int = 10
    width_mult: float = field(default=0.5, metadata=_option("width multiplier of the proxy"))
    drop_path_rate: float = 0.0
    # optimisation
    epochs: int = field(default=3, metadata=_option("epochs"))
    batch_size: int = field(default=128, metadata=_option("batch size"))
    lr: float = field(default=2e-3, metadata=_option("peak learning rate"))
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = field(default=0.5, metadata=_option("linear warm-up, in epochs"))
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    seed: int = 0
    # speed
    precision: str = field(default="auto", metadata=_option(
        f"{', '.join(PRECISIONS)}; auto: bf16 where the CPU computes it natively, else fp32"))
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

    def option_args(self) -> list[str]:
        """The command-line options that give this protocol (those that differ from the default),
        for a command a user can copy: `python -m audit <these>` audits what a search trained."""
        default, args = ProxyProtocol(), []
        for f in fields(self):
            value = getattr(self, f.name)
            if "help" not in f.metadata or value == getattr(default, f.name):
                continue
            args += [option_flag(f)] if isinstance(value, bool) else [option_flag(f), str(value)]
        return args

    def replace(self, **changes: Any) -> ProxyProtocol:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyProtocol:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"protocol field {sorted(unknown)[0]!r} is invalid; accepted: {', '.join(sorted(names))}")
        return cls(**data)



#: The compute levels of the fidelity ladder that `python -m audit --rungs` measures by default.
DEFAULT_RUNGS = (1, 3, 10)


def at_rung(protocol: ProxyProtocol, rung: int, pool: int | None) -> ProxyProtocol:
    """The protocol at `rung`: `rung` times its optimizer steps, spent on more distinct images
    first (up to `pool`, the training images its data can give; None: no limit), then on more
    epochs. Rung 1 is the protocol itself.

    Distinct images first because the protocol study found them worth more than repeated epochs
    (12,000 images x 1 epoch ranked the paper's designs better than 4,000 x 3). The warm-up keeps
    its share of the run. The default (4,000 images x 3 epochs) gives 12,000 x 3 at rung 3 and
    40,000 x 3 at rung 10; on fashion-rotations (58,000 images after validation) rung 30 gives
    58,000 x 6.
    """
    if isinstance(rung, bool) or not isinstance(rung, int) or rung < 1:
        raise ValueError(f"rung={rung!r} is invalid; accepted: a positive integer (1 = the protocol itself)")
    if rung == 1:
        return protocol
    base_images = protocol.train_size or pool
    if not base_images:
        raise ValueError(f"train_size={protocol.train_size} is invalid for a rung above 1 on data of unknown size; "
                         f"accepted: a positive --train-size")
    wanted = base_images * rung
    images = min(wanted, pool) if pool else wanted
    epochs = max(protocol.epochs, _round_half_up(protocol.epochs * wanted / images))
    return protocol.replace(train_size=images, epochs=epochs,
                            warmup_epochs=protocol.warmup_epochs * epochs / protocol.epochs)


def training_pool(protocol: ProxyProtocol) -> int | None:
    """How many distinct training images the protocol's data can give (what is left after its
    validation split); None where the data is drawn without limit (fashion-pairs' mosaics)."""
    if protocol.dataset == "fashion-pairs":
        return None
    return get_proxy_data(replace(protocol.data_config(), train_size=0)).size("train")


def protocol_at_rung(protocol: ProxyProtocol, rung: int) -> ProxyProtocol:
    """`at_rung` with the pool of the protocol's own data (loads it once when `rung` > 1)."""
    return protocol if rung == 1 else at_rung(protocol, rung, training_pool(protocol))


def parse_rungs(text: str) -> tuple[int, ...]:
    """`1,3,10` -> (1, 3, 10): distinct positive integers, ascending."""
    try:
        rungs = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        rungs = ()
    if not rungs or rungs[0] < 1:
        raise ValueError(f"rungs={text!r} is invalid; accepted: positive integers separated by commas, e.g. 1,3,10")
    return rungs


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
    if layer.se_ratio is not None:  # SE
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
    assert spec.embed_dim is not None and spec.num_heads is not None  # set for `vit`
    dim, heads = scaled_width(spec.embed_dim, spec.num_heads, protocol.width_mult)
    layers = tuple(project_layer(layer, dim) for layer in spec.layers)
    if any(layer.hidden_dim(dim) < 1 for layer in layers):
        raise ValueError(f"width_mult={protocol.width_mult} is invalid for spec {spec.id}: a layer would have no "
                         f"hidden channel at width {dim}; accepted: a larger multiplier")
    return spec.replace(
        layers=layers, embed_dim=dim, num_heads=heads, img_size=protocol.img_size, patch_size=protocol.patch_size,
        in_chans=in_chans or protocol.in_chans, num_classes=num_classes or protocol.num_classes,
        drop_path_rate=protocol.drop_path_rate)


def proxy_of(spec: ArchSpec, protocol: ProxyProtocol, data_shape: tuple[int, int]) -> ArchSpec:
    """The proxy spec of a target spec for data of (`in_chans`, `num_classes`)."""
    in_chans, num_classes = data_shape
    return project_to_proxy(spec, protocol, num_classes=num_classes, in_chans=in_chans)


__all__ = ["DEFAULT_RUNGS", "ProxyProtocol", "at_rung", "parse_rungs", "project_layer", "project_to_proxy",
           "protocol_at_rung", "proxy_of", "scaled_width", "training_pool"]
