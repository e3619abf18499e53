"""Proxy data for the search: a small, fixed train/validation split and a held-out test split.

Sources:

* ``fashion-mnist``: the four idx files (gzip or plain) from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or any ``--data-dir``
  holding them. Decoded once to uint8 ``.npy`` files under a cache directory (memory-mapped,
  so every Ray worker on the machine shares the page cache instead of re-decoding), then held
  in memory as uint8 tensors; augmentation (random crop with padding, horizontal flip) and
  normalisation run on whole batches in the training loop, without DataLoader workers.
* ``fashion-pairs``: a harder task made of the same files, harder in the ways ImageNet is:
  56x56 mosaics of four items (2x2), whose class is the pair of the top-left and the
  bottom-right item (100 classes; the other two are distractors). It rewards capacity (many
  classes) and global mixing (the two items that decide the class are far apart) as well as
  locality. Mosaics are drawn deterministically (``split_seed``) with balanced classes: train
  and validation mosaics from disjoint pools of the train files, test mosaics from the t10k
  files. No horizontal flip (it would swap the items that name the class).
* ``fashion-rotations`` (default): a harder task at Fashion-MNIST's cost (28 px): every item is
  turned by 0, 90, 180 or 270 degrees (drawn per image, deterministically in ``split_seed``)
  and the class is the pair (item, turn), 40 classes. Telling a trouser's waist from its hems,
  or a bag's handle from its bottom, takes the whole image's layout (global mixing) as well as
  local texture, and four times the classes ask for capacity. No horizontal flip (it would
  turn 90 into 270 degrees). The default because it ranks the paper's designs as ImageNet does
  better than plain Fashion-MNIST at the same cost (studies/protocol_study.py, README).
* ``imagefolder``: any ImageNet-layout folder (``DIR/train/<class>/*.JPEG`` and optionally
  ``DIR/val/<class>/...``, or ``DIR/<class>/...``), decoded once at ``img_size`` into a uint8
  cache that every trial on the node memory-maps (`proxy.image_cache`, `python -m proxy.prepare`;
  ``--data-dir`` may also name a prepared cache); training batches get random-resized crops and flips on the batch.

Every source ends as uint8 tensors; batches are cut, augmented and normalised on the data's
device (``ProxyData.to``), from random draws made on the CPU, so a seed gives the same batches
on every device.

The train/validation split is drawn from the TRAIN files only, stratified by class and
deterministic in ``split_seed``; the test split (``t10k`` files, or ``DIR/val``) is never
touched by the search and is only reached through ``ProxyData.batches("test")``.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import math
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.nn import functional as F

from .image_cache import MANIFEST, ensure_cache, open_cache

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion-mnist", "fashion-pairs", "fashion-rotations", "imagefolder")
#: fashion-rotations: the quarter turns an item may be given (class = 4 * item + turn).
TURNS = 4
#: fashion-pairs: 2x2 mosaics of Fashion-MNIST items; the class is the pair (top-left, bottom-right).
PAIRS_GRID, PAIRS_TEST_SIZE, PAIRS_VAL_POOL = 2, 10_000, 10_000
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
HOW_TO_GET_FMNIST = ("install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding "
                     "the four idx files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                     "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])")
#: Image folders: torchvision's RandomResizedCrop ranges, as the streamed loader used before the cache.
RRC_SCALE, RRC_RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
SPLITS = ("train", "val", "test")
#: Tasks whose class a horizontal flip would change.
UNFLIPPABLE = ("fashion-pairs", "fashion-rotations")


# --- configuration ----------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig:
    """What to load. ``train_size``/``val_size`` of 0 mean "all that is left"; ``img_size`` 0
    keeps the native resolution (28 for Fashion-MNIST; it is required for image folders)."""

    dataset: str = "fashion-rotations"
    data_dir: str | None = None
    train_size: int = 4000
    val_size: int = 2000
    img_size: int = 28
    split_seed: int = 0
    augment: bool = True
    crop_padding: int = 2
    hflip: bool = True
    cache_dir: str | None = None
    num_workers: int = 2  # image folders: processes decoding the folder into its cache (once)
    classes: tuple[int, ...] | None = None  # a subset of class indices (relabelled 0..k-1), e.g. an easy task

    def __post_init__(self) -> None:
        if self.classes is not None:
            classes = tuple(self.classes)
            if not classes or len(set(classes)) != len(classes) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
                raise ValueError(f"classes={self.classes!r} is invalid; accepted: distinct class indices")
            object.__setattr__(self, "classes", classes)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is invalid; accepted: {', '.join(DATASETS)}")
        for name in ("train_size", "val_size", "img_size", "crop_padding", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid; accepted: a non-negative integer")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ValueError("dataset='imagefolder' needs --data-dir PATH (an ImageNet-layout folder: "
                             "PATH/train/<class>/*.JPEG, optionally PATH/val/<class>/...)")

    def to_dict(self) -> dict:
        return asdict(self)


# --- Fashion-MNIST idx files ----------------------------------------------------------------

def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}; {HOW_TO_GET_FMNIST}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not a readable idx file ({err}); {HOW_TO_GET_FMNIST}") from None


def read_idx(path: str | Path, expect_ndim: int) -> np.ndarray:
    """Read one idx file (gzip or plain) of unsigned bytes, checking magic number and sizes."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path} is too short to be an idx file ({len(raw)} bytes); {HOW_TO_GET_FMNIST}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_ndim:
        raise ValueError(f"{path} has magic number 0x{raw[:4].hex()}, expected 0x0000080{expect_ndim} "
                         f"(uint8 idx, {expect_ndim}-D); {HOW_TO_GET_FMNIST}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated in its header; {HOW_TO_GET_FMNIST}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ValueError(f"{path} holds {len(raw) - header} data bytes but its header says {dims} "
                         f"({size} bytes); {HOW_TO_GET_FMNIST}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LOCALVIT_NAS_CACHE", Path.home() / ".cache" / "localvit-nas"))


