"""Scaling out: PostgreSQL studies on a real server, a real multi-node Ray cluster on loopback
addresses, trials bigger than any node, nodes lost in the middle of a trial, and no password
written to disk. Servers are started here and stopped by process id (tests/servers.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest

import run_search as run_search_module
from proxy.allocator import jemalloc_path
from search.cluster import lost_reason, node_check, tune_loss
from search.settings import SearchSettings
from search.storage import without_password
from tests.servers import Postgres, RayCluster, postgres_server
from tests.test_search import REPO, TINY, trained
from tests.conftest import kill_family, trained_in

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """One server for the module's tests (the conftest's is one per test)."""
    with postgres_server() as server:
        yield server


def run_search(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600) \
        -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "s", "--results-dir", ".", *TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


# --- fast: the storage URL, the reasons, the per-node check ------------------------------------------

def test_a_postgres_password_leaves_the_url_for_pgpassword(monkeypatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "before")  # restored after the test
    assert without_password("postgresql://nas:s3cr%40t@db:5432/nas?sslmode=require") == \
        "postgresql://nas@db:5432/nas?sslmode=require"
    assert os.environ["PGPASSWORD"] == "s3cr@t"
    assert without_password("postgresql://nas@db/nas") == "postgresql://nas@db/nas"
    with pytest.raises(ValueError, match=r"mysql://u:\*\*\*@db/x.*accepted"):  # the error hides it too
        without_password("mysql://u:pw@db/x")
    with pytest.raises(ValueError, match="password"):
        SearchSettings(storage="postgresql://nas:pw@db/nas")


def test_lost_reasons_name_the_cause_and_the_epoch() -> None:
    class Preempted(Exception):
        preempted = True

    assert lost_reason(Preempted("gone"), "10.0.0.7", 3) == "node 10.0.0.7 was preempted during epoch 3"
    oom = RuntimeError("Task was killed due to the node running low on memory (OOM)")
    assert lost_reason(oom, "10.0.0.7", 1) == "its worker on node 10.0.0.7 was killed for lack of memory during epoch 1"
    assert lost_reason(None, None, 2) == "its worker on its node died during epoch 2"


def test_only_what_the_infrastructure_took_counts_as_a_loss_out_of_ray_tune() -> None:
    from ray import exceptions

    died = exceptions.NodeDiedError("node 10.0.0.7 died\nits state: ...")
    try:
        try:
            raise died
        except exceptions.NodeDiedError as err:
            raise RuntimeError("Caught unexpected exception") from err
    except RuntimeError as raised:
        assert tune_loss(raised) == "NodeDiedError: node 10.0.0.7 died"
    try:
        raise RuntimeError("a bug in a callback") from ValueError("not Ray's")
    except RuntimeError as raised:
        assert tune_loss(raised) == ""
    try:
        try:
            raise died
        except exceptions.NodeDiedError:
            raise KeyError("a bug of ours met while Tune handled the loss")  # noqa: B904 (as it happens)
    except KeyError as raised:
        assert tune_loss(raised) == ""


def _rss_while_training(design: str, rung: int, seconds: float) -> list[int]:
    """In a Ray worker: RSS (MB) every 10 s while `design` trains at `rung`, for `seconds`; an
    error if the training failed or ended within them."""
    import threading

    from proxy.protocol import ProxyProtocol, protocol_at_rung
    from proxy.training import train_proxy
    from space.references import load_references

    def rss() -> int:
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024

    row = next(r for r in load_references().rows if r.name == design)
    protocol = protocol_at_rung(ProxyProtocol(), rung).replace(threads=2)
    failed: list[Exception] = []

    def train() -> None:
        try:
            train_proxy(row.spec, protocol)
        except Exception as err:
            failed.append(err)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    samples = []
    for _ in range(int(seconds // 10)):
        time.sleep(10)
        samples.append(rss())
    assert thread.is_alive() and not failed, failed
    return samples


@pytest.mark.slow
@pytest.mark.skipif(jemalloc_path() is None, reason="no jemalloc here: the trials use glibc's malloc")
def test_a_ray_trial_worker_trains_a_rung_10_design_in_bounded_memory(local_ray) -> None:
    """IV/gamma2-se4 at rung 10 grew a Ray trial worker by 150-300 MB/s under the trials' old
    jemalloc settings (docs/results/2026-12-07-ladder.md); one training holds about 1.5 GB."""
    import ray

    from search.cluster import worker_env

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**worker_env(SearchSettings(cpus_per_trial=2)), "PYTHONPATH": str(REPO)}})
    samples = ray.get(ray.remote(num_cpus=2)(_rss_while_training).remote("IV/gamma2-se4", 10, 50))
    assert max(samples) < 3000 and samples[-1] - samples[1] < 300, samples  # from its first steps on


@pytest.mark.parametrize("args", [["--cpus-per-trial", "64"], ["--gpus-per-trial", "1"]])
def test_a_trial_bigger_than_this_machine_is_one_line_exit_2_before_ray_starts(tmp_path, capsys, monkeypatch,
                                                                              args) -> None:
    import ray
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # this machine, GPU or not, has none
    with pytest.raises(SystemExit) as exit_:
        run_search_module.main(["--study", "s", "--results-dir", str(tmp_path), *TINY, "--budget-flops", "1.3G",
                                *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert err.splitlines() == [err] and "no single node has that much" in err and args[1] in err, err
    assert not ray.is_initialized()


def test_the_node_check_imports_the_trial_code_and_writes_to_the_storage(tmp_path) -> None:
    assert node_check(str(tmp_path), "a-node") == ""
    assert (tmp_path / ".node-check" / "a-node").read_bytes() == b"ok"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write to Ray's storage" in node_check(str(blocker), "a-node")


WORKER = textwrap.dedent("""
    import sys, optuna
    from search.storage import open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="many", storage=open_storage(sys.argv[1]))
    for i in range(int(sys.argv[3])):
        trial = study.ask()
        trial.set_user_attr("worker", sys.argv[2])
        study.tell(trial, trial.suggest_float("x", 0, 1) + i)
        print(trial.number)
