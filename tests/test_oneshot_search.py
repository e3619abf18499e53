"""`run_search.py --strategy oneshot`: the supernet trained, candidates scored on it through Ray
and recorded in Optuna with their fidelity, the top-k trained and confirmed; kills resumed."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
import torch

import run_search
from proxy.data import ProxyData
from search.storage import open_storage
from proxy.supernet import train_supernet
from search.candidates import SKIPS_IN_A_ROW
from search.oneshot import Proposer, pick_finalists
from proxy.protocol import ProxyProtocol
from search.settings import SearchSettings
from search.tune import DefineByRun
from space.budget import Budget
from space.cost import target_cost
from space.space import make_space, space_from_dict
from localvit.spec import LayerSpec
from tests.conftest import count_trials, kill_family

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train-size", "200", "--val-size", "100", "--epochs", "2", "--batch-size", "50", "--export-top", "1"]
SPACE = """base: {embed_dim: 64, num_heads: 2, depth: 2}
layers: {ffn: [mlp, conv, local], act: [relu6, hswish], attn: [none, se, eca], se_ratio: [4, 16],
         gamma: [1, 2, 4], kernel: [3, 5]}
"""
# At 224x224 this space costs 30-42 MFLOPs: a 35M floor rules out about half of it, and the
# LocalViT-T and DeiT-T baselines (1.26-1.28G) fit under the ceiling.
ONESHOT = ["--strategy", "oneshot", "--min-flops", "35M", "--budget-flops", "1.3G", "--supernet-epochs", "3",
           "--candidates", "24", "--top-k", "2", "--recalibration-images", "100", "--confirm-seeds", "1",
           "--rank-by", "supernet"]


def _run_until(cmd: list[str], cwd: Path, ready, timeout: float = 600) -> None:
    """Start the search and SIGKILL it (with the Ray processes it started) once `ready()`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.5)
    assert proc.poll() is None and ready(), "the search ended before the moment to kill it"
    kill_family(proc)  # the driver and the Ray processes it started


