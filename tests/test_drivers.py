"""Many drivers on one study: a driver started beside a running one joins it (each trains trials
of its own, `--trials` counts the study's total, no design twice), and a trial counts as crashed
only on evidence that its driver is gone: its heartbeat silent for `--heartbeat-grace`, or its
process ended on this machine. The drivers are started for real, as a user would."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import run_search
from search.optuna_adapter import set_system_attr, storage_of
from search.samplers import GridSampler
from search.storage import open_storage
from search.studies import DRIVER, Lease, driver_record
from tests.conftest import count_trials, kill_family

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "fashion-mnist", "--train-size", "100", "--val-size", "50", "--epochs", "1", "--batch-size", "50",
        "--export-top", "0", "--budget-flops", "1.3G", "--confirm-seeds", "0", "--no-asha", "--no-baselines",
        "--warm-start", "0", "--workers", "1"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "run_search.py"), "--study", "s", "--results-dir", ".", *TINY, *args]


def _start(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env or ENV,
                            start_new_session=True)


def _held(db: Path) -> int:
    """RUNNING trials that a driver holds (marked with its record) and has drawn the design of, in
    an SQLite study so far."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials t join trial_system_attributes a on a.trial_id = "
                               "t.trial_id join trial_user_attributes u on u.trial_id = t.trial_id where t.state = "
                               f"'RUNNING' and a.key = '{DRIVER}' and u.key = 'spec_id'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _wait(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.3)
    assert proc.poll() is None and ready(), "the driver ended before the moment looked for"


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_family(proc)
        raise
    assert proc.returncode == 0 and "Traceback" not in out + err, err[-3000:]
    return out, err


