"""Faults a user meets under a scheduler, each started for real: SIGTERM (during proxy training,
supernet training, one-shot scoring and the final reports), a second signal, a full disk, a
PostgreSQL server restarted in the middle of a search, a corrupt supernet checkpoint, a trial
worker lost where Ray Tune raises instead of retrying. Each ends
in completion or one line with a documented exit status, and the same command then completes
the search with the trials asked for, none trained twice.

Run with `-s` to see one `FAULT` line per test (fault, exit status, trials lost, seconds to
resume): docs/results/ tabulates them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.event

from search.storage import StorageFault, open_storage
from tests.conftest import count_trials, kill_family, trained_in

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "fashion-mnist", "--train-size", "300", "--val-size", "100", "--epochs", "3", "--batch-size",
        "50", "--export-top", "1", "--budget-flops", "1.3G", "--confirm-seeds", "0", "--no-asha"]
SPACE = """base: {embed_dim: 64, num_heads: 2, depth: 2}
layers: {ffn: [mlp, conv, local], act: [relu6, hswish], attn: [none, se, eca], se_ratio: [4, 16],
         gamma: [1, 2, 4], kernel: [3, 5]}
"""
ONESHOT = ["--space", "tiny.yaml", "--strategy", "oneshot", "--min-flops", "35M", "--supernet-epochs", "3",
           "--candidates", "24", "--top-k", "2", "--recalibration-images", "100", "--rank-by", "supernet"]


def _command(study: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "run_search.py"), "--study", study, "--results-dir", ".", *TINY, *args]


def _signal_when(cmd: list[str], cwd: Path, ready, signums: tuple[int, ...] = (signal.SIGTERM,),
                 timeout: float = 600, env: dict | None = None) -> tuple[int, str, str]:
    """Run the command, send it `signums` (one after the other) once `ready()`, and wait: its exit
    status, standard output and error. Only the command itself is signalled, as a scheduler does."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.3)
    assert proc.poll() is None, "the command ended before the moment to signal it"
    for signum in signums:
        proc.send_signal(signum)
        time.sleep(0.5)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        kill_family(proc)
        raise
    return proc.returncode, out, err


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1] if err.strip() else ""


def _resume(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, time.time() - started


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _assert_complete(study: optuna.Study, trials: int) -> None:
    """As many trained trials as asked, none of a design twice, nothing left running."""
    trained = [t for t in study.trials if t.user_attrs.get("status") == "train" and t.state.is_finished()]
    assert len(trained) == trials
    designs = [t.user_attrs["spec_id"] for t in trained]
    assert len(designs) == len(set(designs))
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def _record(fault: str, status: int, lost: int, resume_s: float) -> None:
    print(f"\nFAULT {json.dumps({'fault': fault, 'exit': status, 'trials_lost': lost, 'resume_s': round(resume_s)})}")


def test_sigterm_during_proxy_training_stops_gracefully_and_the_same_command_completes(tmp_path) -> None:
    cmd = _command("t", "--trials", "5")
    db = tmp_path / "t" / "study.db"
    status, out, err = _signal_when(cmd, tmp_path, lambda: count_trials(db, "train") >= 2)
    assert status == 128 + signal.SIGTERM and "Traceback" not in out + err
    line = _last_line(err)
    assert line.startswith("stopped by SIGTERM: ") and "resume with: python" in line and "interrupted" in line
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "**Partial:** the search was stopped by SIGTERM" in summary
    study = _study(f"sqlite:///{db}", "t")
    interrupted = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    kept = {t.number: t.values for t in study.trials if t.user_attrs.get("status") == "train"}

    result, seconds = _resume(cmd, tmp_path)
    study = _study(f"sqlite:///{db}", "t")
    _assert_complete(study, 5)
    assert {t.number: t.values for t in study.trials if t.number in kept} == kept  # kept as they were
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "Partial" not in summary and f"{len(interrupted)} interrupted and re-queued" in summary
    _record("SIGTERM during proxy training", status, 0, seconds)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_the_study_stays_resumable(tmp_path) -> None:
    cmd = _command("t", "--trials", "4")
    db = tmp_path / "t" / "study.db"
    status, out, err = _signal_when(cmd, tmp_path, lambda: count_trials(db, "train") >= 1,
                                    (signal.SIGINT, signal.SIGINT))
    assert status == 128 + signal.SIGINT and "Traceback" not in out + err
    assert _last_line(err).startswith("stopped at once by a second SIGINT") and "resume with:" in _last_line(err)
    result, seconds = _resume(cmd, tmp_path)
    _assert_complete(_study(f"sqlite:///{db}", "t"), 4)
    _record("a second SIGINT (stop at once)", status, 0, seconds)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["supernet training", "one-shot scoring"])
