"""Inference throughput of each LocalViT stage backbone vs its baseline, eager and in inference mode.

    python -m bench.bench_backbones [--batch 32] [--threads 2] [--rounds 5] [--backbones pvt_tiny,swin_tiny,...]

The paper lost 22% (PVT) and 23% (Swin) to the baselines on a TITAN Xp; the aim is to lose
at most half of that. Models are timed in interleaved rounds under `torch.inference_mode`;
"images/s" is the median over rounds, "change" the median over rounds of each round's change
against the baseline with a distribution-free confidence interval (see `bench.common`); the
aim is `met` only when the whole interval meets it. `make bench` runs it with jemalloc.
Prints a table and saves bench/results/backbones.{json,md,csv}.
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics

import timm

from bench.common import RESULTS, allocator, interleaved_throughput, markdown_table, paired_change, save
from localvit import optimize_for_inference
from localvit.backbones import PAPER_NAMES

PAPER_LOSS = {"pvt_tiny": 0.22, "swin_tiny": 0.23}  # throughput lost to the baseline on a TITAN Xp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per round")
    parser.add_argument("--backbones", default="pvt_tiny,swin_tiny,swin_mini,tnt_tiny,t2t_7")
    args = parser.parse_args()

    rows = []
    for backbone in args.backbones.split(","):  # one backbone at a time: its three models interleaved
        baseline_name, localvit_name = PAPER_NAMES[backbone]
        local = timm.create_model(localvit_name).eval()
        models = {f"{baseline_name} (baseline)": timm.create_model(baseline_name).eval(),
                  f"{localvit_name} (eager)": local,
                  f"{localvit_name} (inference mode)": optimize_for_inference(copy.deepcopy(local))}
        per_round = interleaved_throughput(models, args.rounds, batch=args.batch, img_size=224, warmup=1,
                                           repeats=args.repeats, threads=args.threads)
        baseline = next(iter(per_round.values()))
        target = PAPER_LOSS.get(backbone)
        for name, values in per_round.items():
            change = paired_change(values, baseline)
            is_local = values is not baseline
            rows.append({"backbone": backbone, "model": name, "images/s": statistics.median(values),
                         "min": min(values), "max": max(values),
                         "change vs baseline": str(change) if is_local else "-",
                         "paper loss": f"{100 * target:.0f}%" if target else "-",
                         "aim (lose half)": change.verdict(-target / 2) if target and is_local else "-"})
    columns = list(rows[0])
    table = markdown_table(rows, columns)
    header = (f"Inference, batch {args.batch}, 224x224, float32, CPU, {args.threads} thread(s), {allocator()}, "
              f"{args.rounds} interleaved rounds x {args.repeats} batches (median; min/max over rounds; "
              f"changes with their {100 * change.coverage:.0f}% interval).")
    print(header + "\n\n" + table)
    save("backbones", rows, vars(args), header + "\n\n" + table)
    with open(RESULTS / "backbones.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