def _end_state(study: optuna.Study, trials: int) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The study's trials by what became of them; asserts that as many trained as asked, none of a
    design twice, and nothing is left running."""
    by: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        by.setdefault(t.user_attrs.get("status", t.state.name.lower()), []).append(t)
    trained = by.get("train", [])
    assert len(trained) == trials and all(t.state == TrialState.COMPLETE for t in trained), by
    designs = [t.user_attrs["spec_id"] for t in trained]
    assert len(designs) == len(set(designs))
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    return by


# --- the lease alone, on an SQLite study ------------------------------------------------------------

@pytest.fixture
def study(tmp_path) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return optuna.create_study(study_name="s", storage=open_storage(url))


def _url(study: optuna.Study) -> str:
    return storage_of(study)._backend.url


def _ask(study: optuna.Study, lease: Lease | None, x: int) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_int("x", x, x)
    if lease is not None:
        lease.hold(trial)
    return trial


def test_a_trial_is_closed_only_when_its_heartbeat_is_silent_for_the_grace_period(study) -> None:
    other, this = Lease(study, _url(study), 2, 5), Lease(study, _url(study), 2, 5)
    alive = _ask(study, other, 1)
    mine = _ask(study, this, 2)
    assert this.reap() == 0 and other.reap() == 0  # both beat within the grace period: nothing closed
    assert this.elsewhere() == (0, 1) and other.elsewhere() == (0, 1)
    time.sleep(3.5)  # `other` stops beating (alive on this machine: only the heartbeat tells; SQLite stamps whole s)
    this.beat()
    assert this.reap() == 1  # `other`'s trial, by its heartbeat; never this driver's own
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[alive.number].state == TrialState.FAIL and trials[mine.number].state == TrialState.RUNNING
    assert trials[alive.number].user_attrs == {"failure": "interrupted (its driver stopped)", "status": "interrupted"}
    requeued = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in requeued] == [{"x": 1}]  # its candidate queued again
    assert other.reap() == 0  # closed once: the state change fails for any other driver


def _gone(study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark a trial as held by a process of this machine that has ended (a driver killed)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    set_system_attr(storage_of(study), trial, DRIVER, {**driver_record(), "pid": int(child.stdout)})


def test_a_driver_that_ended_on_this_machine_is_gone_at_once_and_a_trial_that_never_beat_after_the_grace(
        study) -> None:
    old = _ask(study, None, 2)  # never beat: judged by its start, once the grace period has passed
    dead = _ask(study, None, 1)
    _gone(study, dead)
    storage_of(study).record_heartbeat(dead._trial_id)  # its heartbeat is fresh: the process table decides
    study.enqueue_trial({"x": 9})
    assert Lease(study, _url(study), 60, 5).reap() == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL and trials[old.number].state == TrialState.RUNNING
    waiting = [t.system_attrs["fixed_params"]["x"] for t in trials if t.state == TrialState.WAITING]
    assert waiting == [1, 9]  # the interrupted first
    later = Lease(study, _url(study), 2, 5)
    time.sleep(3.5)  # SQLite stamps heartbeats in whole seconds: grace + 1 s + a margin
    assert later.reap() == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[old.number].user_attrs["status"] == "interrupted"
    assert trials[2].user_attrs["status"] == "requeued"  # the waiting one: claimed, closed, queued behind
    assert [t.system_attrs["fixed_params"]["x"] for t in trials if t.state == TrialState.WAITING] == [2, 1, 9]


def test_a_grid_point_asked_but_never_suggested_by_a_killed_driver_is_queued_again(tmp_path) -> None:
    grid = {"x": [1, 2, 3]}
    study = optuna.create_study(study_name="g", storage=open_storage(f"sqlite:///{tmp_path / 'g.db'}"),
                                sampler=GridSampler(grid, seed=0))
    killed = study.ask()  # the grid chose its point; the driver died before the first suggestion recorded it
    _gone(study, killed)
    assert Lease(study, _url(study), 60, 5).reap() == 1
    trained = []
    for _ in grid["x"]:
        trial = study.ask()
        trained.append(trial.suggest_categorical("x", grid["x"]))
        study.tell(trial, 0.0)
    assert sorted(trained) == grid["x"]  # every point once: the lost one queued again, none twice


def test_a_trial_killed_before_any_sampler_chose_is_closed_and_queues_nothing(study) -> None:
    killed = study.ask()  # Optuna's default sampler chooses nothing before the first suggestion
    _gone(study, killed)
    assert Lease(study, _url(study), 60, 5).reap() == 1
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL]


def test_the_grace_option_is_checked_in_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_search.main(["--study", "g", "--results-dir", str(tmp_path), *TINY, "--heartbeat-grace", "1s"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.splitlines() == [err] and "heartbeat_grace_s=1.0 is invalid" in err, err


# --- drivers started for real --------------------------------------------------------------------------

def test_a_second_driver_on_a_running_study_joins_it_and_fails_none_of_its_trials(tmp_path) -> None:
    db = tmp_path / "s" / "study.db"
    trials = "6"  # the first trains one in about 10 s and the second starts in 15-30: it must find some left
    first = _start(_command("--trials", trials), tmp_path)
    _wait(first, lambda: _held(db) >= 1)
    second = _start(_command("--trials", trials), tmp_path)
    out2, _ = _finish(second)
    _finish(first)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    by = _end_state(study, int(trials))
    assert set(by) == {"train"}, {k: len(v) for k, v in by.items()}  # nothing failed, interrupted or repeated
    drivers = {(t.system_attrs[DRIVER]["pid"]) for t in by["train"]}
    assert drivers == {first.pid, second.pid}  # each trained trials of its own
    assert "run in other drivers" in out2 and f"--trials {trials} counts the study's total" in out2
    assert f"{trials} trained (" in (tmp_path / "s" / "summary.md").read_text()  # the reports cover the whole study


@pytest.mark.slow
def test_a_driver_that_finishes_while_others_train_leaves_the_confirmation_to_the_last(tmp_path) -> None:
    db = tmp_path / "s" / "study.db"
    longer = ["--train-size", "2000"]  # trials long enough for the second driver to see one running
    first = _start(_command("--trials", "3", *longer), tmp_path)
    _wait(first, lambda: count_trials(db, "train") >= 1 and _held(db) >= 1)
    second = _start(_command("--trials", "1", "--confirm-seeds", "1", *longer), tmp_path)  # nothing left to train
    out, _ = _finish(second)
    assert "still run in other drivers: the promotion and the seed confirmation are left to the last" in out
    assert "confirming:" not in out
    _finish(first)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert "confirmation" not in study.user_attrs and len(_end_state(study, 3)["train"]) == 3


@pytest.mark.slow
def test_a_driver_killed_elsewhere_is_found_by_its_heartbeat_and_its_trial_trained_by_another(tmp_path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--uts", "true"], check=False).returncode:
        pytest.skip("needs unshare --uts (root) to run a driver as another host")
    db = tmp_path / "s" / "study.db"
    cmd = _command("--trials", "2", "--heartbeat-grace", "4s")
    # The first driver runs under another host name: the second can judge it by its heartbeat only.
    first = _start(["unshare", "--uts", "sh", "-c", 'hostname other-node && exec "$@"', "sh", *cmd], tmp_path)
    _wait(first, lambda: _held(db) >= 1)
    kill_family(first)  # kill -9, with its Ray
    killed_at = time.time()
    second = _start(cmd, tmp_path)
    out, err = _finish(second)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    by = _end_state(study, 2)
    [lost] = by["interrupted"]
    assert lost.system_attrs[DRIVER]["host"] == "other-node" and lost.user_attrs["failure"] == \
        "interrupted (its driver stopped)"
    requeued_at = lost.datetime_complete.timestamp()
    assert 4 <= requeued_at - killed_at < 60, requeued_at - killed_at  # after the grace period, not before
    assert lost.user_attrs["spec_id"] in [t.user_attrs["spec_id"] for t in by["train"]]  # trained by the second
    assert {t.system_attrs[DRIVER]["pid"] for t in by["train"]} == {second.pid}
    # closed at the second driver's start, or while it ran, whichever came after the grace period
    assert "resuming: closed 1 interrupted trial(s)" in out or "closed 1 trial(s) of a driver that is gone" in err


# --- slow: on PostgreSQL, and the one-shot strategy ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_drivers_on_one_postgres_study_share_it(tmp_path, postgres) -> None:
    env = {**ENV, "PGPASSWORD": postgres.password}
    cmd = _command("--trials", "4", "--storage", postgres.url())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # two "nodes": each its own results folder, one study in the database
    first = _start(cmd, tmp_path / "a", env)
    url = postgres.url(with_password=True)

    def held() -> bool:
        try:
            return any(DRIVER in t.system_attrs for t in optuna.load_study(study_name="s", storage=url)
                       .get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        except Exception:  # the study or its tables not made yet
            return False
    _wait(first, held)
    second = _start(cmd, tmp_path / "b", env)
    _finish(second)
    _finish(first)
    study = optuna.load_study(study_name="s", storage=url)
    by = _end_state(study, 4)
    assert set(by) == {"train"}, {k: len(v) for k, v in by.items()}
    assert {t.system_attrs[DRIVER]["pid"] for t in by["train"]} == {first.pid, second.pid}
    for node in ("a", "b"):
        assert "4 trained (" in (tmp_path / node / "s" / "summary.md").read_text()


SPACE = """base: {embed_dim: 64, num_heads: 2, depth: 2}
layers: {ffn: [mlp, conv, local], act: [relu6, hswish], attn: [none, se, eca], se_ratio: [4, 16],
         gamma: [1, 2, 4], kernel: [3, 5]}
