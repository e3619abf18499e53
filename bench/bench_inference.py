"""Inference throughput of LocalViT-T vs timm's DeiT-T (issue: the paper lost 2.7% on a TITAN Xp).

    python -m bench.bench_inference [--batch 64] [--threads 2] [--rounds 5] [--device cpu]

Models are timed in interleaved rounds (A, B, C, A, B, C, ...) so that drift in machine
load hits all of them alike; the figure per model is the median over rounds of each round's
median batch time. Prints a table and saves bench/results/inference.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import timm
import torch

import localvit  # noqa: F401  (registers the models)
from bench.common import markdown_table, save
from localvit import fold_batchnorm
from space.throughput import measure_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    localvit_t = timm.create_model("localvit_tiny").eval()
    models = {
        "deit_tiny_patch16_224 (timm)": timm.create_model("deit_tiny_patch16_224").eval(),
        "localvit_tiny (eager)": localvit_t,
        "localvit_tiny (BN folded)": fold_batchnorm(copy.deepcopy(localvit_t)),
    }
    per_round: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            result = measure_model(model, batch=args.batch, img_size=args.img_size, device=args.device,
                                   dtype=args.dtype, warmup=1, repeats=args.repeats, threads=args.threads)
            per_round[name].append(result.images_per_s)
    baseline = statistics.median(per_round["deit_tiny_patch16_224 (timm)"])
    rows = []
    for name, values in per_round.items():
        ips = statistics.median(values)
        rows.append({"model": name, "images/s": ips, "min": min(values), "max": max(values),
                     "vs DeiT-T": f"{100 * (ips / baseline - 1):+.1f}%"})
    table = markdown_table(rows, ["model", "images/s", "min", "max", "vs DeiT-T"])
    header = (f"Inference, batch {args.batch}, {args.img_size}x{args.img_size}, {args.dtype}, device {result.device}, "
              f"threads {args.threads if args.device == 'cpu' else '-'}, {args.rounds} interleaved rounds "
              f"x {args.repeats} batches (median; min/max over rounds).")
    print(header + "\n\n" + table)
    save("inference" if args.device == "cpu" else f"inference_{args.device}", rows, vars(args), header + "\n\n" + table)


if __name__ == "__main__":
    main()
