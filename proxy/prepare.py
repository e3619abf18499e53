"""``python -m proxy.prepare DIR --size S [--classes N] [--out CACHE]``: decode an image folder once.

The cache (`proxy.image_cache`) goes by default where ``--dataset imagefolder --data-dir DIR
--img-size S`` looks for it, so that a search finds it ready; see docs/proxy.md.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from localvit.cli import OneLineErrors, log, run_cli

from .data import DataConfig, image_cache_path
from .image_cache import ensure_cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrors(prog="python -m proxy.prepare",
                           description="Decode an image folder once into the proxy's uint8 cache.")
    parser.add_argument("folder", help="an ImageNet-layout folder (DIR/train/<class>/*, optionally DIR/val/...)")
    parser.add_argument("--size", type=int, required=True, help="the proxy's resolution S (images become S x S)")
    parser.add_argument("--classes", type=int, default=None, help="keep the first N classes (sorted by name)")
    parser.add_argument("--out", default=None, help="the cache folder (default: where the search looks for it)")
    parser.add_argument("--cache-dir", default=None, help="the search's --cache-dir, for the default --out")
    parser.add_argument("--workers", type=int, default=DataConfig.num_workers, help="decoding processes")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else image_cache_path(args.folder, args.size, args.cache_dir, args.classes)
    cache = ensure_cache(args.folder, args.size, out, num_classes=args.classes, workers=args.workers)
    counts = ", ".join(f"{split} {n}" for split, n in cache.manifest["counts"].items())
    data_dir = out if args.out or args.classes else args.folder  # a class subset is named by its cache
    log(f"{out}: {len(cache.classes)} classes at {cache.size} px ({counts}; {cache.skipped} skipped); a search "
        f"takes it with --dataset imagefolder --data-dir {data_dir} --img-size {cache.size}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_cli(main)