def test_sigterm_in_the_one_shot_search(tmp_path, phase) -> None:
    (tmp_path / "tiny.yaml").write_text(SPACE)
    cmd = _command("o", *ONESHOT, "--trials", "4")
    db, supernets = tmp_path / "o" / "study.db", tmp_path / ".supernets"
    ready = (lambda: any(supernets.glob("*.pt"))) if phase == "supernet training" else \
        (lambda: count_trials(db, "supernet") >= 6)
    status, out, err = _signal_when(cmd, tmp_path, ready)
    assert status == 128 + signal.SIGTERM and "Traceback" not in out + err
    assert _last_line(err).startswith("stopped by SIGTERM: ")
    scored = {t.number: t.values for t in _study(f"sqlite:///{db}", "o").trials
              if t.user_attrs.get("status") == "supernet" and t.state.is_finished()}
    result, seconds = _resume(cmd, tmp_path)
    if phase == "supernet training":
        assert "supernet epoch 1/3" not in result.stdout  # the epoch checkpointed before the signal is kept
    study = _study(f"sqlite:///{db}", "o")
    assert {t.number: t.values for t in study.trials if t.number in scored} == scored
    candidates = [t.user_attrs["spec_id"] for t in study.trials if t.user_attrs.get("status") == "supernet"]
    assert len(candidates) == 24 == len(set(candidates))  # every candidate scored once
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    finalists = [t for t in study.trials if t.user_attrs.get("oneshot_rank") and t.user_attrs.get("status") == "train"]
    assert len(finalists) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in finalists)
    _record(f"SIGTERM during {phase}", status, 0, seconds)


