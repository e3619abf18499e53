"""Seed noise and cost of a proxy protocol: train paper models with several seeds, one JSON line each.

    python bench/protocol_study.py --models localvit_tiny localvit_deit_tiny --seeds 0 1 2 \
        --set train_size=4000 epochs=3 --out bench/results/protocol_study.jsonl

Run it under jemalloc (LD_PRELOAD) as the search does; two copies side by side with 1 thread
each reproduce the default search's load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localvit import PAPER_SPECS  # noqa: E402
from search.proxy import ProxyProtocol, train_proxy  # noqa: E402


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["localvit_tiny", "localvit_deit_tiny"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="protocol overrides KEY=VALUE")
    ap.add_argument("--tag", default="")
    ap.add_argument("--test", action="store_true", help="also score the test split (not for search decisions)")
    ap.add_argument("--out", default="bench/results/protocol_study.jsonl")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    protocol = ProxyProtocol.from_dict({**ProxyProtocol().to_dict(), **{k: parse_value(v) for k, v in overrides.items()}})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for seed in args.seeds:
            p = protocol.replace(seed=seed)
            r = train_proxy(PAPER_SPECS[model], p, eval_test=args.test)
            row = {"tag": args.tag, "model": model, "seed": seed, "overrides": overrides,
                   "jemalloc": "jemalloc" in os.environ.get("LD_PRELOAD", ""), "time": time.time(),
                   "load1": os.getloadavg()[0], **r.to_dict()}
            row.pop("proxy_spec")
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{model} seed {seed}: val {r.val_curve} test {r.test_acc} {r.images_per_s:.0f} img/s "
                  f"train {r.train_time_s:.0f}s eval {r.eval_time_s:.0f}s total {r.total_time_s:.0f}s", flush=True)


if __name__ == "__main__":
    main()