""")


@pytest.mark.slow
def test_eight_concurrent_workers_on_one_postgres_study_lose_nothing(postgres, tmp_path) -> None:
    env = {**os.environ, "PGPASSWORD": postgres.password, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    url = postgres.url()
    optuna.create_study(study_name="many", storage=postgres.url(with_password=True))
    per_worker = 15
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(w), str(per_worker)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(8)]
    numbers: dict[int, list[int]] = {}
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        numbers[w] = [int(line) for line in out.split()]
    study = optuna.load_study(study_name="many", storage=postgres.url(with_password=True))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 * per_worker and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(8 * per_worker))  # none lost, none doubled
    for w, told in numbers.items():
        assert sorted(t.number for t in trials if t.user_attrs["worker"] == str(w)) == sorted(told)


def test_two_concurrent_workers_on_one_sqlite_study_in_wal_mode_lose_nothing(tmp_path) -> None:
    import sqlite3

    from search.storage import open_storage

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    optuna.create_study(study_name="many", storage=storage)
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: no fsync per commit
    with sqlite3.connect(tmp_path / "study.db") as plain:  # the mode is the file's, as any reader sees it
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    per_worker = 10
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(w), str(per_worker)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="many", storage=url).get_trials(deepcopy=False)  # a plain reader
    assert sorted(t.number for t in trials) == list(range(2 * per_worker))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_password_in_a_postgres_url_opens_the_study_and_is_recorded_nowhere(postgres, tmp_path,
                                                                            monkeypatch) -> None:
    import json

    from search.driver import prepare
    from search.options import settings_from_args

    monkeypatch.setenv("PGPASSWORD", "wrong")  # restored after the test; the URL's password wins
    args = run_search_module.build_parser().parse_args(
        ["--study", "pw", "--results-dir", str(tmp_path), *TINY, "--budget-flops", "1.3G",
         "--storage", postgres.url(with_password=True)])
    settings = settings_from_args(args)
    plan = prepare(settings)
    assert settings.storage == postgres.url() and os.environ["PGPASSWORD"] == postgres.password
    recorded = json.dumps(plan.study.user_attrs)
    assert postgres.url() in recorded and postgres.password not in recorded


# --- slow: a search on PostgreSQL, killed and resumed; no password on disk ----------------------------

@pytest.mark.slow
def test_postgres_search_killed_and_resumed_loses_nothing_and_writes_no_password(postgres, tmp_path) -> None:
    secret_url = postgres.url(with_password=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PGPASSWORD", None)
    args = ["--storage", secret_url, "--budget-flops", "1.3G", "--trials", "5", "--workers", "2",
            "--confirm-seeds", "1", "--no-asha"]
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "s", "--results-dir", str(tmp_path), *TINY, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env,
                            start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and trained_in(secret_url, "s") < 2:
        time.sleep(2)
    assert trained_in(secret_url, "s") >= 2, "the search did not get going"
    kill_family(proc)  # the driver and the Ray processes it started
    study = optuna.load_study(study_name="s", storage=secret_url)
    before = {t.number: t.values for t in trained(study) if t.state.is_finished()}

    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=secret_url)
    runs = trained(study)
    assert len(runs) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    assert {t.number: t.values for t in runs if t.number in before} == before  # kept as they were
    specs = [t.user_attrs["spec_id"] for t in runs]
    assert len(specs) == len(set(specs))  # no candidate trained twice
    assert not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"summary.md", "provenance.json", "tuner.pkl"} <= names
    assert any(n.startswith("searcher-state") for n in names)
    leaks = [p for p in written if postgres.password.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert postgres.password not in result.stdout + result.stderr
    assert study.user_attrs["settings"]["storage"] == postgres.url()  # recorded without it


# --- slow: a real multi-node Ray cluster on loopback ----------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Head 127.0.0.2 (no CPU for trials), 127.0.0.3 (1 CPU), 127.0.0.4 (1 CPU, 1 fake GPU)."""
    ray_cluster = RayCluster.start([{"cpus": 1}, {"cpus": 1, "gpus": 1}])
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