"""


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_supernet_being_trained_by_one_driver_is_waited_for_by_another(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(SPACE)
    # a supernet that trains for longer than the second driver takes to start
    cmd = _command("--space", "tiny.yaml", "--strategy", "oneshot", "--min-flops", "35M", "--supernet-epochs", "6",
                   "--train-size", "600", "--candidates", "12", "--top-k", "2", "--recalibration-images", "50",
                   "--rank-by", "supernet", "--trials", "2")
    first = _start(cmd, tmp_path)
    _wait(first, lambda: any((tmp_path / ".supernets").glob("*.pt.lock")))
    second = _start(cmd, tmp_path)
    out2, _ = _finish(second)
    out1, _ = _finish(first)
    assert "supernet epoch 6/6" in out1 and "supernet epoch" not in out2  # trained once, by the first
    assert "is being trained by the driver" in out2 and "waiting for its checkpoint" in out2
    assert not list((tmp_path / ".supernets").glob("*.lock"))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    finalists = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("oneshot_rank")
                 and t.user_attrs.get("status") == "train"]
    designs = [t.user_attrs["spec_id"] for t in finalists]
    assert len(designs) == len(set(designs)) == 2 and all(t.state == TrialState.COMPLETE for t in finalists)
    assert not [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "interrupted"]
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
