"""An ImageNet-layout folder decoded once into a uint8 cache at the proxy's resolution.

`build` (``python -m proxy.prepare DIR --size 64 [--classes 100] [--out CACHE]``) writes CACHE/ with
``train-images.u8`` (N, 3, S, S) uint8, ``train-labels.npy`` and, where ``DIR/val`` exists,
the same for the test split, plus ``manifest.json`` (source folder, size, class list, counts,
skipped files, a hash of the folder's listing and one of the decoded content). Without
``--out`` it writes where ``--dataset imagefolder --data-dir DIR --img-size S`` looks, so a
search finds it; ``--data-dir CACHE`` also accepts a prepared cache directly. A search that
finds no cache builds it on first use (`ensure_cache`: one builder per node under a file lock,
written to a temporary folder and moved into place), and every trial memory-maps the same files:
no trial decodes a JPEG again.

Each image is resized so its shorter side is S (PIL, antialiased; JPEGs decoded with
``Image.draft`` at the smallest scale that still gives at least S pixels, which makes decoding
several times faster) and centre-cropped to S x S. This keeps the whole centre square: training
draws random-resized crops from it on the batch (`proxy.data.random_resized_crop`) and
evaluation sees it whole, instead of a further 87.5 % centre crop that would throw away the
border that the crops are drawn from. An unreadable or corrupt image is skipped, logged and
counted in the manifest (``ProxyData.skipped``), never a failure of the search.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_VERSION = 1
#: What torchvision's ImageFolder accepts as an image.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESIZE = "shorter side to S (PIL bicubic, antialiased; JPEG draft decoding), centre crop S x S"
LAYOUT = "accepted: DIR/train/<class>/<image> (optionally DIR/val/<class>/<image>) or DIR/<class>/<image>"


@dataclass(frozen=True)
class ImageCache:
    """A prepared cache: its folder and manifest; `arrays` memory-maps a split."""

    path: Path
    manifest: dict

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def skipped(self) -> int:
        return int(self.manifest["skipped"])

    def has(self, split: str) -> bool:
        return split in self.manifest["counts"]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, 3, S, S) uint8, memory-mapped copy-on-write (pages shared by every process
        on the node), and int64 labels of split `train` or `test`."""
        n, s = self.manifest["counts"][split], self.size
        images = np.memmap(self.path / f"{split}-images.u8", dtype=np.uint8, mode="c", shape=(n, 3, s, s))
        return images, np.load(self.path / f"{split}-labels.npy")


def decode(path: str | Path, size: int) -> np.ndarray | None:
    """One image as (3, size, size) uint8 (see the module's docstring), or None if unreadable."""
    try:
        with Image.open(path) as file:
            file.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers size
            rgb = file.convert("RGB")
        w, h = rgb.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        square = rgb.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        logger.warning("skipped %s: %s", path, err)
        return None


def _decode_job(job: tuple[str, int]) -> np.ndarray | None:
    return decode(*job)


def scan(root: str | Path, num_classes: int | None = None
         ) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """The class names (sorted folder names, the first `num_classes` of them when given) and the
    image files of each split, as (path, label): `train` from DIR/train (or DIR), `test` from
    DIR/val when DIR/train and DIR/val both exist."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; {LAYOUT}")
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = root / "val" if train_root != root and (root / "val").is_dir() else None
    classes = sorted(d.name for d in train_root.iterdir() if d.is_dir())
    if num_classes is not None:
        if num_classes < 1 or num_classes > len(classes):
            raise ValueError(f"classes={num_classes} is invalid for {train_root} ({len(classes)} class folders); "
                             f"accepted: 1 to {len(classes)}")
        classes = classes[:num_classes]
    files = {"train": _files(train_root, classes)}
    if not files["train"]:
        raise ValueError(f"no images in {train_root}; {LAYOUT}")
    if test_root is not None:
        files["test"] = _files(test_root, classes)
    return tuple(classes), files


def _files(folder: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for label, name in enumerate(classes):
        d = folder / name
        if d.is_dir():
            out += [(str(p), label) for p in sorted(d.rglob("*"))
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return out


def fingerprint(root: Path, files: dict[str, list[tuple[str, int]]]) -> str:
    """A hash of the listing (relative path, label, size, modification time): a changed folder
    gives another fingerprint."""
    h = hashlib.sha256()
    for split in sorted(files):
        for path, label in files[split]:
            st = os.stat(path)
            h.update(f"{split}|{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def open_cache(path: str | Path, *, source: str | Path | None = None, size: int | None = None) -> ImageCache:
    """A prepared cache, checked against the folder and size it must have been made from (when given)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a prepared image cache ({err}); accepted: a folder written by "
                         f"`python -m proxy.prepare`") from None
    if manifest.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} is an image cache of version {manifest.get('version')}; accepted: version "
                         f"{CACHE_VERSION} (prepare it again)")
    if source is not None and manifest["source"] != str(Path(source).resolve()):
        raise ValueError(f"{path} was made from {manifest['source']}, not {Path(source).resolve()}; accepted: "
                         f"another --out, or the folder it was made from")
    if size is not None and manifest["size"] != size:
        raise ValueError(f"{path} was made at size {manifest['size']}, not {size}; accepted: --img-size "
                         f"{manifest['size']}, or a cache prepared at {size}")
    return ImageCache(path, manifest)