@pytest.mark.slow
def test_sigterm_during_the_final_reports_writes_them_whole(tmp_path) -> None:
    cmd = _command("t", "--trials", "3")
    _resume(cmd, tmp_path)  # a finished search
    (tmp_path / "t" / "summary.md").unlink()
    # again with another ranking: nothing to train, only the reports, which the signal finds under way
    proc = subprocess.Popen(cmd + ["--rank-by", "proxy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True)
    for line in proc.stdout:
        if "ranking by" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out + err
    assert _last_line(err).startswith("stopped by SIGTERM: 3 trial(s) trained, 0 interrupted")
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "Partial" not in summary and "by proxy" in summary  # complete: nothing was left to do
    _record("SIGTERM during the final reports", proc.returncode, 0, 0.0)


@pytest.mark.slow
def test_sigterm_during_an_audit_stops_it_resumable(tmp_path) -> None:
    from space.paper import PAPER_NAMED_SPECS
    import yaml

    names = ["I/deit-mlp-g4", "IV/gamma1", "II/hswish-se4", "IV/gamma2"]
    refs = tmp_path / "refs.yaml"
    refs.write_text(yaml.safe_dump({"rows": [{"name": n, "accuracy": a, "spec": PAPER_NAMED_SPECS[n].to_dict()}
                                             for n, a in zip(names, (72.2, 65.9, 75.8, 70.1))]}))
    cmd = [sys.executable, "-m", "audit", "--references", str(refs), "--study", "a", "--results-dir", str(tmp_path),
           "--seeds", "0", "--train-size", "300", "--val-size", "100", "--epochs", "2", "--batch-size", "50",
           "--resamples", "200"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    db = tmp_path / "a" / "study.db"
    status, out, err = _signal_when(cmd, tmp_path, lambda: count_trials(db, "train") >= 1, env=env)
    assert status == 128 + signal.SIGTERM and "Traceback" not in out + err
    assert _last_line(err).startswith("stopped by SIGTERM: ") and "no audit was written" in _last_line(err)
    assert "resume with: python -m audit --references" in _last_line(err)
    assert not (tmp_path / "a" / "audit.json").exists()
    result, seconds = _resume(cmd, tmp_path, env)
    _assert_complete(_study(f"sqlite:///{db}", "a-s0"), 4)
    assert len(json.loads((tmp_path / "a" / "audit.json").read_text())["rows"]) == 4
    _record("SIGTERM during an audit", status, 0, seconds)


def test_the_resume_command_is_the_command_as_typed_module_form_included(tmp_path) -> None:
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__main__.py").write_text("from search.stop import resume_command\nprint(resume_command())\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    printed = subprocess.run([sys.executable, "-m", "tool", "--seeds", "0", "--study", "a b"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert printed == "python -m tool --seeds 0 --study 'a b'"


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 600 KiB tmpfs, mounted and unmounted here (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_search_resumes_once_there_is_room(small_disk, tmp_path) -> None:
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "d", "--results-dir", str(small_disk), *TINY,
           "--trials", "4"]
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 74 and "Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
    line = _last_line(done.stderr)
    assert line.startswith(f"error: the disk holding {small_disk}") and "is full (" in line and "MiB free)" in line
    subprocess.run(["mount", "-o", "remount,size=60m", str(small_disk)], check=True)
    result, seconds = _resume(cmd, tmp_path)
    _assert_complete(_study(f"sqlite:///{small_disk / 'd' / 'study.db'}", "d"), 4)
    _record("full disk under --results-dir", done.returncode, 0, seconds)
    assert time.time() - started < 900


@pytest.mark.slow
def test_a_postgres_restart_in_the_middle_of_a_search_is_ridden_out(tmp_path, postgres) -> None:
    env = {**os.environ, "PGPASSWORD": postgres.password}
    cmd = _command("p", "--trials", "6", "--storage", postgres.url())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not trained_in(postgres.url(with_password=True), "p") and proc.poll() is None:
        time.sleep(1)
    postgres.restart(down_s=8)  # every connection cut, the server away for 8 s
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped answering" in err and "is back after" in err  # the outage was met, and ridden out
    study = optuna.load_study(study_name="p", storage=postgres.url(with_password=True))
    _assert_complete(study, 6)
    assert not [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]  # nothing lost
    _record("PostgreSQL restarted for 8 s mid-search", proc.returncode, 0, 0.0)


def _worker_lost_as_ray_tune_raises_it(*_: object, **__: object) -> None:
    """What Ray Tune's actor manager raises out of `Tuner.fit` when Ray's memory monitor kills a
    trial process it is starting (the node's memory check picks the newest task first)."""
    from ray import exceptions

    oom = exceptions.OutOfMemoryError("1 worker(s) were killed due to the node running low on memory. Memory on "
                                      "the node (IP: 192.0.2.2) was 22.42GB used / 23.54GB limit (0.952289)\n"
                                      "OOM kill reason: Memory usage exceeded threshold")
    raise RuntimeError(f"Caught unexpected exception: {oom}") from oom


def test_a_worker_lost_where_ray_tune_raises_is_retried_and_the_search_completes(
        tmp_path, monkeypatch, capfd, local_ray) -> None:
    import run_search
    from search.progress import Progress

    starts = []
    start = Progress.on_trial_start

    def lost_once(self: Progress, *args: object, **kwargs: object) -> None:
        starts.append(1)
        if len(starts) == 1:
            _worker_lost_as_ray_tune_raises_it()
        start(self, *args, **kwargs)

    monkeypatch.setattr(Progress, "on_trial_start", lost_once)
    monkeypatch.chdir(tmp_path)
    started = time.time()
    assert run_search.main(["--study", "lost", "--results-dir", ".", *TINY, "--trials", "1"]) == 0
    out, err = capfd.readouterr()
    retried = [line for line in out.splitlines() if "Ray Tune stopped on a lost worker" in line]
    assert len(retried) == 1 and "OutOfMemoryError: 1 worker(s) were killed" in retried[0] \
        and "retry 1 of 2" in retried[0] and "Traceback" not in err, out[-3000:] + err[-3000:]
    study = _study(f"sqlite:///{tmp_path / 'lost' / 'study.db'}", "lost")
    closed = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    assert closed and all("Ray lost its worker: OutOfMemoryError" in t.user_attrs["failure"] for t in closed)
    _assert_complete(study, 1)  # the lost trial's candidate trained in the same run
    _record("a trial worker killed for memory as Ray Tune starts it", 0, 0, time.time() - started)


def test_a_worker_lost_at_every_start_is_one_line_and_exit_75(tmp_path, monkeypatch, capfd, local_ray) -> None:
    import run_search
    from search.progress import Progress

    monkeypatch.setattr(Progress, "on_trial_start", _worker_lost_as_ray_tune_raises_it)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:
        run_search.main(["--study", "lost", "--results-dir", ".", *TINY, "--trials", "1", "--max-retries", "0"])
    err = capfd.readouterr().err
    last = _last_line(err)
    assert ended.value.code == 75 and "Traceback" not in err, err[-3000:]
    assert last.startswith("error: Ray Tune stopped 1 times in a row on a lost worker (OutOfMemoryError") \
        and "resume with: python" in last, err[-3000:]


def test_a_corrupt_supernet_checkpoint_is_one_line_and_exit_2(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(SPACE)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    done = subprocess.run(_command("c", *ONESHOT, "--supernet-checkpoint", "bad.pt"), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: supernet checkpoint ") and "cannot be read" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    _record("corrupt supernet checkpoint", done.returncode, 0, 0.0)


def _outage(storage, failures: int | None) -> list[int]:
    """Every statement on `storage` fails as a lost server connection would, the next `failures`
    times (None: always); returns the count of statements refused so far."""
    refused = [0]

    def refuse(*_) -> None:
        if failures is None or refused[0] < failures:
            refused[0] += 1
            raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionError("server closed the connection"))

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", refuse)
    return refused


def test_a_lost_connection_is_retried_under_every_storage_call_optuna_makes(tmp_path, capfd) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", retry_s=30)
    study = optuna.create_study(study_name="s", storage=storage)  # behind Optuna's cache, as a search has it
    refused = _outage(storage, 2)
    trial = study.ask()  # the cache creates it with RDBStorage's private _create_new_trial
    refused[0] = 0
    trial.suggest_int("x", 0, 9)  # the cache stores it with _set_trial_param
    study.tell(trial, 1.0)
    assert refused[0] == 2 and len(study.get_trials()) == 1 and study.trials[0].value == 1.0
    err = capfd.readouterr().err
    assert err.count("stopped answering") == 2 and err.count("is back after") == 2


def test_a_database_that_stays_away_is_one_storage_fault_after_one_window(tmp_path, capfd) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", retry_s=1)
    study = optuna.create_study(study_name="s", storage=storage)
    _outage(storage, None)
    with pytest.raises(StorageFault, match="has not answered for 1 s"):
        study.ask()  # RDBStorage.create_new_trial calls _create_new_trial: one window, not one inside another
    assert capfd.readouterr().err.count("stopped answering") == 1