@pytest.mark.slow
def test_oneshot_search_end_to_end_killed_in_training_and_in_scoring(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(SPACE)
    cmd = [sys.executable, str(REPO / "run_search.py"), "--study", "o", "--results-dir", ".", "--space", "tiny.yaml",
           *TINY, *ONESHOT]
    db, supernets = tmp_path / "o" / "study.db", tmp_path / ".supernets"
    # killed after the first supernet epoch's checkpoint, then again after some candidates were scored
    _run_until(cmd, tmp_path, lambda: any(supernets.glob("*.pt")))
    _run_until(cmd, tmp_path, lambda: db.exists() and count_trials(db, "supernet") >= 6)
    scored_before = {t.number: t.values for t in optuna.load_study(study_name="o", storage=f"sqlite:///{db}").trials
                     if t.user_attrs.get("status") == "supernet" and t.state.is_finished()}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "supernet epoch 1/3" not in result.stdout  # trained before the kills, not again
    assert "candidate(s) on the supernet in" in result.stdout  # the scoring's progress, not in Ray's log

    study = optuna.load_study(study_name="o", storage=f"sqlite:///{db}")
    trials = study.trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    scored = [t for t in trials if t.user_attrs.get("status") == "supernet"]
    assert len(scored) == 24 and all(t.user_attrs["fidelity"] == "supernet" for t in scored)
    assert {t.number: t.values for t in scored if t.number in scored_before} == scored_before  # kept as they were
    spec_ids = [t.user_attrs["spec_id"] for t in scored]
    assert len(spec_ids) == len(set(spec_ids))  # none scored twice
    for t in trials:
        if t.user_attrs.get("status") == "interrupted" and "spec_id" in t.user_attrs:
            assert spec_ids.count(t.user_attrs["spec_id"]) == 1  # queued again, scored once
    infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
    assert infeasible and all(t.user_attrs["flops"] < 35e6 and "eval_s" not in t.user_attrs for t in infeasible)
    assert all(35e6 <= t.user_attrs["flops"] for t in scored)

    trained = [t for t in trials if t.user_attrs.get("status") == "train"]
    assert all(t.user_attrs["fidelity"] == "trained" and t.user_attrs["full_fidelity"] for t in trained)
    assert sorted(t.user_attrs.get("baseline", "") for t in trained) == ["", "", "DeiT-T", "LocalViT-T"]
    top = sorted((t for t in scored if t.user_attrs["spec_id"] not in
                  {u.user_attrs["spec_id"] for u in trained if u.user_attrs.get("baseline")}),
                 key=lambda t: (-t.values[0], t.user_attrs["flops"], t.number))[:2]
    finalists = sorted((t for t in trained if t.user_attrs.get("oneshot_rank")), key=lambda t: t.user_attrs[
        "oneshot_rank"])
    assert [t.user_attrs["spec_id"] for t in finalists] == [t.user_attrs["spec_id"] for t in top]
    assert [t.user_attrs["supernet_accuracy"] for t in finalists] == [t.values[0] for t in top]
    confirmation = study.user_attrs["confirmation"]
    assert set(confirmation) == {"best", "LocalViT-T"} and all(len(e["seeds"]) == 2 for e in confirmation.values())

    out = tmp_path / "o"
    frame = pd.read_csv(out / "trials.csv")
    assert set(frame["fidelity"].dropna()) == {"supernet", "trained"}
    summary = (out / "summary.md").read_text()
    assert "24 candidates scored with inherited weights" in summary and "the ranking rests on:" in summary
    where = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"s of training on {where} (" in summary and f"in the last run on {where})" in summary
    assert "Re-trained with other seeds" in summary and list((out / "export").iterdir())


def test_finalists_are_the_best_candidates_apart_from_every_better_one() -> None:
    base = next(make_space("default").bases())  # 12 layers

    def changed(*layers: int) -> object:  # the base with these layers made DeiT MLPs
        return base.replace(layers=[LayerSpec("mlp") if i in layers else x for i, x in enumerate(base.layers)])

    # best first: a sibling of the best (1 layer apart), one 3 apart, one 3 from the best but 2 from that
    ranked = [base, changed(0), changed(0, 1, 2), changed(1, 2, 3), changed(4, 5, 6, 7)]
    assert pick_finalists(ranked, 3, apart=3) == [0, 2, 4]
    assert pick_finalists(ranked, 2, apart=3) == [0, 2]
    assert pick_finalists(ranked, 3, apart=0) == [0, 1, 2]  # the plain top-k
    assert pick_finalists(ranked, 5, apart=3) == [0, 1, 2, 3, 4]  # too few apart: the best of the rest fill up
    assert pick_finalists(ranked, 4, apart=13) == [0, 1, 2, 3]


def test_finalists_follow_the_ranking_of_the_study() -> None:
    """Supernet candidates of made-up scores: by the supernet score the best scores are the
    finalists, by parameter count the largest designs, whatever their score."""
    from search.oneshot import enqueue_top_k
    from search.rank_by import RankBy, record
    from space.cost import target_cost

    space = space_from_dict({"base": {"embed_dim": 64, "num_heads": 2, "depth": 2},
                             "layers": {"ffn": ["mlp", "local"], "gamma": [1, 2, 4], "act": ["relu6"]}}, name="g")
    specs = list(space.grid())[:6]
    for signal, expected in (("supernet", lambda s: -scores[s.id]),  # noqa: B023 (this iteration's scores)
                             ("params", lambda s: -target_cost(s).params)):
        study = optuna.create_study(direction="maximize")
        scores = {}
        for k, spec in enumerate(specs):
            scores[spec.id] = float((7 * k) % 6)  # unrelated to the size
            cost = target_cost(spec)
            study.add_trial(optuna.trial.create_trial(
                params=space.to_params(spec), distributions={n: optuna.distributions.CategoricalDistribution(c)
                                                            for n, c in space.distributions().items()
                                                            if n in space.to_params(spec)},
                value=scores[spec.id], user_attrs={"status": "supernet", "spec": spec.to_json(), "spec_id": spec.id,
                                                   "params": cost.params, "flops": cost.flops}))
        record(study, RankBy(signal, "supernet"))
        top = enqueue_top_k(study, SearchSettings(strategy="oneshot", top_k=2, top_k_apart=0), exclude=set())
        want = sorted(specs, key=lambda s: (expected(s), target_cost(s).flops))[:2]
        assert [t.user_attrs["spec_id"] for _, t in top] == [s.id for s in want], signal


def test_scoring_ends_when_the_sampler_has_nothing_new_to_propose() -> None:
    """A space of four designs, the costliest over the budget: the others are scored, each once,
    then the proposer gives up instead of asking forever."""
    space = space_from_dict({"base": {"embed_dim": 64, "num_heads": 2, "depth": 2},
                             "layers": {"ffn": ["mlp"], "gamma": [1, 4]}}, name="four")
    costs = {spec.id: target_cost(spec).flops for spec in space.grid()}
    budget = Budget(max_flops=sorted(costs.values())[-2])
    feasible = {spec_id for spec_id, flops in costs.items() if flops <= budget.max_flops}
    assert len(costs) == 4 and len(feasible) == 3
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    proposer = Proposer(SearchSettings(budget=budget), study, DefineByRun(space, budget, ProxyProtocol(), {}, (1, 10)))
    scored = []
    while (candidate := proposer.next()) is not None:
        proposer.record(*candidate, accuracy=50.0, seconds=0.0)
        scored.append(candidate[1].id)
    assert proposer.exhausted and sorted(scored) == sorted(feasible)
    statuses = [t.user_attrs["status"] for t in study.trials]
    assert statuses[-SKIPS_IN_A_ROW:].count("supernet") == 0 and "infeasible" in statuses
    assert all(t.user_attrs["flops"] > budget.max_flops for t in study.trials if t.user_attrs["status"] == "infeasible")



def test_candidates_are_stored_one_transaction_each_and_queued_ones_filled(tmp_path) -> None:
    """The sampler asks an in-memory copy of the study; each finished candidate reaches the
    stored study in one commit, as the copy holds it, and a queued warm start is filled, not
    duplicated. A second proposer over the stored study (a resumed search) sees all of it."""
    space = space_from_dict({"base": {"embed_dim": 64, "num_heads": 2, "depth": 2},
                             "layers": {"ffn": ["mlp", "local"], "gamma": [1, 2, 4], "act": ["relu6", "hswish"]}},
                            name="small")
    budget = Budget()
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    warm = list(space.grid())[5]
    study.enqueue_trial(space.to_params(warm), user_attrs={"warm_start": "row"})
    commits = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda _: commits.append(1))
    define = DefineByRun(space, budget, ProxyProtocol(), {}, (1, 10))
    proposer = Proposer(SearchSettings(budget=budget), study, define)
    first = proposer.next()
    assert first[1] == warm  # the queued trial comes first
    proposer.record(*first, accuracy=40.0, seconds=0.0)
    filled = len(commits)
    for accuracy in range(10):
        proposer.record(*proposer.next(), accuracy=float(accuracy), seconds=0.0)
    closed = sum(proposer.skips.counts.values())  # repeats the sampler proposed, closed unscored
    assert len(commits) - filled == 10 + closed  # one commit a trial (asking the stored study: one a parameter)

    stored = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials
    assert len(stored) == 11 + closed and all(t.state == optuna.trial.TrialState.COMPLETE for t in stored)
    assert sum(t.user_attrs["status"] == "supernet" for t in stored) == 11
    assert stored[0].user_attrs["warm_start"] == "row" and stored[0].params == space.to_params(warm)
    assert stored[0].values == [40.0] and stored[0].user_attrs["spec_id"] == warm.id
    for kept, held in zip(stored, proposer.mirror.trials):
        assert (kept.params, kept.values, kept.user_attrs) == (held.params, held.values, held.user_attrs)
    resumed = Proposer(SearchSettings(budget=budget), study, define)
    assert resumed.scored == proposer.scored and len(resumed.mirror.trials) == len(stored) and not resumed.queued