def build(root: str | Path, size: int, out: str | Path, *, num_classes: int | None = None, workers: int = 2
          ) -> ImageCache:
    """Decode `root` into a new cache at `out` (replacing one there), atomically: written to a
    temporary folder beside it, then renamed. Call it under `locked` (`ensure_cache` does)."""
    root, out = Path(root).resolve(), Path(out)
    if size < 1:
        raise ValueError(f"size={size} is invalid; accepted: a positive resolution")
    classes, files = scan(root, num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        content = hashlib.sha256()
        counts, per_class, skipped = {}, {}, []
        for split, items in files.items():
            labels = []
            with open(tmp / f"{split}-images.u8", "wb") as fh:
                for (path, label), image in zip(items, _decoded([p for p, _ in items], size, workers)):
                    if image is None:
                        skipped.append(os.path.relpath(path, root))
                        continue
                    raw = image.tobytes()
                    fh.write(raw)
                    content.update(raw)
                    labels.append(label)
            labels_arr = np.asarray(labels, dtype=np.int64)
            np.save(tmp / f"{split}-labels.npy", labels_arr)
            content.update(labels_arr.tobytes())
            counts[split] = len(labels)
            per_class[split] = np.bincount(labels_arr, minlength=len(classes)).tolist()
        if not counts["train"]:
            raise ValueError(f"no readable images in {root} ({len(skipped)} skipped); {LAYOUT}")
        if skipped:
            logger.warning("%s: %d unreadable image(s) skipped (listed in %s)", root, len(skipped), out / MANIFEST)
        manifest = {"version": CACHE_VERSION, "source": str(root), "size": size, "resize": RESIZE,
                    "classes": list(classes), "counts": counts, "per_class": per_class, "skipped": len(skipped),
                    "skipped_files": skipped, "files_sha256": fingerprint(root, files),
                    "content_sha256": content.hexdigest(),
                    "made": datetime.now(UTC).isoformat(timespec="seconds")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():  # a stale cache: moved aside first (processes that map it keep reading it)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / "cache")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageCache(out, manifest)


def _decoded(paths: list[str], size: int, workers: int) -> Iterator[np.ndarray | None]:
    jobs = [(p, size) for p in paths]
    if workers <= 1 or len(jobs) < 64:
        yield from map(_decode_job, jobs)
        return
    # fork: the workers need only PIL and numpy, and start at once
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_decode_job, jobs, chunksize=32)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock: one builder per node, the others wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_cache(root: str | Path, size: int, out: str | Path, *, num_classes: int | None = None,
                 workers: int = 2) -> ImageCache:
    """The cache of `root` at `size` in `out`, built (once per node) if missing or if the folder
    changed since; a cache made from another folder or size is an error."""
    root, out = Path(root), Path(out)
    classes, files = scan(root, num_classes)  # bad input fails here, before anything is written
    with locked(out):
        if (out / MANIFEST).is_file():
            cache = open_cache(out, source=root, size=size)
            if cache.classes == classes and cache.manifest["files_sha256"] == fingerprint(root.resolve(), files):
                return cache
            logger.warning("%s changed since %s was made: decoding it again", root, out)
        return build(root, size, out, num_classes=num_classes, workers=workers)