def _fmnist_key(data_dir: Path) -> str:
    parts = []
    for stem in FASHION_MNIST_FILES.values():
        path = _find_idx(data_dir, stem)
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def load_fashion_mnist(data_dir: str | Path | None = None, cache_dir: str | Path | None = None
                       ) -> dict[str, np.ndarray]:
    """The four arrays (``train_images`` (60000, 28, 28) uint8, ``train_labels``, ``test_*``).

    Decoded arrays are cached as ``.npy`` under ``cache_dir`` and memory-mapped read-only, so
    concurrent workers share them; a cache that cannot be written is silently skipped.
    """
    data_dir = Path(data_dir) if data_dir else DEFAULT_FASHION_MNIST_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {data_dir} does not exist; {HOW_TO_GET_FMNIST}")
    key = _fmnist_key(data_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = {name: cache / f"fashion-mnist-{key}-{name}.npy" for name in FASHION_MNIST_FILES}
    if all(p.is_file() for p in cached.values()):
        try:
            return _check_fmnist({name: np.load(p, mmap_mode="r") for name, p in cached.items()}, data_dir)
        except (OSError, ValueError):
            pass  # a broken cache: decode again
    arrays = {name: read_idx(_find_idx(data_dir, stem), 3 if name.endswith("images") else 1)
              for name, stem in FASHION_MNIST_FILES.items()}
    arrays = _check_fmnist(arrays, data_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name, path in cached.items():
            with tempfile.NamedTemporaryFile(dir=cache, suffix=".npy", delete=False) as fh:
                np.save(fh, arrays[name])
            os.replace(fh.name, path)
    except OSError:
        pass
    return arrays


def _check_fmnist(arrays: dict[str, np.ndarray], data_dir: Path) -> dict[str, np.ndarray]:
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"Fashion-MNIST {split} files in {data_dir} disagree: {images.shape[0]} images, "
                             f"{labels.shape[0]} labels; {HOW_TO_GET_FMNIST}")
        if images.shape[1:] != arrays["train_images"].shape[1:]:
            raise ValueError(f"Fashion-MNIST {split} images in {data_dir} are {images.shape[1:]}, train images "
                             f"{arrays['train_images'].shape[1:]}; {HOW_TO_GET_FMNIST}")
        top = int(labels.max())
        if top > 9:
            raise ValueError(f"Fashion-MNIST {split} labels in {data_dir} go up to {top}, expected 0-9; "
                             f"{HOW_TO_GET_FMNIST}")
    return arrays


# --- split ----------------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, train_size: int, val_size: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, class-balanced index sets (sorted) drawn from ``labels`` only, deterministic in ``seed``.

    ``val_size`` is taken first (the same validation set whatever ``train_size``); sizes of 0
    mean "all the rest". Per-class quotas differ by at most one image.
    """
    labels = np.asarray(labels)
    n = len(labels)
    val_size = val_size or n // 6
    train_size = train_size or n - val_size
    if train_size + val_size > n:
        raise ValueError(f"train_size={train_size} + val_size={val_size} is invalid; accepted: at most the "
                         f"{n} images of the train files")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    taken = {c: 0 for c in classes}

    def draw(total: int) -> np.ndarray:
        out = []
        quotas = _quotas(total, [len(pools[c]) - taken[c] for c in classes], rng)
        for c, q in zip(classes, quotas):
            out.append(pools[c][taken[c]:taken[c] + q])
            taken[c] += q
        return np.sort(np.concatenate(out))

    val = draw(val_size)
    train = draw(train_size)
    return train, val


def _quotas(total: int, available: list[int], rng: np.random.Generator) -> list[int]:
    k = len(available)
    base, extra = divmod(total, k)
    quotas = [base] * k
    for i in rng.permutation(k)[:extra]:
        quotas[i] += 1
    # classes short of images hand their shortfall to the others
    for _ in range(k):
        short = sum(max(0, q - a) for q, a in zip(quotas, available))
        if not short:
            break
        quotas = [min(q, a) for q, a in zip(quotas, available)]
        for i in sorted(range(k), key=lambda j: quotas[j] - available[j]):
            if short and quotas[i] < available[i]:
                add = min(short, available[i] - quotas[i])
                quotas[i] += add
                short -= add
    return quotas


def _pair_mosaics(arrays: dict[str, np.ndarray], cfg: DataConfig, num_items: int) -> dict[str, np.ndarray]:
    """Train+validation mosaics (in that order) from disjoint pools of the train files, test
    mosaics from the test files; class = num_items * class(top-left) + class(bottom-right)."""
    if not cfg.train_size or not cfg.val_size:
        raise ValueError(f"train_size={cfg.train_size}, val_size={cfg.val_size} are invalid for dataset="
                         f"'fashion-pairs'; accepted: positive numbers of mosaics")
    rng = np.random.default_rng(cfg.split_seed)
    train_pool, val_pool = stratified_split(arrays["train_labels"], 0, PAIRS_VAL_POOL, cfg.split_seed)
    images, labels = np.asarray(arrays["train_images"]), np.asarray(arrays["train_labels"])
    parts = [_mosaics(images[pool], labels[pool], n, num_items, rng)
             for pool, n in ((train_pool, cfg.train_size), (val_pool, cfg.val_size))]
    test = _mosaics(np.asarray(arrays["test_images"]), np.asarray(arrays["test_labels"]), PAIRS_TEST_SIZE,
                    num_items, rng)
    return {"train_images": np.concatenate([p[0] for p in parts]),
            "train_labels": np.concatenate([p[1] for p in parts]), "test_images": test[0], "test_labels": test[1]}


def _mosaics(images: np.ndarray, labels: np.ndarray, n: int, num_items: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """n mosaics with balanced pair classes: the two named cells hold items of the pair's classes,
    the other cells random items."""
    pair = rng.permutation(np.arange(n) % (num_items * num_items))
    by_class = [np.flatnonzero(labels == c) for c in range(num_items)]
    cells = rng.integers(0, len(labels), size=(n, PAIRS_GRID * PAIRS_GRID))
    cells[:, 0] = [rng.choice(by_class[c]) for c in pair // num_items]
    cells[:, -1] = [rng.choice(by_class[c]) for c in pair % num_items]
    side = images.shape[1]
    tiles = images[cells].reshape(n, PAIRS_GRID, PAIRS_GRID, side, side)
    mosaics = tiles.transpose(0, 1, 3, 2, 4).reshape(n, PAIRS_GRID * side, PAIRS_GRID * side)
    return np.ascontiguousarray(mosaics), pair.astype(np.int64)


def _quarter_turns(arrays: dict[str, np.ndarray], split_seed: int) -> dict[str, np.ndarray]:
    """Every image turned by a seeded number of quarter turns; class = TURNS * class + turns."""
    rng = np.random.default_rng([split_seed, TURNS])
    out = {}
    for split in ("train", "test"):
        images, labels = np.asarray(arrays[f"{split}_images"]), np.asarray(arrays[f"{split}_labels"])
        turns = rng.integers(0, TURNS, size=len(labels))
        turned = np.empty_like(images)
        for t in range(TURNS):
            chosen = turns == t
            turned[chosen] = np.rot90(images[chosen], k=t, axes=(1, 2))
        out[f"{split}_images"], out[f"{split}_labels"] = turned, TURNS * labels + turns
    return out


# --- batches --------------------------------------------------------------------------------
# Random draws come from a CPU generator in a fixed order (the same draws on every device), and
# only the small index and offset tensors move to the images' device.

def random_crop_flip(x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch (B, C, H, W) and random horizontal flip, on
    the batch's device."""
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        xp = F.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # (B, 1, W)
        if hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        x = xp.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    elif hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def random_resized_crop(x: torch.Tensor, hflip: bool, generator: torch.Generator,
                        scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO
                        ) -> torch.Tensor:
    """Per-image random crop of area fraction in `scale` and aspect ratio in `ratio` (log-uniform),
    resized back to (H, W) bilinearly, and an optional horizontal flip: torchvision's
    RandomResizedCrop on a whole batch (B, C, H, W) on its device, without its retries (a crop
    wider or taller than the image is clipped to it). Returns float32 in the input's range."""
    b, c, h, w = x.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    cw, ch = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of W, H
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - cw)  # the crop's centre, in [-1, 1] coordinates
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - ch)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sign * cw, cx, ch, cy
    grid = F.affine_grid(theta.to(x.device), [b, c, h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class ProxyData:
    """Proxy train / validation / test data behind one batch API, for every source.

    Every source gives uint8 images (N, C, S, S) and int64 labels: the Fashion-MNIST tasks
    (`_fashion_source`) and image folders through their decoded cache (`_folder_source`,
    `proxy.image_cache`). ``batches(split, batch_size, epoch=0, seed=0)`` yields ``(images float32
    (B, C, H, W) normalised, labels int64)`` on the data's device (``to(device)``: the images
    move there once, and cropping, flipping and normalising run there on whole batches); the
    train split is shuffled and augmented from ``seed`` and ``epoch`` and drops its last partial
    batch, the others are in order and complete.
    """

    def __init__(self, config: DataConfig | None = None, **overrides) -> None:
        config = config or DataConfig()
        if overrides:
            config = DataConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.device = torch.device("cpu")
        self.skipped = 0  # unreadable images left out of an image folder's cache
        self._tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # shared by `to` copies
        if config.dataset == "imagefolder":
            self._folder_source()
        else:
            self._fashion_source()

    # -- sources: each sets indices, img_size, in_chans, classes, num_classes, mean, std, _load --
    def _fashion_source(self) -> None:
        cfg = self.config
        arrays = load_fashion_mnist(cfg.data_dir, cfg.cache_dir)
        keep = cfg.classes or tuple(range(len(FASHION_MNIST_CLASSES)))
        if max(keep) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"classes={cfg.classes!r} is invalid; accepted: indices 0-9 of Fashion-MNIST")
        relabel = np.full(256, -1, dtype=np.int64)
        relabel[list(keep)] = np.arange(len(keep))
        arrays = dict(arrays)
        for split in ("train", "test"):
            labels = relabel[np.asarray(arrays[f"{split}_labels"])]
            if cfg.classes is not None:
                sel = np.flatnonzero(labels >= 0)
                arrays[f"{split}_images"] = np.asarray(arrays[f"{split}_images"])[sel]
                labels = labels[sel]
            arrays[f"{split}_labels"] = labels
        if cfg.dataset == "fashion-pairs":
            arrays = _pair_mosaics(arrays, cfg, len(keep))
            keep_names = tuple(f"{FASHION_MNIST_CLASSES[a]} | {FASHION_MNIST_CLASSES[b]}" for a in keep for b in keep)
            train_idx, val_idx = np.arange(cfg.train_size), cfg.train_size + np.arange(cfg.val_size)
        else:
            keep_names = tuple(FASHION_MNIST_CLASSES[c] for c in keep)
            if cfg.dataset == "fashion-rotations":
                arrays = _quarter_turns(arrays, cfg.split_seed)
                keep_names = tuple(f"{name} turned {90 * t}" for name in keep_names for t in range(TURNS))
            train_idx, val_idx = stratified_split(arrays["train_labels"], cfg.train_size, cfg.val_size,
                                                  cfg.split_seed)
        self.indices = {"train": train_idx, "val": val_idx}
        self.img_size = cfg.img_size or arrays["train_images"].shape[1]
        self.in_chans = 1
        self.num_classes = len(keep_names)
        self.classes = keep_names

        def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            images, labels = (arrays["test_images"], arrays["test_labels"]) if split == "test" else (
                arrays["train_images"][self.indices[split]], arrays["train_labels"][self.indices[split]])
            x = torch.from_numpy(np.array(images, dtype=np.uint8))[:, None]  # (N, 1, H, W) uint8
            if x.shape[-1] != self.img_size:
                x = F.interpolate(x.float(), size=(self.img_size, self.img_size), mode="bilinear",
                                  antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            return x.contiguous(), torch.from_numpy(np.asarray(labels, dtype=np.int64))

        self._load = load
        train = self.tensors("train")[0].float()
        self.mean: tuple[float, ...] = (train.mean().item() / 255,)
        self.std: tuple[float, ...] = (train.std().item() / 255,)

    def _folder_source(self) -> None:
        cfg = self.config
        if not cfg.img_size:
            raise ValueError("img_size=0 is invalid for dataset='imagefolder'; accepted: a positive resolution")
        if cfg.classes is not None:
            raise ValueError("classes=... is invalid for dataset='imagefolder'; accepted: None (prepare a cache "
                             "of the first N classes with `python -m proxy.prepare DIR --classes N`)")
        root = Path(cfg.data_dir or "")  # DataConfig requires it for image folders
        if (root / MANIFEST).is_file():  # --data-dir names a prepared cache
            cache = open_cache(root, size=cfg.img_size)
        else:
            cache = ensure_cache(root, cfg.img_size, image_cache_path(root, cfg.img_size, cfg.cache_dir),
                                 workers=cfg.num_workers)
        train_images, train_labels = cache.arrays("train")
        train_idx, val_idx = stratified_split(train_labels, cfg.train_size, cfg.val_size, cfg.split_seed)
        self.indices = {"train": train_idx, "val": val_idx}
        self.img_size = cfg.img_size
        self.in_chans = 3
        self.classes = cache.classes
        self.num_classes = len(cache.classes)
        self.mean, self.std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        self.skipped = cache.skipped
        self.cache = cache

        def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            if split == "test":
                if not cache.has("test"):
                    raise FileNotFoundError(f"no test split: {cfg.data_dir}/val does not exist (the search uses "
                                            f"{cfg.data_dir}/train only)")
                images, labels = cache.arrays("test")
                return torch.from_numpy(images), torch.from_numpy(labels)
            idx = self.indices[split]  # sorted: a forward read of the memory-mapped file
            return torch.from_numpy(np.ascontiguousarray(train_images[idx])), torch.from_numpy(train_labels[idx])

        self._load = load

    # -- common API --
    def to(self, device: str | torch.device) -> ProxyData:
        """This data with its batches made on `device` (a view sharing everything else); each
        split moves there once, on first use."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.device = device
        return moved

    def release(self, device: str | torch.device) -> None:
        """Drop the splits moved to `device` (every view of this data shares them), so that their
        memory can go back to the device; the host's copies stay."""
        name = str(torch.device(device))
        for key in [k for k in self._tensors if k[1] == name and name != "cpu"]:
            del self._tensors[key]

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images (N, C, H, W) and int64 labels of a split, on the data's device."""
        _check_split(split)
        key = (split, str(self.device))
        if key not in self._tensors:
            host = self._tensors.get((split, "cpu")) or self._load(split)
            self._tensors[(split, "cpu")] = host
            self._tensors[key] = (host[0].to(self.device), host[1].to(self.device))
        return self._tensors[key]

    def size(self, split: str) -> int:
        _check_split(split)
        if split == "test":
            return len(self.tensors("test")[1])
        return len(self.indices[split])

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.size("train") // batch_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0-255) images to float32 standardised by the source's mean and std."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch's augmentation: random-resized crops for image folders (their cache
        holds the whole centre square), crops of the zero-padded image for the Fashion-MNIST tasks;
        a horizontal flip unless it would change the class."""
        hflip = self.config.hflip and self.config.dataset not in UNFLIPPABLE
        if self.config.dataset == "imagefolder":
            return random_resized_crop(x, hflip, generator)
        return random_crop_flip(x, self.config.crop_padding, hflip, generator)

    def batches(self, split: str, batch_size: int, epoch: int = 0, seed: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check_split(split)
        train = split == "train"
        images, labels = self.tensors(split)
        n = len(labels)
        gen = torch.Generator().manual_seed(_mix(seed, epoch))  # on the CPU whatever the device
        order = torch.randperm(n, generator=gen) if train else None
        stop = (n // batch_size) * batch_size if train and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                x, y = images[start:start + batch_size], labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size].to(self.device)
                x, y = images[idx], labels[idx]
                if self.config.augment:
                    x = self.augment(x, gen)
            yield self.normalize(x), y

    def describe(self) -> dict:
        out = {"dataset": self.config.dataset, "img_size": self.img_size, "in_chans": self.in_chans,
               "num_classes": self.num_classes, "train": len(self.indices["train"]),
               "val": len(self.indices["val"]), "split_seed": self.config.split_seed}
        if self.config.dataset == "imagefolder":
            out["skipped"] = self.skipped
        return out


def image_cache_path(folder: str | Path, size: int, cache_dir: str | Path | None = None,
                     num_classes: int | None = None) -> Path:
    """Where the decoded cache of an image folder at `size` lives: one per folder, size and class
    count under the cache directory, so every trial on the node shares it."""
    key = hashlib.sha1(f"{Path(folder).resolve()}|{size}|{num_classes}".encode()).hexdigest()[:12]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / f"imagefolder-{size}px-{key}"


def _mix(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid; accepted: {', '.join(SPLITS)}")


@lru_cache(maxsize=4)
def get_proxy_data(config: DataConfig) -> ProxyData:
    """A per-process memo: trials in one (reused) Ray worker share one `ProxyData`."""
    return ProxyData(config)


__all__ = ["DataConfig", "ProxyData", "get_proxy_data", "image_cache_path", "load_fashion_mnist", "read_idx",
           "stratified_split", "random_crop_flip", "random_resized_crop", "DEFAULT_FASHION_MNIST_DIR",
           "HOW_TO_GET_FMNIST"]
