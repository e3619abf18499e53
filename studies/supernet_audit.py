"""Ranking audit of a supernet: do its accuracies rank candidates as stand-alone proxy training does?

    python -m studies.supernet_audit --checkpoint results/.supernets/<key>.pt [--candidates 30] [--seeds 0 1]
        [--epochs 4] [--sampling sandwich]    # how the checkpoint was trained (its key holds both)
        [--set train_size=256 epochs=1 ...]   # protocol overrides: the checkpoint's protocol, for a smoke run
        [--ship]                              # also record both audits in ranking/audited_supernets.json

Draws `--candidates` random candidates of the default space under 1.3 GFLOPs (seeded), scores
each on the trained supernet of the checkpoint (the default protocol; train one with
`run_search.py --strategy oneshot` or `proxy.supernet.train_supernet`), and proxy-trains each
from scratch with every seed of `--seeds` (`proxy.training.train_proxy`), `--workers` trainings at
a time on one thread each. Every result is appended to studies/results/supernet_audit.jsonl as
soon as it exists, so a rerun skips what is done; stand-alone results do not depend on the
supernet, so a second checkpoint of the same protocol reuses them and costs only its scores.
The rank statistics (Kendall tau-b and Spearman with bootstrap intervals, top-k overlap, and
the tau-b between two seeds of stand-alone training as the ceiling) are `ranking.evaluation`'s, the
project's one implementation of them (`ranking.statistics`): the pairs go to
studies/results/supernet_audit_pairs.json and the report
beside the checkpoint (`<checkpoint>.audit.json`), which one-shot summaries cite; with `--ship`,
also under the supernet's training key in ranking/audited_supernets.json, which the summary of
any search that trains a supernet of that key cites.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from studies import RESULTS
from proxy.supernet import training_key
from ranking.audits import SHIPPED_SUPERNET_AUDITS, supernet_audit_files
from search.options import add_options
from search.settings import CPU_WORKERS

RECORDS = RESULTS / "supernet_audit.jsonl"


def _train(spec_json: str, protocol: dict[str, Any], seed: int) -> dict[str, Any]:
    from proxy import ProxyProtocol, train_proxy

    result = train_proxy(spec_json, ProxyProtocol.from_dict(protocol).replace(seed=seed, threads=1))
    return {"kind": "trained", "spec_id": result.spec_id, "seed": seed, "accuracy": 100 * result.val_acc,
            "seconds": result.total_time_s}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string, e.g. precision=fp32


def _done(records: list[dict[str, Any]], kind: str, **match: Any) -> bool:
    return any(r["kind"] == kind and all(r.get(k) == v for k, v in match.items()) for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a finished supernet checkpoint of the default space")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="proxy protocol overrides")
    parser.add_argument("--ship", action="store_true", help="record the audits in ranking/audited_supernets.json")
    add_options(parser, groups=(), names=("supernet_epochs", "supernet_sampling", "workers"))
    args = parser.parse_args()

    import torch

    from ranking.audits import protocol_key as key_of
    from proxy.data import get_proxy_data
    from proxy.supernet import load_supernet, score
    from proxy import ProxyProtocol
    from search.settings import SearchSettings
    from space import make_space
    from space.budget import Budget

    torch.set_num_threads(1)
    overrides = {key: _value(text) for key, text in (item.split("=", 1) for item in args.set)}
    protocol, space = ProxyProtocol(**overrides), make_space("default")
    data = get_proxy_data(protocol.data_config())
    supernet = load_supernet(space, protocol, (data.in_chans, data.num_classes), args.checkpoint, args.supernet_epochs,
                             args.supernet_sampling)
    budget, rng = Budget(max_flops=1_300_000_000), random.Random(0)
    specs = [space.sample(rng, accept=budget.admits) for _ in range(args.candidates)]
    protocol_key = key_of(protocol)  # what stand-alone training measures (seeds apart)
    records = [r for r in (json.loads(line) for line in RECORDS.read_text().splitlines()) if
               r["checkpoint"] == str(args.checkpoint) or (r["kind"] == "trained" and r.get("protocol") == protocol_key)
               ] if RECORDS.is_file() else []
    RESULTS.mkdir(parents=True, exist_ok=True)

    def keep(record: dict[str, Any]) -> None:
        records.append(record)
        with RECORDS.open("a") as out:
            out.write(json.dumps({**record, "checkpoint": str(args.checkpoint), "protocol": protocol_key}) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "spec"}), flush=True)

    settings = SearchSettings()
    fidelity = settings.scoring_fidelity
    for spec in specs:  # scored as the search scores them, and on the whole validation split
        if not _done(records, "supernet", spec_id=spec.id, **fidelity):
            started = time.perf_counter()
            accuracy = score(supernet, spec, data, protocol, **fidelity, seed=protocol.seed)
            seconds = time.perf_counter() - started
            keep({"kind": "supernet", "spec_id": spec.id, "spec": spec.to_json(), "accuracy": 100 * accuracy,
                  "seconds": seconds, **fidelity,
                  "accuracy_whole_split": 100 * score(supernet, spec, data, protocol, seed=protocol.seed,
                                                      recalibration_images=settings.recalibration_images)})
    imagenet = paper_audit(supernet, data, protocol, settings, Path(args.checkpoint))
    if not specs:
        return
    jobs = [(spec, seed) for seed in args.seeds for spec in specs
            if not _done(records, "trained", spec_id=spec.id, seed=seed)]
    with ProcessPoolExecutor(args.workers or CPU_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train, spec.to_json(), protocol.to_dict(), seed) for spec, seed in jobs]
        for future in as_completed(futures):
            keep(future.result())

    ids = [spec.id for spec in specs]
    scored = {r["spec_id"]: r for r in records
              if r["kind"] == "supernet" and all(r.get(k) == v for k, v in fidelity.items())}
    trained = {(r["spec_id"], r["seed"]): r["accuracy"] for r in records if r["kind"] == "trained"}
    pairs = {"spec_ids": ids, "supernet": [scored[i]["accuracy"] for i in ids],
             "supernet_whole_split": [scored[i]["accuracy_whole_split"] for i in ids],
             "score_seconds": [scored[i]["seconds"] for i in ids],
             **{f"seed {s}": [trained[(i, s)] for i in ids] for s in args.seeds}}
    (RESULTS / "supernet_audit_pairs.json").write_text(json.dumps(pairs, indent=2) + "\n")
    report = rank_report(pairs, args.seeds, **fidelity)
    print(report["summary"], flush=True)
    # Beside the checkpoint, where every one-shot summary that uses this supernet cites it.
    supernet_audit_files(args.checkpoint)["stand_alone"].write_text(json.dumps(report, indent=2) + "\n")
    if args.ship:
        key = training_key(space, supernet, protocol, args.supernet_epochs, args.supernet_sampling)
        shipped = json.loads(SHIPPED_SUPERNET_AUDITS.read_text()) if SHIPPED_SUPERNET_AUDITS.is_file() else {}
        shipped[key["digest"]] = {"created": time.strftime("%Y-%m-%d"), "epochs": args.supernet_epochs,
                                  "sampling": args.supernet_sampling, "stand_alone": report, "imagenet": imagenet}
        SHIPPED_SUPERNET_AUDITS.write_text(json.dumps(shipped, indent=1, sort_keys=True) + "\n")


def paper_audit(supernet: Any, data: Any, protocol: Any, settings: Any, checkpoint: Path) -> dict[str, Any]:
    """The supernet's scores of the paper's ImageNet designs (those it holds), audited against
    their ImageNet top-1 by `ranking.evaluation`, as a proxy-trained protocol is; written to
    `<checkpoint stem>.paper-audit/` beside the checkpoint."""
    from proxy.protocol import proxy_of
    from proxy.supernet import score
    from proxy.zero_cost import zero_cost_of
    from ranking.evaluation import ProxyScore, score_audit, write_audit
    from space.references import load_references

    references = load_references()
    scores = {}
    for row in references.rows:
        if supernet.why_not(proxy_of(row.spec, protocol, (data.in_chans, data.num_classes))):
            print(f"paper design {row.name} is not held by the supernet: left out", flush=True)
            continue
        started = time.process_time(), time.perf_counter()
        accuracy = 100 * score(supernet, row.spec, data, protocol, **settings.scoring_fidelity, seed=protocol.seed)
        scores[row.spec.id] = ProxyScore(accuracy, time.process_time() - started[0],
                                         time.perf_counter() - started[1], protocol.precision)
    result = score_audit(references, {str(protocol.seed): scores}, study=f"supernet {checkpoint.stem}",
                         protocol=protocol, measured="supernet", zero_cost=zero_cost_of(references, protocol))
    report = write_audit(result, supernet_audit_files(checkpoint)["imagenet"])
    print(report.read_text(), flush=True)
    return result.to_dict()


def rank_report(pairs: dict[str, Any], seeds: list[int], recalibration_images: int, score_images: int
                ) -> dict[str, Any]:
    """Supernet vs stand-alone proxy accuracy (mean of the seeds), with the seeds' own agreement as
    ceiling; the supernet scored after recalibration on `recalibration_images` training images, on
    the first `score_images` validation images (0: all)."""
    from ranking.statistics import agreement, top_k_overlap

    n = len(pairs["spec_ids"])
    standalone = [sum(pairs[f"seed {s}"][i] for s in seeds) / len(seeds) for i in range(n)]
    vs = agreement(pairs["supernet"], standalone)
    whole = agreement(pairs["supernet_whole_split"], standalone)
    ceiling = agreement(pairs[f"seed {seeds[0]}"], pairs[f"seed {seeds[1]}"]) if len(seeds) > 1 else None
    k = max(1, n // 10)
    scored = f"the first {score_images} validation images" if score_images else "the whole validation split"
    summary = (f"supernet (scored on {scored} after recalibration on {recalibration_images} training images) vs "
               f"stand-alone proxy training on {n} random candidates: {vs.describe()}; top-{k} overlap "
               f"{top_k_overlap(pairs['supernet'], standalone, k):.0%}; scored on the whole validation split "
               f"instead: {whole.describe()}"
               + (f"; stand-alone seed {seeds[0]} vs seed {seeds[1]} (the ceiling): {ceiling.describe()}"
                  if ceiling else ""))
    return {"summary": summary, "n": n, "kendall_tau_b": vs.kendall_tau_b, "kendall_interval": vs.kendall_interval,
            "spearman": vs.spearman, "whole_split_kendall_tau_b": whole.kendall_tau_b,
            "whole_split_kendall_interval": whole.kendall_interval,
            "ceiling_kendall_tau_b": ceiling.kendall_tau_b if ceiling else None,
            "ceiling_kendall_interval": ceiling.kendall_interval if ceiling else None,
            "seconds_per_score": sorted(pairs["score_seconds"])[n // 2],
            "recalibration_images": recalibration_images, "score_images": score_images}


if __name__ == "__main__":
    main()