def on_cluster(cluster: RayCluster, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**RayCluster.env(), "OMP_NUM_THREADS": "1"}
    return run_search(cwd, "--ray-address", cluster.address, "--budget-flops", "1.3G", "--confirm-seeds", "0",
                      "--no-baselines", "--warm-start", "0", "--no-asha", *args, env=env)


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")


@pytest.mark.slow
def test_a_search_on_the_cluster_runs_trials_on_both_worker_nodes(cluster, tmp_path) -> None:
    result = on_cluster(cluster, tmp_path, "--trials", "4", "--workers", "2", "--gpus-per-trial", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = trained(load(tmp_path))
    assert len(runs) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    assert {t.user_attrs["node_ip"] for t in runs} == {"127.0.0.3", "127.0.0.4"}
    assert all(t.user_attrs["device"] == "cpu" and t.user_attrs["gpu_ids"] == [] for t in runs)
    assert "Traceback" not in result.stdout + result.stderr and (tmp_path / "s" / "ray.log").is_file()


@pytest.mark.slow
def test_gpu_trials_run_only_on_the_node_with_gpus(cluster, tmp_path) -> None:
    result = on_cluster(cluster, tmp_path, "--trials", "2", "--workers", "2", "--gpus-per-trial", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = trained(load(tmp_path))
    assert len(runs) == 2
    assert all(t.user_attrs["node_ip"] == "127.0.0.4" and t.user_attrs["gpu_ids"] == ["0"] for t in runs)


@pytest.mark.slow
def test_cpus_beyond_every_node_but_not_the_cluster_is_one_line_exit_2(cluster, tmp_path) -> None:
    result = on_cluster(cluster, tmp_path, "--trials", "2", "--cpus-per-trial", "2",  # 2 CPUs in all, 1 a node
                        "--gpus-per-trial", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert err.splitlines() == [err] and "cpus_per_trial=2 is invalid: no single node" in err, err


@pytest.mark.slow
def test_a_node_killed_mid_trial_is_retried_on_the_other_and_costs_no_trial(cluster, tmp_path) -> None:
    # Last in this module: the node stays dead.
    env = {**RayCluster.env(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "s", "--results-dir", ".", *TINY,
           "--train-size", "400", "--ray-address", cluster.address, "--budget-flops", "1.3G", "--confirm-seeds", "0",
           "--no-baselines", "--warm-start", "0", "--no-asha", "--trials", "3", "--workers", "2",
           "--gpus-per-trial", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not cluster.node("127.0.0.3").runs_a_trial():
            time.sleep(0.5)
        time.sleep(1)  # inside its first epoch (set-up and an epoch of 400 images can end within 3 s)
        cluster.kill_raylet("127.0.0.3")
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    study = load(tmp_path)
    runs = trained(study)
    assert len(runs) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    retried = [t for t in runs if t.user_attrs.get("retries")]
    assert len(retried) == 1, [t.user_attrs for t in runs]
    reason = retried[0].user_attrs["retries"][0]
    assert reason == "node 127.0.0.3 died during epoch 1", reason
    assert retried[0].user_attrs["node_ip"] == "127.0.0.4" and retried[0].user_attrs["full_fidelity"]
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "1 trial(s) retried after losing their node or worker (1 retries)" in summary
    assert "Traceback" not in out + err and "state-dump" not in out + err
    assert "retrying" in out and "state-dump" in (tmp_path / "s" / "ray.log").read_text()
