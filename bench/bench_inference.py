"""Inference throughput of LocalViT-T vs timm's DeiT-T (issue: the paper lost 2.7% on a TITAN Xp).

    python -m bench.bench_inference [--batch 64] [--threads 2] [--rounds 12] [--device cpu]

Models are timed in interleaved rounds under `torch.inference_mode`; "images/s" is the median
over rounds, "vs DeiT-T" the median over rounds of each round's change against DeiT-T with a
distribution-free confidence interval (see `bench.common`), "loses < 2.7%" whether that whole
interval is within the paper's loss; "vs 4 heads" is the change against DeiT-T built with
LocalViT-T's 4 heads, which leaves what the locality FFN costs. `make bench` runs it with
jemalloc, as the search does. Prints a table and saves bench/results/inference[_<device>].{json,md}.
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
PAPER_LOSS = 0.027  # LocalViT-T's throughput lost to DeiT-T on a TITAN Xp
#: DeiT-T with LocalViT-T's 4 heads of 48 instead of 3 of 64: same parameters and FLOPs, so its
#: change against DeiT-T is what the official head count alone costs.
FOUR_HEADS = "deit_tiny_patch16_224, 4 heads"


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
        FOUR_HEADS: timm.create_model("deit_tiny_patch16_224", num_heads=4).eval(),
        "localvit_tiny (eager)": localvit_t,
        "localvit_tiny (BN folded)": fold_batchnorm(copy.deepcopy(localvit_t)),
        "localvit_tiny (inference mode)": optimize_for_inference(copy.deepcopy(localvit_t)),
    }
    per_round = interleaved_throughput(models, args.rounds, batch=args.batch, img_size=args.img_size,
                                       device=args.device, dtype=args.dtype, warmup=1, repeats=args.repeats,
                                       threads=args.threads)
    rows = []
    for name, values in per_round.items():
        change = paired_change(values, per_round[BASELINE])
        rows.append({"model": name, "images/s": statistics.median(values), "min": min(values), "max": max(values),
                     "vs DeiT-T": str(change), "vs 4 heads": str(paired_change(values, per_round[FOUR_HEADS])),
                     "loses < 2.7%": change.verdict(-PAPER_LOSS) if name.startswith("localvit") else "-"})
    table = markdown_table(rows, list(rows[0]))
    on_cpu = args.device == "cpu"
    device = torch.cuda.get_device_name(0) if not on_cpu else f"CPU, {args.threads} thread(s), {allocator()}"
    header = (f"Inference, batch {args.batch}, {args.img_size}x{args.img_size}, {args.dtype}, {device}, "
              f"{args.rounds} interleaved rounds x {args.repeats} batches (median; min/max over rounds; "
              f"changes with their {100 * change.coverage:.0f}% interval).")
    print(header + "\n\n" + table)
    save("inference" if on_cpu else f"inference_{args.device}", rows, vars(args), header + "\n\n" + table)


if __name__ == "__main__":
    main()
