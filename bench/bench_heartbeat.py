"""How fast a lost driver's trials are queued again, and what the heartbeats cost (`search.studies.Lease`).

    python -m bench.bench_heartbeat [--graces 6 12] [--rounds 3]

A driver process holds one trial of an SQLite study under a `Lease` and is killed with SIGKILL
at a random moment of its heartbeat cycle; a watching driver (a `Lease` of this process, its
heartbeat thread running) closes the trial. Measured: seconds from the kill to the trial being
closed and queued again, for a driver on another host (judged by its heartbeat: `unshare --uts`
gives it another host name; needs root) at each grace period, and for one on this machine
(judged by its process). Then the cost of one heartbeat cycle (beat the held trials, look for
lost ones) with a study of `--finished` trials, in CPU milliseconds, and its share of one core
at the default grace period: the most it can take from trials per hour.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table, median_interval, save

REPO = Path(__file__).resolve().parents[1]
VICTIM = """
import sys, time, optuna
from search.storage import open_storage
from search.studies import Lease
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1]))
with Lease(study, sys.argv[1], float(sys.argv[2]), 60) as lease:
    trial = study.ask()
    lease.hold(trial)
    print(trial.number, flush=True)
    time.sleep(3600)
"""


def requeue_seconds(study, url: str, grace: float, elsewhere: bool) -> float:
    """Seconds from a driver's SIGKILL to its trial being closed by the watching driver."""
    from optuna.trial import TrialState

    cmd = [sys.executable, "-c", VICTIM, url, str(grace)]
    if elsewhere:
        cmd = ["unshare", "--uts", "sh", "-c", 'hostname other-node && exec "$@"', "sh", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert victim.stdout is not None  # started with stdout=PIPE
    number = int(victim.stdout.readline())
    time.sleep(random.uniform(1.0, 1.0 + max(1.0, grace / 6)))  # any moment of its heartbeat cycle
    victim.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    victim.wait()
    while study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
        if time.perf_counter() - killed > 10 * grace + 60:
            raise RuntimeError(f"trial {number} was not closed within {10 * grace + 60:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - killed


def cycle_cost(url: str, finished: int, held: int, rounds: int) -> tuple[list[float], list[float]]:
    """CPU and wall milliseconds of one heartbeat cycle (beat, then look for lost drivers)."""
    import optuna

    from search.storage import open_storage
    from search.studies import Lease

    study = optuna.create_study(study_name="cost", storage=open_storage(url))
    for i in range(finished):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1) + i)
    lease = Lease(study, url, 120, 60)
    for _ in range(held):
        lease.hold(study.ask())
    cpu, wall = [], []
    for _ in range(rounds):
        c, w = time.thread_time(), time.perf_counter()
        lease.beat()
        lease.reap()
        cpu.append(1000 * (time.thread_time() - c))
        wall.append(1000 * (time.perf_counter() - w))
    return cpu, wall


def main(argv: list[str] | None = None) -> None:
    import optuna

    from search.settings import SearchSettings
    from search.storage import open_storage
    from search.studies import BEATS_PER_GRACE, Lease

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graces", type=float, nargs="+", default=[6.0, 12.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--finished", type=int, default=300)
    parser.add_argument("--held", type=int, default=2)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    can_unshare = subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False).returncode == 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grace in args.graces:
            url = f"sqlite:///{tmp}/g{grace:g}.db"
            study = optuna.create_study(study_name="s", storage=open_storage(url))
            with Lease(study, url, grace, 60) as watcher:
                for where in (["another host"] if can_unshare else []) + ["this machine"]:
                    seconds = [requeue_seconds(study, url, grace, where == "another host") for _ in range(args.rounds)]
                    low, high, _ = median_interval(seconds)
                    rows.append({"judged by": "heartbeat" if where == "another host" else "process",
                                 "driver on": where, "grace (s)": grace, "beat every (s)": watcher.interval,
                                 "rounds": len(seconds), "kill to re-queued (s)": round(statistics.median(seconds), 1),
                                 "interval": f"[{low:.1f}, {high:.1f}]", "all": [round(s, 2) for s in seconds]})
                    print(rows[-1], flush=True)
        cpu, wall = cycle_cost(f"sqlite:///{tmp}/cost.db", args.finished, args.held, 20)
    default = SearchSettings.heartbeat_grace_s
    interval = max(1, int(default) // BEATS_PER_GRACE)
    cpu_ms, wall_ms = statistics.median(cpu), statistics.median(wall)
    low, high, _ = median_interval(cpu)
    cost = {"finished trials": args.finished, "held trials": args.held, "cycle CPU (ms)": round(cpu_ms, 2),
            "interval": f"[{low:.2f}, {high:.2f}]", "cycle wall (ms)": round(wall_ms, 2),
            "default beat every (s)": interval, "share of one core": f"{cpu_ms / 1000 / interval:.2e}"}
    print(cost, flush=True)
    markdown = "\n\n".join([
        "# A lost driver's trials queued again, and the cost of heartbeats",
        markdown_table(rows, ["judged by", "driver on", "grace (s)", "beat every (s)", "rounds",
                              "kill to re-queued (s)", "interval"]),
        markdown_table([cost], list(cost))])
    path = save("heartbeat", rows + [cost], vars(args), markdown)
    print(markdown, f"\nsaved {path}", sep="\n")


if __name__ == "__main__":
    main()
