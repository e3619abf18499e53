"""Command-line options that more than one command takes: the proxy protocol and the compute.

`run_search.py` and `python -m search.audit` build a `ProxyProtocol` from the same options, so
that an audited protocol is exactly the one a search can be told to use.
"""
from __future__ import annotations

import argparse
from typing import Any

from localvit.backbones import PROXY_IMG_SIZE, VIT_BACKBONES

from .data import DATASETS
from .proxy import PRECISIONS, ProxyProtocol
from .settings import SearchSettings


def add_proxy_options(parser: argparse.ArgumentParser) -> None:
    p = ProxyProtocol()
    g = parser.add_argument_group("proxy training")
    g.add_argument("--dataset", default=p.dataset, help=f"{', '.join(DATASETS)} (default: {p.dataset}; "
                                                          "fashion-pairs: use --img-size 56 --patch-size 8; fashion-rotations: 40 classes, "
                                                          "each item and its quarter turn)")
    g.add_argument("--data-dir", help="Fashion-MNIST idx files (every fashion-* task), or an ImageNet-layout folder "
                                      "(default: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--img-size", type=int, help=f"proxy resolution (default: {p.img_size} for the ViT "
                                                 f"backbones, {PROXY_IMG_SIZE} for the stage backbones)")
    for name, kind, text in (("train-size", int, "training images"), ("val-size", int, "validation images"),
                             ("patch-size", int, "proxy patch of the ViT backbones"),
                             ("width-mult", float, "width multiplier of the proxy"), ("epochs", int, "epochs"),
                             ("batch-size", int, "batch size"), ("lr", float, "peak learning rate"),
                             ("warmup-epochs", float, "linear warm-up, in epochs")):
        attr = name.replace("-", "_")
        g.add_argument(f"--{name}", type=kind, default=getattr(p, attr), help=f"{text} (default: {getattr(p, attr)})")
    g.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    g.add_argument("--precision", default=p.precision, help=f"{', '.join(PRECISIONS)} (default: {p.precision}: "
                                                              "bf16 where the CPU computes it natively)")


def protocol_from_args(args: argparse.Namespace, backbone: str, seed: int) -> ProxyProtocol:
    img_size = args.img_size or (ProxyProtocol.img_size if backbone in VIT_BACKBONES else PROXY_IMG_SIZE)
    return ProxyProtocol(dataset=args.dataset, data_dir=args.data_dir, train_size=args.train_size,
                         val_size=args.val_size, img_size=img_size, patch_size=args.patch_size,
                         width_mult=args.width_mult, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         warmup_epochs=args.warmup_epochs, augment=not args.no_augment, precision=args.precision,
                         seed=seed)


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    d = SearchSettings()
    g = parser.add_argument_group("compute")
    g.add_argument("--workers", type=int, default=d.workers, help=f"concurrent trials (default: {d.workers})")
    g.add_argument("--cpus-per-trial", type=float, help="(default: the CPUs shared by the workers)")
    g.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial,
                   help="GPUs per trial, fractions allowed; only what the cluster has (default: 0)")
    g.add_argument("--ray-address", help="join an existing Ray cluster, e.g. auto or 10.0.0.1:6379; the project's "
                                          "code is shipped to its nodes (default: start a local one)")
    g.add_argument("--ray-storage", metavar="PATH_OR_URI",
                   help="Ray Tune's experiment folder, which every node must see: a shared folder or an s3:// or "
                        "gs:// URI (default: the study folder, enough for one machine)")
    g.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retry a trial lost to the infrastructure (a node or worker died) this many times on "
                        f"another node; it keeps its candidate and does not count as a trial (default: {d.max_retries})")


def compute_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The SearchSettings fields of the compute options."""
    return {"workers": args.workers, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "ray_address": args.ray_address, "ray_storage": args.ray_storage, "max_retries": args.max_retries}
