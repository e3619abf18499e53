"""Inference throughput of LocalViT-T vs timm's DeiT-T (issue: the paper lost 2.7% on a TITAN Xp).

    python -m bench.bench_inference [--batch 64] [--threads 2] [--rounds 12] [--device cpu]

Models are timed in interleaved rounds under `torch.inference_mode`; "images/s" is the median
over rounds, "vs DeiT-T" the median over rounds of each round's change against DeiT-T (see
`bench.common`). `make bench` runs it with jemalloc, as the search does. Prints a table and
saves bench/results/inference[_<device>].{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import timm
import torch

import localvit  # noqa: F401  (registers the models)
from bench.common import allocator, interleaved_throughput, markdown_table, paired_change, save
from localvit import fold_batchnorm, optimize_for_inference

BASELINE = "deit_tiny_patch16_224 (timm)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    localvit_t = timm.create_model("localvit_tiny").eval()
    models = {
        BASELINE: timm.create_model("deit_tiny_patch16_224").eval(),
        "localvit_tiny (eager)": localvit_t,
        "localvit_tiny (BN folded)": fold_batchnorm(copy.deepcopy(localvit_t)),
        "localvit_tiny (inference mode)": optimize_for_inference(copy.deepcopy(localvit_t)),
    }
    per_round = interleaved_throughput(models, args.rounds, batch=args.batch, img_size=args.img_size,
                                       device=args.device, dtype=args.dtype, warmup=1, repeats=args.repeats,
                                       threads=args.threads)
    rows = [{"model": name, "images/s": statistics.median(values), "min": min(values), "max": max(values),
             "vs DeiT-T": f"{100 * paired_change(values, per_round[BASELINE]):+.1f}%"}
            for name, values in per_round.items()]
    table = markdown_table(rows, ["model", "images/s", "min", "max", "vs DeiT-T"])
    on_cpu = args.device == "cpu"
    device = torch.cuda.get_device_name(0) if not on_cpu else f"CPU, {args.threads} thread(s), {allocator()}"
    header = (f"Inference, batch {args.batch}, {args.img_size}x{args.img_size}, {args.dtype}, {device}, "
              f"{args.rounds} interleaved rounds x {args.repeats} batches (median; min/max over rounds).")
    print(header + "\n\n" + table)
    save("inference" if on_cpu else f"inference_{args.device}", rows, vars(args), header + "\n\n" + table)


if __name__ == "__main__":
    main()
