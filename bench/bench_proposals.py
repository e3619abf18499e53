"""What one proposal costs the driver of a one-shot search, as the study grows: ask the sampler,
define the candidate (its costs and budget verdict), tell its score; per sampler (as
`run_search.py` builds them) and per study (the stored SQLite study asked directly, as before
2026-12-03, or the in-memory copy the scoring asks now, with one write per finished trial).

    python -m bench.bench_proposals [--trials 1000] [--samplers tpe evolution random] [--sqlite-trials 300]

Scores are random (the cost of a proposal does not depend on them). Prints, per window of 100
trials, the median milliseconds per proposal with a 95% distribution-free interval, and saves
bench/results/proposals.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import warnings

import optuna

from bench.common import markdown_table, median_interval, save
from search.samplers import make_sampler
from search.storage import open_storage
from search.oneshot import Proposer
from search.settings import SearchSettings
from search.tune import DefineByRun
from space import make_space
from space.budget import Budget

WINDOW = 100


def proposal_seconds(sampler: str, trials: int, stored: bool, seed: int = 0) -> list[float]:
    """Seconds of each proposal (ask, define, tell and store) in a fresh study."""
    budget = Budget(max_flops=1_300_000_000)
    settings = SearchSettings(sampler=sampler, strategy="oneshot", budget=budget, seed=seed)
    space = make_space("default")
    define = DefineByRun(space, budget, settings.protocol, {}, (1, 40))
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp}/study.db"), direction="maximize",
                                    sampler=make_sampler(settings, space))
        proposer = None if stored else Proposer(settings, study, define)
        rng, seconds = random.Random(seed), []
        for _ in range(trials):
            started = time.perf_counter()
            if stored:  # the stored study asked directly: a commit per parameter
                trial = study.ask()
                define(trial)
                study.tell(trial, rng.uniform(0, 70))
            else:
                assert proposer is not None
                candidate = proposer.next()
                assert candidate is not None, "the sampler proposed nothing new"
                trial, spec = candidate
                proposer.record(trial, spec, rng.uniform(0, 70), 0.0)
            seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000, help="trials per run with the in-memory copy")
    parser.add_argument("--sqlite-trials", type=int, default=300, help="trials per run asking the stored study "
                                                                        "(TPE: about 0.4 s each at 300)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "evolution", "random"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    load = os.getloadavg()[0]
    rows, raw = [], {}
    for sampler in args.samplers:
        for stored, trials in ((False, args.trials), (True, args.sqlite_trials)):
            if trials <= 0:
                continue
            how = "stored study asked" if stored else "in-memory copy"
            seconds = proposal_seconds(sampler, trials, stored)
            raw[f"{sampler}/{how}"] = seconds
            for end in range(WINDOW, trials + 1, WINDOW):
                window = [1000 * s for s in seconds[end - WINDOW:end]]
                low, high, _ = median_interval(window)
                rows.append({"sampler": sampler, "study": how, "trials": f"{end - WINDOW + 1}-{end}",
                             "ms per proposal (median)": statistics.median(window),
                             "95% interval": f"[{low:.1f}, {high:.1f}]"})
            print(f"{sampler}, {how}: {trials} proposals in {sum(seconds):.0f} s", flush=True)
    table = markdown_table(rows, ["sampler", "study", "trials", "ms per proposal (median)", "95% interval"])
    note = f"One process, load average {load:.1f} at the start on {os.cpu_count()} CPUs; random scores."
    print(table + "\n\n" + note)
    save("proposals", rows, {**vars(args), "load_average": load, "seconds": raw}, table + "\n\n" + note)


if __name__ == "__main__":
    main()
