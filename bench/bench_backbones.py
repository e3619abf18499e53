"""Inference throughput of each LocalViT stage backbone vs its baseline, eager and BN-folded.

    python -m bench.bench_backbones [--batch 32] [--threads 2] [--rounds 3] [--families pvt,swin_tiny,...]

The paper lost 22% (PVT) and 23% (Swin) to the baselines on a TITAN Xp; the aim is to lose
at most half of that. All models are timed in interleaved rounds (so drift in machine load
hits them alike) under `torch.inference_mode`; the figure per model is the median over
rounds of each round's median batch time. Prints a table and saves
bench/results/backbones.{json,md,csv}.
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics

import timm
import torch

from bench.common import RESULTS, markdown_table, save
from localvit import fold_batchnorm
from localvit.backbones import PAPER_NAMES
from space.throughput import measure_model

PAPER_LOSS = {"pvt_tiny": 0.22, "swin_tiny": 0.23}  # throughput lost to the baseline on a TITAN Xp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per round")
    parser.add_argument("--backbones", default="pvt_tiny,swin_tiny,swin_mini,tnt_tiny,t2t_7")
    args = parser.parse_args()

    models: dict[tuple[str, str], torch.nn.Module] = {}
    for backbone in args.backbones.split(","):
        baseline_name, localvit_name = PAPER_NAMES[backbone]
        local = timm.create_model(localvit_name).eval()
        models[(backbone, f"{baseline_name} (baseline)")] = timm.create_model(baseline_name).eval()
        models[(backbone, f"{localvit_name} (eager)")] = local
        models[(backbone, f"{localvit_name} (BN folded)")] = fold_batchnorm(copy.deepcopy(local))
    per_round: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for key, model in models.items():
                result = measure_model(model, batch=args.batch, img_size=224, warmup=1, repeats=args.repeats,
                                       threads=args.threads)
                per_round[key].append(result.images_per_s)

    rows, baseline_ips = [], {}
    for (backbone, name), values in per_round.items():
        ips = statistics.median(values)
        baseline_ips.setdefault(backbone, ips)  # the baseline comes first for each backbone
        loss = 1 - ips / baseline_ips[backbone]
        target = PAPER_LOSS.get(backbone)
        rows.append({"backbone": backbone, "model": name, "images/s": ips, "min": min(values), "max": max(values),
                     "loss vs baseline": f"{100 * loss:.1f}%",
                     "paper loss": f"{100 * target:.0f}%" if target else "-",
                     "aim (half)": ("met" if loss <= target / 2 else "missed") if target and "baseline" not in name
                     else "-"})
    columns = list(rows[0])
    table = markdown_table(rows, columns)
    header = (f"Inference, batch {args.batch}, 224x224, float32, {result.device}, threads {args.threads}, "
              f"{args.rounds} interleaved rounds x {args.repeats} batches (median; min/max over rounds).")
    print(header + "\n\n" + table)
    save("backbones", rows, vars(args), header + "\n\n" + table)
    with open(RESULTS / "backbones.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
