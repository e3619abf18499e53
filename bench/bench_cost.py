"""Cost of a constraint check: the closed-form model vs fvcore vs torch's FlopCounterMode,
per candidate, in one run; and how long one throughput measurement takes.

    python -m bench.bench_cost [--specs 20] [--throughput-specs 3]

Each counter gets the same random specs of the default space (DeiT-T base, 224x224). fvcore
and FlopCounterMode must build the model first; the build is timed apart. Prints a table and
saves bench/results/cost.{json,md}.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import markdown_table, save
from localvit import build_model
from space import make_space
from space.cost import _cost_function
from space.throughput import measure
from tests.conftest import fvcore_cost


def per_call(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, default=20)
    parser.add_argument("--throughput-specs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = make_space("default")
    rng = random.Random(0)
    specs = [space.sample(rng) for _ in range(args.specs)]
    closed, build, fv, fcm = [], [], [], []
    for spec in specs:
        fresh = spec.replace(drop_path_rate=0.0)  # a new object: nothing memoised
        closed.append(per_call(lambda: _cost_function(fresh)(fresh), repeats=200))  # noqa: B023 (called here)
        t0 = time.perf_counter()
        model = build_model(spec).eval()
        build.append(time.perf_counter() - t0)
        fv.append(per_call(lambda: fvcore_cost(model, 224)))  # noqa: B023 (called here)
        x = torch.randn(1, 3, 224, 224)

        def flop_counter() -> None:
            with FlopCounterMode(display=False), torch.no_grad():
                model(x)  # noqa: B023 (called in this iteration)
        fcm.append(per_call(flop_counter))
    rows = [{"method": name, "ms per candidate": 1e3 * statistics.median(values),
             "vs closed form": f"{statistics.median(values) / statistics.median(closed):,.0f}x"}
            for name, values in (("closed form (space.cost)", closed), ("model build (for the others)", build),
                                 ("fvcore FlopCountAnalysis", fv), ("torch FlopCounterMode", fcm))]
    lines = [markdown_table(rows, ["method", "ms per candidate", "vs closed form"])]
    t_rows = []
    for spec in specs[:args.throughput_specs]:
        result = measure(spec, cache=False)
        t_rows.append({"spec": spec.id, "images/s": result.images_per_s, "measurement s": result.seconds,
                       "threads": result.threads, "batch": result.batch})
    lines.append(markdown_table(t_rows, ["spec", "images/s", "measurement s", "threads", "batch"]))
    header = (f"Cost of one constraint check on {args.specs} random specs of the default space at 224x224, "
              f"1 thread (median); throughput measurement: batch 64, 224x224, fp32, BN folded, 2 warm-up + 5 "
              f"timed batches.")
    text = header + "\n\n" + "\n\n".join(lines)
    print(text)
    save("cost", rows + t_rows, vars(args), text)


if __name__ == "__main__":
    main()
