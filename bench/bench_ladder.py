"""The fidelity ladder of a proxy protocol: agreement with ImageNet against compute per candidate.

    python -m bench.bench_ladder [--results-dir results] [proxy options, e.g. --dataset fashion-mnist]

Reads the audits of every rung of the protocol (`python -m audit --rungs 1,3,10` makes them;
`ranking.ladder.ladder_for`: the folder's, then the project's shipped ones) and saves
bench/results/ladder.{json,md,png}: a row a rung with its CPU-minutes per candidate, Kendall
tau-b with its 95% interval (one seed and the mean of the seeds), tau-b within FLOP buckets,
the pairs of equal parameter counts, regret at each budget and LocalViT-T's lead over DeiT-T,
beside parameter count and FLOPs; the plot shows tau-b against CPU-minutes with the free
baselines as lines, and the trend says where, if anywhere, it would cross counting.
"""
from __future__ import annotations

import argparse
import json

from bench.common import RESULTS, save
from proxy.protocol import PROXY_GROUP
from ranking.audits import protocol_key
from ranking.ladder import crossing, ladder_for, ladder_page, ladder_rows, plot_ladder
from search.options import add_options, protocol_from_args
from space.references import PAPER_IMAGENET, load_references


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, groups=(PROXY_GROUP,), names=("results_dir",))
    args = parser.parse_args(argv)
    protocol = protocol_from_args(args, "deit_tiny", 0)
    references = load_references(PAPER_IMAGENET)
    key = protocol_key(protocol)
    ladder = ladder_for(key, args.results_dir, references.key)
    rows = ladder_rows(ladder)
    title = f"Fidelity ladder of the proxy protocol `{key}` on {references.name}"
    text = ladder_page(ladder, title)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_ladder(rows, RESULTS / "ladder.png", title)
    save("ladder", rows, {"protocol_key": key, "references": references.name, "trend": crossing(rows),
                          "audits": {str(r): a.get("file", "ranking/audited_protocols.json")
                                     for r, a in ladder.items()}},
         text)
    print(json.dumps({"saved": str(RESULTS / "ladder.md")}))


if __name__ == "__main__":
    main()