# --- bad input: one line, exit 2 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """A finished supernet checkpoint of a tiny space that is not the default one."""
    tmp = tmp_path_factory.mktemp("other")
    protocol = ProxyProtocol(train_size=64, val_size=20, batch_size=32, precision="fp32", threads=1)
    space = space_from_dict({"base": {"embed_dim": 64, "num_heads": 2, "depth": 2},
                             "layers": {"ffn": ["mlp", "local"], "gamma": [1, 2]}}, name="other")
    data = ProxyData(protocol.data_config(), cache_dir=str(tmp / "cache"))
    train_supernet(space, protocol, data, epochs=1, checkpoint=tmp / "other.pt")
    return tmp / "other.pt"


@pytest.mark.parametrize("args, words", [
    (["--strategy", "evolve"], "strategy='evolve' is invalid; accepted: train, oneshot"),
    (["--strategy", "oneshot", "--backbone", "pvt_tiny", "--budget-flops", "2.2G"],
     "backbone='pvt_tiny' is invalid for --strategy oneshot"),
    (["--strategy", "oneshot", "--width-mult", "0.4"], "gives heads [3, 4] the proxy widths [76, 77]"),
    (["--strategy", "oneshot", "--top-k", "0"], "top_k=0 is invalid"),
    (["--strategy", "oneshot", "--supernet-sampling", "greedy"],
     "supernet_sampling='greedy' is invalid; accepted: fair, sandwich"),
    (["--strategy", "oneshot", "--supernet-checkpoint", "OTHER"], "was made with another space"),
])
def test_bad_oneshot_input_is_one_line_exit_2(tmp_path, capsys, other_checkpoint, args, words) -> None:
    args = [str(other_checkpoint) if a == "OTHER" else a for a in args]
    argv = ["--study", "b", "--results-dir", str(tmp_path), *TINY,
            *(["--budget-flops", "1.3G"] if "--budget-flops" not in args else []), *args]
    with pytest.raises(SystemExit) as exit_:
        run_search.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
