"""The search end to end, through Ray Tune and Optuna, on a tiny real Fashion-MNIST proxy."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import run_search
from localvit.spec import ArchSpec
from search.samplers import GridSampler, make_sampler
from search.settings import SearchSettings
from space.cost import target_cost
from space.paper import PAPER_NAMED_SPECS
from space.space import ListSpace
from tests.conftest import count_trials, kill_family

REPO = Path(__file__).resolve().parents[1]
# Plain Fashion-MNIST: on 200 images the default's 40 classes stay at chance, and these tests need
# designs that learn (a best that beats the baselines, a confirmation run).
TINY = ["--dataset", "fashion-mnist", "--train-size", "200", "--val-size", "100", "--epochs", "2", "--batch-size",
        "50", "--export-top", "1"]


def search(tmp_path: Path, *args: str, study: str = "s", timeout: int = 400) -> subprocess.CompletedProcess:
    """run_search.py in `tmp_path`, writing to `tmp_path` through a relative --results-dir, as a user would."""
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", study, "--results-dir", ".", *TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def load(tmp_path: Path, study: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / study / 'study.db'}")


def trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.user_attrs.get("status") == "train"]


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny finished search for the module (minutes); tests read copies of it (`finished`)."""
    tmp = tmp_path_factory.mktemp("search")
    result = search(tmp, "--budget-flops", "1.3G", "--trials", "4", "--confirm-seeds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result


@pytest.fixture
def finished(finished_once, tmp_path) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the finished search for one test: a test that ranks it again or writes to it
    changes its own copy, so no test reads what another one left."""
    source, result = finished_once
    shutil.copytree(source, tmp_path / "finished")
    return tmp_path / "finished", result


def test_tiny_search_writes_study_csv_plots_summary_and_exports(finished) -> None:
    tmp, result = finished
    study = load(tmp)
    runs = trained(study)
    assert len(runs) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    baselines = {t.user_attrs["baseline"]: t for t in runs if t.user_attrs.get("baseline")}
    assert set(baselines) == {"LocalViT-T", "DeiT-T"} and {t.number for t in baselines.values()} == {0, 1}
    for t in runs:
        a = t.user_attrs
        spec = ArchSpec.from_json(a["spec"])
        assert a["spec_id"] == spec.id and a["flops"] == target_cost(spec).flops <= 1.3e9
        assert len(a["val_acc_curve"]) == a["epochs_trained"] and a["val_acc_curve"][-1] == t.values[0]
        # per-epoch accuracy at step = epoch, shown by optuna-dashboard (ASHA's last epoch too)
        assert t.intermediate_values == dict(enumerate(a["val_acc_curve"], start=1))
    assert all(t.user_attrs["full_fidelity"] for t in baselines.values())  # never stopped by ASHA
    warm = [t for t in runs if t.user_attrs.get("warm_start")]
    assert [t.number for t in warm] == [2, 3]  # the paper's designs closest to the budget, after the baselines
    for t in warm:
        paper = PAPER_NAMED_SPECS[t.user_attrs["warm_start"]]
        assert t.user_attrs["spec_id"] == paper.id and target_cost(paper).flops <= 1.3e9
    frame = pd.read_csv(tmp / "s" / "trials.csv")
    assert len(frame) == len(study.trials) and {"l00.ffn", "l11.gamma", "gflops", "accuracy"} <= set(frame.columns)
    summary = (tmp / "s" / "summary.md").read_text()
    assert "LocalViT-T baseline" in summary and "Re-trained with other seeds" in summary
    assert "- ranking signal: " in summary and "precision auto resolved to" in summary
    for name in ("pareto.png", "layers.png"):
        assert (tmp / "s" / name).read_bytes()[:4] == b"\x89PNG"
    exports = list((tmp / "s" / "export").iterdir())
    assert exports and (exports[0] / "train.yaml").is_file()
    assert study.best_trial.user_attrs["status"] == "train"  # Optuna 5 skips infeasible trials
    assert "optuna-dashboard sqlite:///" in result.stdout
    assert "trained (" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_rerunning_a_finished_search_trains_nothing_more(finished) -> None:
    tmp, _ = finished
    before = [(t.number, t.values) for t in trained(load(tmp))]
    result = search(tmp, "--budget-flops", "1.3G", "--trials", "4", "--confirm-seeds", "1", "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(t.number, t.values) for t in trained(load(tmp))] == before


def test_infeasible_are_never_trained_and_failing_trials_do_not_stop_the_search(tmp_path) -> None:
    # 1.0 GFLOPs rules out both baselines and most random designs; lr 1e8 makes every trained
    # trial's loss blow up, so each one raises.
    result = search(tmp_path, "--budget-flops", "1.0G", "--trials", "3", "--sampler", "random", "--lr", "1e8",
                    "--confirm-seeds", "0", "--warm-start", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path)
    infeasible = [t for t in study.trials if t.user_attrs.get("status") == "infeasible"]
    assert infeasible
    for t in infeasible:
        assert t.user_attrs["flops"] > 1.0e9 and "epochs_trained" not in t.user_attrs
        assert t.system_attrs["constraints"][0] > 0  # what optuna-dashboard reads
    runs = trained(study)
    assert len(runs) == 3 and not any(t.user_attrs.get("baseline") for t in study.trials)
    for t in runs:
        assert t.user_attrs["flops"] <= 1.0e9 and t.system_attrs["constraints"][0] <= 0
        assert t.state == optuna.trial.TrialState.FAIL and "NonFiniteLossError" in t.user_attrs["failure"]
    assert len([p for p in (tmp_path / "s" / "ray").iterdir() if p.is_dir()]) == 3  # only these reached Ray
    assert "3 failed" in (tmp_path / "s" / "summary.md").read_text()


def test_killed_search_resumes_with_no_trial_lost_or_repeated(tmp_path) -> None:
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "k", "--results-dir", str(tmp_path), *TINY,
           "--budget-flops", "1.3G", "--trials", "5", "--confirm-seeds", "0", "--no-asha"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    db = tmp_path / "k" / "study.db"
    deadline = time.time() + 300
    while time.time() < deadline and not (db.exists() and count_trials(db, "train") >= 2):
        time.sleep(1)
    assert count_trials(db, "train") >= 2, "the search did not get going"
    kill_family(proc)  # the driver and the Ray processes it started
    before = {t.number: t.values for t in trained(load(tmp_path, "k")) if t.state.is_finished()}

    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path, "k")
    runs = trained(study)
    assert len(runs) == 5  # the count asked for
    assert {t.number: t.values for t in runs if t.number in before} == before  # kept as they were
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    interrupted = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    trained_specs = [t.user_attrs["spec_id"] for t in runs]
    assert len(trained_specs) == len(set(trained_specs))  # no candidate trained twice
    for t in interrupted:  # each interrupted candidate was queued again and trained once
        if "spec_id" in t.user_attrs:  # (killed before its spec was drawn: partial choices re-queued)
            assert trained_specs.count(t.user_attrs["spec_id"]) == 1


# --- --rank-by: what picks the best, the exports and the front --------------------------------------

def _expected(candidates: list, rank_by: str, weight: float | None) -> tuple[int, set[int]]:
    """The trial a ranking picks and its Pareto front against FLOPs, computed here from the
    trials' values and costs (ranked by FLOPs, the front is the best alone: nothing trades)."""
    from scipy.stats import rankdata

    acc = np.array([t.values[0] for t in candidates])
    params = np.array([t.user_attrs["params"] for t in candidates], dtype=float)
    flops = np.array([t.user_attrs["flops"] for t in candidates], dtype=float)
    z = lambda v: (v - v.mean()) / v.std() if v.std() > 0 else np.zeros_like(v)
    if rank_by == "proxy+params":
        score = z(acc) + weight * z(np.log(params))
    elif rank_by == "proxy-params-rank":
        score = (rankdata(acc) + rankdata(params)) / 2
    elif rank_by == "params-then-proxy":  # counts within 1% are one group, ordered by the proxy
        order = np.argsort(params)
        group, g = np.zeros(len(params)), 0
        for k in range(1, len(order)):
            g += params[order[k]] > params[order[k - 1]] * 1.01
            group[order[k]] = g
        score = group * 1000 + acc
    else:
        score = {"proxy": acc, "params": params, "flops": flops}[rank_by]
    best = max(range(len(candidates)), key=lambda i: (score[i], -flops[i], -candidates[i].number))
    front = {best} if rank_by == "flops" else {
        i for i in range(len(candidates)) if not any(score[j] >= score[i] and flops[j] <= flops[i] and
                                                     (score[j] > score[i] or flops[j] < flops[i])
                                                     for j in range(len(candidates)))}
    return candidates[best].number, {candidates[i].number for i in front}


@pytest.mark.parametrize("rank_by", ["proxy", "params", "flops", "proxy+params", "proxy-params-rank",
                                     "params-then-proxy"])
def test_rank_by_picks_the_best_and_the_exports_as_stated(finished, capsys, rank_by) -> None:
    tmp, _ = finished
    run_search.main(["--study", "s", "--results-dir", str(tmp), *TINY, "--budget-flops", "1.3G", "--trials", "4",
                     "--confirm-seeds", "1", "--rank-by", rank_by])
    study = load(tmp)
    recorded = study.user_attrs["rank_by"]
    assert recorded["signal"] == rank_by and "as asked" in recorded["why"]
    assert len(trained(study)) == 4  # ranking again trains nothing
    candidates = {}
    for t in sorted((t for t in trained(study) if t.state == optuna.trial.TrialState.COMPLETE
                     and t.user_attrs["full_fidelity"] and not t.user_attrs.get("baseline")),
                    key=lambda t: -t.values[0]):
        candidates.setdefault(t.user_attrs["spec_id"], t)
    best, front = _expected(list(candidates.values()), rank_by, recorded["weight"])
    summary = (tmp / "s" / "summary.md").read_text()
    best_row = next(line for line in summary.splitlines() if line.startswith("| **best found**"))
    assert f"| {best} |" in best_row
    spec_id = next(t.user_attrs["spec_id"] for t in study.trials if t.number == best)
    first_export = next(line for line in summary.splitlines() if line.startswith("- `export/"))
    assert spec_id in first_export and f"by {rank_by}" in summary
    exports = {line.split("`")[1].split("/")[1] for line in summary.splitlines() if line.startswith("- `export/")}
    assert exports == {t.user_attrs["spec_id"] for t in study.trials if t.number in front | {best}}  # --export-top 1
    assert f"- ranking signal: {rank_by}, as asked" in summary
    ladder = next(line for line in summary.splitlines() if line.startswith("- the fidelity ladder"))
    assert ladder.endswith(f"no rung decided: {rank_by} ranked the finalists, which costs no training"
                           if rank_by in ("params", "flops") else
                           f"rung 1 decided: {rank_by} ranked the finalists there")


def test_each_combination_ranks_with_the_weight_its_audit_fitted(tmp_path) -> None:
    import json

    from ranking.audits import SHIPPED_AUDITS, protocol_key
    from search.rank_by import resolve

    settings = SearchSettings(results_dir=str(tmp_path))  # the default protocol, audited on the paper's designs
    audit = json.loads(SHIPPED_AUDITS.read_text())[protocol_key(settings.protocol)]
    rank_by = resolve(settings)
    assert rank_by.signal == audit["default_signal"]
    for name in ("proxy+params", "proxy-params-rank"):  # what the summary's table ranks each by
        fitted = audit["signals"][name]["weights"].get("all")
        assert rank_by.by(name).weight == fitted and (fitted is None) == (not name.endswith("+params"))


def test_the_default_ranking_is_named_with_the_audit_it_rests_on(finished) -> None:
    tmp, _ = finished
    run_search.main(["--study", "s", "--results-dir", str(tmp), *TINY, "--budget-flops", "1.3G", "--trials", "4",
                     "--confirm-seeds", "1"])
    from scipy.stats import kendalltau

    from space.references import PAPER_IMAGENET, load_references

    recorded = load(tmp).user_attrs["rank_by"]
    rows = load_references(PAPER_IMAGENET).rows
    tau = kendalltau([target_cost(r.spec).params for r in rows], [r.accuracy for r in rows]).statistic  # tau-b
    # this tiny protocol has no audit: parameter count, with its figure on the paper's designs
    assert recorded["signal"] == "params" and "no audit" in recorded["why"] and f"tau-b {tau:.2f}" in recorded["why"]


# --- bad input: one line, exit 2, no traceback, the study untouched --------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, words", [
    (["--budget-flops", "abc"], "'abc'"),
    (["--budget-flops=-1G"], "'-1G'"),
    (["--budget-flops", "-1G"], "--budget-flops"),  # argparse's own error, in one line too
    (["--budget-flops", "1.3X"], "'1.3X'"),
    (["--budget-params", "0"], "'0'"),
    (["--sampler", "bayes"], "'bayes'"),
    (["--workers", "-1"], "workers=-1"),
    (["--asha-grace", "0"], "asha_grace=0"),
    (["--dataset", "cifar"], "'cifar'"),
    (["--storage", "sqlite:////no/such/dir/x.db"], "cannot be opened"),
    (["--storage", "postgresql://u@127.0.0.1:1/db"], "cannot be opened"),
    (["--budget-flops", "100M"], "infeasible budget"),
    (["--space", "paper", "--sampler", "grid", "--backbone", "swin_tiny"], "'swin_tiny'"),
    (["--time-limit", "soon"], "'soon'"),
    (["--objectives", "flops"], "'flops'"),
    (["--rank-by", "luck"], "rank_by='luck' is invalid"),
    (["--resume", "--study", "never-made"], "does not exist"),
    (["--epochs", "3"], "differs from what study"),  # the study exists with another protocol
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_study_unchanged(finished, capsys, args, words) -> None:
    tmp, _ = finished
    db = tmp / "s" / "study.db"
    digest = _digest(db)
    argv = ["--study", "s", "--results-dir", str(tmp), *TINY, "--budget-flops", "1.3G", *args]
    with pytest.raises(SystemExit) as exit_:
        run_search.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert _digest(db) == digest


def test_unwritable_results_dir_and_missing_dataset(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, words in ((["--results-dir", str(blocker / "sub")], "not writable"),
                        (["--data-dir", str(tmp_path / "none"), "--results-dir", str(tmp_path)],
                         "dataset-fashion-mnist")):
        with pytest.raises(SystemExit) as exit_:
            run_search.main(["--budget-flops", "1.3G", *argv])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_help_documents_every_option_with_its_default() -> None:
    parser = run_search.build_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text and action.help, action.dest
            if action.default not in (None, False):
                assert "default" in action.help and str(action.default) in action.help, action.dest


def test_one_subprocess_bad_input_prints_no_traceback(tmp_path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "run_search.py"), "--budget-flops", "1.3Q",
                             "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]


# --- every backbone searches at a small proxy resolution (32x32 for the stage backbones) -----------

BACKBONE_BUDGETS = {"pvt_tiny": "2.2G", "swin_tiny": "5G", "swin_mini": "3.6G", "tnt_tiny": "1.6G",
                    "t2t_7": "1.3G", "deit_small": "5G"}


def _tiny_search_on(backbone: str, tmp_path: Path) -> None:
    result = search(tmp_path, "--backbone", backbone, "--budget-flops", BACKBONE_BUDGETS[backbone], "--trials", "3",
                    "--epochs", "1", "--confirm-seeds", "0", "--train-size", "100", study=backbone)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = trained(load(tmp_path, backbone))
    assert len(runs) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    for t in runs:
        spec = ArchSpec.from_json(t.user_attrs["spec"])
        assert spec.backbone == (backbone if backbone != "deit_small" else "vit") and spec.img_size == 224
        assert 0 < t.user_attrs["proxy_flops"] < t.user_attrs["flops"]


def test_tiny_search_on_a_stage_backbone(tmp_path) -> None:
    _tiny_search_on("pvt_tiny", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(set(BACKBONE_BUDGETS) - {"pvt_tiny"}))
def test_tiny_search_on_every_other_backbone(backbone: str, tmp_path) -> None:
    _tiny_search_on(backbone, tmp_path)


def test_a_resumed_grid_reads_the_points_of_the_run_it_continues_and_other_samplers_do_not_replay() -> None:
    space, settings = ListSpace(), SearchSettings(sampler="grid")

    def first_points(sampler: optuna.samplers.BaseSampler, n: int = 5) -> list[str]:
        study = optuna.create_study(sampler=sampler)
        trials = [study.ask() for _ in range(n)]
        return [t.suggest_categorical(space.param, list(space.points)) for t in trials]

    assert first_points(make_sampler(settings, space)) == first_points(make_sampler(settings, space, offset=7))
    random = dataclasses.replace(settings, sampler="random")
    assert first_points(make_sampler(random, space)) != first_points(make_sampler(random, space, offset=7))


def test_a_grid_trial_queued_empty_by_an_older_version_takes_a_point_of_its_own() -> None:
    grid = {"x": [1, 2, 3]}
    study = optuna.create_study(sampler=GridSampler(grid, seed=0))
    study.enqueue_trial({})  # what a resume queued for a trial killed before its first suggestion
    trained = []
    for _ in grid["x"]:
        trial = study.ask()
        trained.append(trial.suggest_categorical("x", grid["x"]))
        study.tell(trial, 0.0)
    assert sorted(trained) == grid["x"]


def test_the_grid_samplers_last_point_can_be_told_outside_study_optimize() -> None:
    grid = {"x": [0, 1]}
    for sampler, raises in ((optuna.samplers.GridSampler(grid, seed=0), True), (GridSampler(grid, seed=0), False)):
        study = optuna.create_study(sampler=sampler)
        trials = [study.ask() for _ in grid["x"]]
        assert sorted(t.suggest_categorical("x", grid["x"]) for t in trials) == grid["x"]
        study.tell(trials[0], 0.0)
        if raises:  # Optuna's grid stops the study on its last point, which only study.optimize allows
            with pytest.raises(RuntimeError, match="Study.stop"):
                study.tell(trials[1], 1.0)
        else:
            study.tell(trials[1], 1.0)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
