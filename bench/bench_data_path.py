"""Images/s of the image-folder data path before and after the decoded cache, beside the model's own rate.

    python -m bench.bench_data_path                    # 10,000 JPEGs in 100 classes (generating them takes minutes)
    python -m bench.bench_data_path --images 2000      # a smaller tree when time is short

On a generated ImageNet-like tree (JPEGs of about 500x375, quality 90, smooth colour fields with
noise, in a temporary folder; `--tree DIR` reuses one), at the proxy's resolution (`--size`, 64):

* before: the streaming loader of cd57394 (torchvision ImageFolder, RandomResizedCrop(scale=(0.35, 1)),
  horizontal flip, ToTensor, Normalize; a DataLoader with 2 worker processes started every epoch),
  one epoch over `--before-images` training images per round;
* the one-time cost of `python -m proxy.prepare` (decoding the tree into the cache, 2 processes);
* after: `ProxyData.batches("train")` from the cache (random-resized crops, flips, normalisation on
  the batch), one epoch over every image per round, on 1 thread as a 1-CPU trial has;
* the model: LocalViT-T at the default proxy width (x0.5), `--size` px, patch 8 (8x8 tokens, the
  proxy's token count), 3 channels, 100 classes, fp32, 1 thread: images/s of training steps
  (forward, backward, AdamW) on batches of 128.

Each figure is the median over rounds with a distribution-free interval (`bench.common.median_interval`);
the rounds alternate between the three measurements so that drift in the machine's load hits
them alike. Results: bench/results/data_path.{json,md}.
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, markdown_table, median_interval, save


def _write_jpeg(job: tuple[str, int]) -> None:
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = (500, 375) if seed % 4 else (375, 500)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_tree(root: Path, images: int, classes: int, val_per_class: int = 2) -> Path:
    """An ImageNet-layout tree: `images` training JPEGs spread over `classes`, a few validation ones."""
    jobs: list[tuple[str, int]] = []
    for split, per_class in (("train", -(-images // classes)), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(str(folder / f"{split}_{c}_{i}.JPEG"), len(jobs) + i) for i in range(per_class)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_write_jpeg, jobs, chunksize=64)
    return root


def before_loader(tree: Path, size: int, batch: int, images: int, epoch: int):
    """cd57394's `--dataset imagefolder` training loader (one epoch over the first `images`)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    ds = datasets.ImageFolder(str(tree / "train"), transform=tf)
    subset = torch.utils.data.Subset(ds, np.random.default_rng(0).permutation(len(ds))[:images].tolist())
    gen = torch.Generator().manual_seed(epoch)
    return torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                                       num_workers=2, persistent_workers=False, prefetch_factor=4)


def images_per_s(batches) -> float:
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def model_step(size: int, batch: int, classes: int):
    """One training step of the default proxy of LocalViT-T at `size` px, and its spec."""
    from localvit import PAPER_SPECS
    from localvit.builder import build_model
    from proxy import ProxyProtocol, project_to_proxy
    from proxy.training import make_optimizer

    protocol = ProxyProtocol(dataset="imagefolder", data_dir=".", img_size=size, patch_size=8, batch_size=batch)
    spec = project_to_proxy(PAPER_SPECS["localvit_tiny"], protocol, num_classes=classes, in_chans=3)
    model = build_model(spec).train()
    optimizer = make_optimizer(model, protocol)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, spec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000, help="training JPEGs in the generated tree")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=64, help="the proxy's resolution")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before-images", type=int, default=1280, help="images per round of the streaming loader")
    ap.add_argument("--model-steps", type=int, default=4, help="timed training steps per round")
    ap.add_argument("--tree", type=Path, default=None, help="reuse (or keep) the generated tree here")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where data_path.{json,md} go")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one 1-CPU trial

    from proxy.data import ProxyData
    from proxy.image_cache import build

    work = Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    tree = args.tree or work / "tree"
    try:
        t = time.perf_counter()
        if not (tree / "train").is_dir():
            make_tree(tree, args.images, args.classes)
            print(f"generated {args.images} JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
        n_files = sum(1 for _ in (tree / "train").rglob("*.JPEG"))
        t = time.perf_counter()
        cache = build(tree, args.size, work / "cache", workers=2)
        prepare_s = time.perf_counter() - t
        print(f"prepared the cache of {n_files} images in {prepare_s:.1f} s", flush=True)
        data = ProxyData(dataset="imagefolder", data_dir=str(cache.path), img_size=args.size, train_size=0,
                         val_size=args.classes)
        step, spec = model_step(args.size, args.batch, args.classes)
        for _ in range(2):
            step()  # warm-up
        figures: dict[str, list[float]] = {"before": [], "after": [], "model": []}
        for r in range(args.rounds):
            figures["before"].append(images_per_s(before_loader(tree, args.size, args.batch, args.before_images, r)))
            figures["after"].append(images_per_s(data.batches("train", args.batch, epoch=r, seed=0)))
            t = time.perf_counter()
            for _ in range(args.model_steps):
                step()
            figures["model"].append(args.model_steps * args.batch / (time.perf_counter() - t))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in figures.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(name: str, what: str, values: list[float]) -> dict:
        low, high, coverage = median_interval(values)
        return {"path": name, "what": what, "images_per_s": statistics.median(values), "low": low, "high": high,
                "coverage": round(coverage, 3), "rounds": values}

    rows = [row("before", f"torchvision streaming loader, 2 workers, {args.before_images} images an epoch",
                figures["before"]),
            row("after", "ProxyData batches from the uint8 cache, 1 thread", figures["after"]),
            row("model", f"LocalViT-T proxy training (x0.5 width, {args.size} px, patch 8), fp32, 1 thread",
                figures["model"])]
    ratios = [a / m for a, m in zip(figures["after"], figures["model"])]
    speedups = [a / b for a, b in zip(figures["after"], figures["before"])]
    summary = {"prepare_s": round(prepare_s, 1), "prepare_images_per_s": round(n_files / prepare_s, 1),
               "after_over_model": statistics.median(ratios), "after_over_model_interval": median_interval(ratios)[:2],
               "after_over_before": statistics.median(speedups),
               "after_over_before_interval": median_interval(speedups)[:2], "model_spec": spec.id}
    settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "images_found": n_files}
    table = markdown_table([{**r, "interval": f"[{r['low']:.0f}, {r['high']:.0f}]"} for r in rows],
                           ["path", "what", "images_per_s", "interval"])
    markdown = (f"# Image-folder data path at {args.size} px ({n_files} JPEGs, {args.classes} classes)\n\n{table}\n\n"
                f"- cache prepared once in {prepare_s:.1f} s ({n_files / prepare_s:.0f} images/s, 2 processes)\n"
                f"- after / model: {summary['after_over_model']:.1f}x "
                f"[{summary['after_over_model_interval'][0]:.1f}, {summary['after_over_model_interval'][1]:.1f}]"
                f" (goal: at least 10x)\n"
                f"- after / before: {summary['after_over_before']:.1f}x "
                f"[{summary['after_over_before_interval'][0]:.1f}, {summary['after_over_before_interval'][1]:.1f}]")
    rows.append({"path": "summary", **summary})
    print(save("data_path", rows, settings, markdown, args.results).read_text())


if __name__ == "__main__":
    main()
