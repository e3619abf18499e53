"""Optuna storages under concurrent writers: SQLite, and PostgreSQL through psycopg 3 (the
`postgres` extra's driver) and psycopg2 (when installed).

    python -m bench.bench_storage [--workers 8] [--trials 25] [--rounds 3]

`--workers` processes each ask and tell `--trials` trials of one study (what many drivers or a
driver's searcher do), rounds interleaved over the storages so that the machine's drift hits
them alike. A throw-away PostgreSQL server is started (tests/servers.py) and stopped by its id.
Prints and saves the wall time per round and trials per second with a distribution-free
interval for the median, and the change against psycopg 3.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table, median_interval, paired_change, save

REPO = Path(__file__).resolve().parents[1]
WORKER = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
for i in range(int(sys.argv[3])):
    trial = study.ask()
    study.tell(trial, trial.suggest_float("x", 0, 1))
"""


def one_round(url: str, study: str, workers: int, trials: int, env: dict[str, str]) -> float:
    """Seconds for `workers` processes to ask and tell `trials` trials each (process start included)."""
    import optuna

    optuna.create_study(study_name=study, storage=url)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, study, str(trials)], env=env) for _ in range(workers)]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a worker failed on {url.split('@')[-1]}")
    elapsed = time.perf_counter() - start
    done = len(optuna.load_study(study_name=study, storage=url).trials)
    if done != workers * trials:
        raise RuntimeError(f"{done} trials stored instead of {workers * trials}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    from tests.servers import Postgres, postgres_bin

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bin_dir = postgres_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed: bash scripts/ensure_postgres.sh")
    server = Postgres.start(bin_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PGPASSWORD": server.password}
    folder = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    host = server.url().split("://", 1)[1]
    urls = {"SQLite": f"sqlite:///{folder / 'study.db'}", "PostgreSQL psycopg 3": f"postgresql+psycopg://{host}"}
    if importlib.util.find_spec("psycopg2"):
        urls["PostgreSQL psycopg2"] = f"postgresql+psycopg2://{host}"
    seconds: dict[str, list[float]] = {name: [] for name in urls}
    try:
        os.environ["PGPASSWORD"] = server.password
        for r in range(args.rounds):
            for i, (name, url) in enumerate(urls.items()):
                seconds[name].append(one_round(url, f"round{r}-storage{i}", args.workers, args.trials, env))
                print(f"round {r + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    finally:
        server.stop()
    total = args.workers * args.trials
    rows = []
    for name, values in seconds.items():
        low, high, coverage = median_interval(values)
        rows.append({"storage": name, "median s": statistics.median(values), "interval s": f"{low:.1f}-{high:.1f}",
                     "trials/s": total / statistics.median(values),
                     "vs psycopg 3": "-" if name.endswith("psycopg 3") else
                     str(paired_change(values, seconds["PostgreSQL psycopg 3"]))})
    table = markdown_table(rows, ["storage", "median s", "interval s", "trials/s", "vs psycopg 3"])
    coverage = median_interval(seconds["SQLite"])[2]
    text = (f"{args.workers} processes x {args.trials} trials (ask + tell), {args.rounds} interleaved rounds; "
            f"intervals for the median at {100 * coverage:.0f}% (sign test)\n\n{table}")
    print(text)
    save("bench_storage", rows, vars(args), text)


if __name__ == "__main__":
    main()
