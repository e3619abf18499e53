"""A search on a real multi-node Ray cluster on loopback: throughput, scheduling overhead, storage
and recovery from a lost node.

    python -m bench.bench_cluster [--trials 8] [--rounds 1] [--kills 2]

Starts a head (127.0.0.2, no trial CPUs) and two worker nodes (127.0.0.3, .4, 2 logical CPUs
each) with tests/servers.py, and a throw-away PostgreSQL server; stops them by process id.
For 1, 2 and 4 trials at a time, on SQLite and on PostgreSQL, it runs a search of `--trials`
tiny trials (200 images, 1 epoch) and reports trials per minute of the search phase and the
scheduling overhead per trial: the worker-slot time not spent inside the trial function,
(workers x search wall - sum of trial wall times) / trials. Then, `--kills` times, it kills a
worker node's raylet in the middle of the one trial running and times the node's death to the
moment that trial runs again on the other node. Prints and saves figures with intervals for the medians.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna

from bench.common import markdown_table, median_interval, save

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train-size", "200", "--val-size", "100", "--epochs", "1", "--batch-size", "50", "--export-top", "0",
        "--budget-flops", "1.3G", "--confirm-seeds", "0", "--no-baselines", "--warm-start", "0", "--no-asha"]


def search_cmd(address: str, study: str, results: Path, storage: str | None, workers: int, trials: int) -> list[str]:
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", study, "--results-dir", str(results), *TINY,
           "--ray-address", address, "--workers", str(workers), "--trials", str(trials)]
    return cmd + (["--storage", storage] if storage else [])


class Lines:
    """The search's standard output, each line with the monotonic time it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None  # started with stdout=PIPE
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, pattern: str, after: float = 0.0) -> float | None:
        return next((t for t, line in list(self.lines) if t >= after and re.search(pattern, line)), None)


def throughput_run(cluster, results: Path, storage: str | None, workers: int, trials: int, env: dict) -> dict:
    study = f"w{workers}-{'pg' if storage else 'sqlite'}-{time.time_ns() % 10**9}"
    proc = subprocess.Popen(search_cmd(cluster.address, study, results, storage, workers, trials), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = Lines(proc)
    proc.wait()
    lines.thread.join(10)
    if proc.returncode:
        raise RuntimeError(f"search {study} failed ({proc.returncode})")
    start = lines.first(r"\| started ")
    end = lines.first(r"search finished")
    if start is None or end is None:
        raise RuntimeError(f"search {study} printed no start or no end of its trials")
    url = storage or f"sqlite:///{results / study / 'study.db'}"
    runs = [t for t in optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
            if t.user_attrs.get("status") == "train"]
    wall = end - start
    busy = sum(t.user_attrs["wall_time_s"] for t in runs)
    return {"trials_per_min": 60 * len(runs) / wall, "overhead_s": (workers * wall - busy) / len(runs),
            "trials": len(runs)}


def recovery_run(cluster, results: Path, env: dict) -> float:
    """Seconds from SIGKILL of a worker node's raylet, in the middle of the one trial running (on
    it), to that trial started again on the other, idle node."""
    study = f"kill-{time.time_ns() % 10**9}"
    proc = subprocess.Popen(search_cmd(cluster.address, study, results, None, 1, 2) + ["--train-size", "600"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = Lines(proc)
    victim = None
    while victim is None:
        victim = next((ip for ip in ("127.0.0.3", "127.0.0.4") if cluster.node(ip).runs_a_trial()), None)
        time.sleep(0.2)
    time.sleep(3)
    killed = time.monotonic()
    cluster.kill_raylet(victim)
    proc.wait()
    lines.thread.join(10)
    retry = next((line for t, line in lines.lines if t >= killed and "| retrying " in line), None)
    if proc.returncode or retry is None:
        raise RuntimeError(f"search {study} did not retry ({proc.returncode})")
    print(retry, flush=True)
    name = retry.split("| retrying ")[1].split()[0]
    again = lines.first(rf"\| started {name}", after=killed)
    if again is None:
        raise RuntimeError(f"search {study}: trial {name} was not started again")
    return again - killed


def main(argv: list[str] | None = None) -> None:
    from tests.servers import Postgres, RayCluster, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: scripts/ensure_postgres.sh installs it")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args(argv)
    results = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    server = Postgres.start(bin_dir)
    os.environ["PGPASSWORD"] = server.password  # this process reads the studies too
    env = {**RayCluster.env(), "OMP_NUM_THREADS": "1"}
    rows, recovery = [], []
    try:
        cluster = RayCluster.start([{"cpus": 2}, {"cpus": 2}])
        try:
            samples: dict[tuple[int, str], list[dict]] = {}
            for _ in range(args.rounds):
                for workers in (1, 2, 4):
                    for storage in (None, server.url()):
                        run = throughput_run(cluster, results, storage, workers, args.trials, env)
                        key = (workers, "PostgreSQL" if storage else "SQLite")
                        samples.setdefault(key, []).append(run)
                        print(f"{key[0]} at a time, {key[1]}: {run['trials_per_min']:.1f} trials/min, "
                              f"{run['overhead_s']:.1f} s overhead per trial", flush=True)
            for (workers, storage), runs in samples.items():
                row = {"at a time": workers, "storage": storage}
                for figure, label in (("trials_per_min", "trials/min"), ("overhead_s", "overhead s/trial")):
                    values = [r[figure] for r in runs]
                    low, high, _ = median_interval(values)
                    row[label] = statistics.median(values)
                    row[f"{label} range"] = f"{low:.1f}-{high:.1f}"
                rows.append(row)
        finally:
            cluster.stop()
        for k in range(args.kills):  # a fresh cluster each time: the killed node stays dead
            cluster = RayCluster.start([{"cpus": 1}, {"cpus": 1}])
            try:
                recovery.append(recovery_run(cluster, results, env))
                print(f"kill {k + 1}: trial running again {recovery[-1]:.1f} s after its node died", flush=True)
            finally:
                cluster.stop()
    finally:
        server.stop()
    table = markdown_table(rows, ["at a time", "storage", "trials/min", "trials/min range", "overhead s/trial",
                                  "overhead s/trial range"])
    text = (f"Search phase of {args.trials} tiny trials (200 images, 1 epoch) on a loopback Ray cluster (2 worker "
            f"nodes x 2 logical CPUs on a 2-core machine), {args.rounds} round(s); range: over rounds\n\n{table}")
    if recovery:
        low, high, coverage = median_interval(recovery)
        text += (f"\n\nNode death to its trial running again on the other node: median "
                 f"{statistics.median(recovery):.1f} s "
                 f"({low:.1f} to {high:.1f}, {100 * coverage:.0f}% interval; {len(recovery)} kills: "
                 f"{', '.join(f'{r:.1f}' for r in recovery)} s)")
    print(text)
    save("bench_cluster", rows + [{"recovery_s": recovery}], vars(args), text)


if __name__ == "__main__":
    main()
