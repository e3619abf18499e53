"""Cost of the one-shot strategy at the default proxy: supernet training per epoch, scoring one
candidate with inherited weights, peak memory, and how many candidates a 30-minute default
search (`run_search.py --budget-flops 1.3G --strategy oneshot`) can score at these rates.

    python -m bench.bench_oneshot [--epochs 1] [--candidates 16] [--train-threads 2] [--supernet-sampling sandwich]

The supernet of the default space (DeiT-T base, proxy width x0.5) trains for `--epochs` on the
default proxy data with `--train-threads` threads, as the search's driver does; then random
candidates under 1.3 GFLOPs are scored one after another on one thread, as one of the search's
two Ray actors does. Prints a table and saves bench/results/oneshot.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import time

import torch

from bench.common import markdown_table, save
from proxy import ProxyProtocol, get_proxy_data, resolve_precision
from proxy.supernet import score, train_supernet
from search.options import add_options
from search.settings import SearchSettings
from space import make_space
from space.budget import Budget

SEARCH_S = 30 * 60
#: Proxy trainings after the scoring in a default one-shot search: top-4 and two baselines, then the
#: best and LocalViT-T with two more seeds each; two at a time, about 2.5 minutes each (README).
FINAL_TRAININGS, TRAINING_S, WORKERS = 4 + 2 + 2 * 2, 150.0, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="supernet epochs to time (the search trains "
                                                              f"{SearchSettings.supernet_epochs})")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--train-threads", type=int, default=2)
    add_options(parser, groups=(), names=("supernet_sampling", "precision"))
    args = parser.parse_args()
    settings = SearchSettings()
    protocol = ProxyProtocol(precision=args.precision)
    space = make_space("default")
    data = get_proxy_data(protocol.data_config())
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        supernet, history = train_supernet(space, protocol.replace(threads=args.train_threads), data,
                                           epochs=args.epochs, sampling=args.supernet_sampling,
                                           checkpoint=f"{tmp}/supernet.pt")
        train_s = time.perf_counter() - started
    epoch_s = statistics.median(h["seconds"] for h in history)
    torch.set_num_threads(1)
    budget = Budget(max_flops=1_300_000_000)
    rng = random.Random(0)
    seconds, accuracies = [], []
    for _ in range(args.candidates):
        spec = space.sample(rng, accept=lambda s: budget.admits(s))
        started = time.perf_counter()
        accuracy = score(supernet, spec, data, protocol, **settings.scoring_fidelity)
        accuracies.append(100 * accuracy)
        seconds.append(time.perf_counter() - started)
    score_s = statistics.median(seconds)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    supernet_s = settings.supernet_epochs * epoch_s
    left_s = SEARCH_S - supernet_s - FINAL_TRAININGS * TRAINING_S / WORKERS
    projected = max(0, int(left_s * WORKERS / score_s))
    rows = [
        {"figure": "supernet parameters (M)", "value": f"{sum(p.numel() for p in supernet.parameters()) / 1e6:.2f}"},
        {"figure": f"supernet epoch, {args.train_threads} threads (s)", "value": f"{epoch_s:.0f}"},
        {"figure": f"supernet training images/s (each image once per subnet, {args.supernet_sampling} sampling)",
         "value": f"{statistics.median(h['images_per_s'] for h in history):.0f}"},
        {"figure": f"supernet training, {settings.supernet_epochs} epochs (s, projected)",
         "value": f"{supernet_s:.0f}"},
        {"figure": "scoring one candidate, 1 thread (s, median)", "value": f"{score_s:.2f}"},
        {"figure": "candidates scored per second, 2 actors (projected)", "value": f"{WORKERS / score_s:.2f}"},
        {"figure": "candidates in a 30-minute default search (projected)", "value": str(projected)},
        {"figure": "peak memory of this process (GB)", "value": f"{peak_gb:.2f}"},
        {"figure": "supernet top-1 of the candidates: min / median / max (%)",
         "value": f"{min(accuracies):.1f} / {statistics.median(accuracies):.1f} / {max(accuracies):.1f}"},
    ]
    table = markdown_table(rows, ["figure", "value"])
    note = (f"{args.epochs} supernet epoch(s) timed, {args.candidates} candidates scored, precision "
            f"{resolve_precision(args.precision)}, load average {load:.1f} at the start on {os.cpu_count()} CPUs. "
            f"Projection: {SEARCH_S // 60} min - {settings.supernet_epochs} supernet epochs - {FINAL_TRAININGS} proxy "
            f"trainings of ~{TRAINING_S:.0f} s two at a time, the rest scoring on {WORKERS} actors.")
    print(table + "\n\n" + note)
    save("oneshot", rows, {**vars(args), "load_average": load, "train_s": train_s, "score_s": seconds,
                           "accuracies": accuracies, "history": history}, table + "\n\n" + note)


if __name__ == "__main__":
    main()
