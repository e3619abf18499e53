"""Every ranking signal against the free baselines, out of sample, on the paper's 18 ImageNet designs.

    python -m bench.bench_signals [--resamples 10000]

One row per signal: parameter count and FLOPs (the free baselines), each zero-cost score
(`proxy.zero_cost`), the default proxy with one seed (each of the audit's two) and with the mean
of two, the supernet's score, and the combinations of the proxy and of the supernet with the
parameter count (`ranking.signals`, weights fitted leave-one-table-out). Columns: Kendall
tau-b with its 95% bootstrap interval, Spearman, tau-b within FLOP buckets (3%) with its
interval and pair count, the pairs of equal parameter counts (within 1%) ordered as ImageNet
orders them, regret at 0.75-1.65 GFLOPs, CPU-seconds per candidate. The proxy and supernet
scores are the shipped audits' (`ranking/audited_*.json`: their machine and precision are
named); the zero-cost scores and their cost are computed here. Saves bench/results/signals.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import save
from proxy.data import get_proxy_data
from proxy.supernet import space_supernet, training_key
from proxy.zero_cost import ZERO_COST, zero_cost_of
from ranking.audits import SHIPPED_AUDITS, SHIPPED_SUPERNET_AUDITS, describe_precision, protocol_key
from ranking.evaluation import evaluate_signals
from ranking.signals import (choose_default, combinations, describe_choice, evaluate, meets_goal, rank_by_choices,
                             signals_table, tau_standard_error)
from search.settings import SearchSettings
from space.references import PAPER_IMAGENET, load_references
from space.space import make_space


def default_supernet_key(settings: SearchSettings) -> str:
    """The training key of the supernet a default one-shot search trains (its audit ships)."""
    data = get_proxy_data(settings.protocol.data_config())
    space = make_space(settings.space)
    supernet = space_supernet(space, settings.protocol, (data.in_chans, data.num_classes))
    return training_key(space, supernet, settings.protocol, settings.supernet_epochs,
                        settings.supernet_sampling)["digest"]


def _rows_with(audit: dict[str, Any], seed: str) -> list[dict[str, Any]]:
    """The audit's rows with the measured signal taken from another seed."""
    out = []
    for row in audit["rows"]:
        signals = dict(row["signals"])
        signals[audit["measured"]] = row["proxy"].get(seed)
        out.append({**row, "signals": signals})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    references = load_references(PAPER_IMAGENET)
    settings = SearchSettings()
    protocol = settings.protocol
    audit = json.loads(SHIPPED_AUDITS.read_text())[protocol_key(protocol)]
    supernet_key = default_supernet_key(settings)
    supernet = json.loads(SHIPPED_SUPERNET_AUDITS.read_text())[supernet_key]["imagenet"]
    zero_cost = zero_cost_of(references, protocol)  # measured here, for its cost on this machine
    seeds = audit["seeds"]

    def on(rows: list[dict[str, Any]], measured: str, seeds_of: list[str], cpu_s: float) -> dict[str, dict]:
        return {k: e.to_dict() for k, e in evaluate_signals(rows, measured, seeds_of, zero_cost, cpu_s,
                                                            args.resamples).items()}

    first = on(_rows_with(audit, seeds[0]), "proxy", [seeds[0]], audit["cpu_s_per_candidate"])
    mean = on(audit["rows"], "proxy", seeds, audit["cpu_s_per_candidate"])[f"proxy, mean of {len(seeds)} seeds"]
    target, params, flops = ([row[k] if k == "target" else row["signals"][k] for row in audit["rows"]]
                             for k in ("target", "params", "flops"))
    others = {s: evaluate("proxy", [row["proxy"].get(s) for row in audit["rows"]], target, params, flops,
                          cpu_s=audit["cpu_s_per_candidate"], n_resamples=args.resamples).to_dict() for s in seeds[1:]}
    on_supernet = on(supernet["rows"], "supernet", supernet["seeds"], supernet["cpu_s_per_candidate"])
    table = {name: first[name] for name in ("params", "flops", *ZERO_COST)}
    table[f"proxy, seed {seeds[0]}"] = first["proxy"]
    table.update({f"proxy, seed {s}": e for s, e in others.items()})
    table[f"proxy, mean of {len(seeds)} seeds"] = mean
    table.update({name: first[name] for name in combinations("proxy")})
    table.update({name: on_supernet[name] for name in ("supernet", *combinations("supernet"))})
    as_searched = {**table, "proxy": first["proxy"]}  # a search trains one seed
    default = choose_default(as_searched, rank_by_choices("proxy"))
    base = table["params"]
    rows = [{"signal": name, **e, "meets_goal": name != "params" and meets_goal(e, base)} for name, e in table.items()]
    text = "\n".join([
        "Every signal against ImageNet on the paper's 18 designs (Tables I, II, IV), out of sample "
        f"({args.resamples} bootstrap resamples; Kendall tau's standard error at n = 18: "
        f"{tau_standard_error(18):.2f}).", "",
        *signals_table(table), "",
        f"Proxy: audit `{audit['study']}` ({audit['created']}, precision {describe_precision(audit['precision'])}); "
        f"supernet: audit of supernet {supernet_key} ({supernet['created']}, precision "
        f"{describe_precision(supernet['precision'])}); zero-cost scores computed here.", "",
        describe_choice(as_searched, default, "proxy") + ".",
        "Signals that meet the goal (as good as parameter count on every figure, better on pairs of equal "
        f"counts): {', '.join(r['signal'] for r in rows if r['meets_goal']) or 'none'}."])
    print(text)
    save("signals", rows, {"resamples": args.resamples, "default": default}, text)


if __name__ == "__main__":
    main()
