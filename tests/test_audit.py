"""The ranking-fidelity audit: rank statistics against scipy, reference files, design axes, and a
tiny audit end to end through Ray and Optuna, killed and resumed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from scipy import stats

from localvit.spec import ArchSpec
from proxy.protocol import ProxyProtocol
from proxy.zero_cost import ZERO_COST
from ranking.audits import protocol_key
from ranking.evaluation import AXES, ProxyScore, pair_axis, score_audit
from ranking.statistics import (bootstrap_interval, kendall_tau_b, pair_agreement, spearman, spearman_rows,
                                tau_b_rows, top_k_overlap)
from space.cost import target_cost
from space.paper import PAPER_NAMED_SPECS
from space.references import PAPER_IMAGENET, load_references, references_from_dict
from space.space import make_space
from tests.conftest import kill_family

REPO = Path(__file__).resolve().parents[1]
# Fixed data with ties on both sides (the proxy often ties at 0.05-point resolution; the paper at 0.1).
PROXY = [78.5, 79.4, 76.6, 65.7, 78.5, 80.1, 33.2, 77.0, 79.4, 70.3, 74.4, 74.4]
TARGET = [74.8, 75.0, 73.7, 66.2, 74.8, 75.8, 72.2, 72.9, 74.5, 70.1, 72.5, 73.1]


# --- statistics, against scipy -------------------------------------------------------------------

def test_kendall_tau_b_and_spearman_equal_scipy_with_ties() -> None:
    assert kendall_tau_b(PROXY, TARGET) == pytest.approx(stats.kendalltau(PROXY, TARGET).statistic, abs=1e-12)
    assert spearman(PROXY, TARGET) == pytest.approx(stats.spearmanr(PROXY, TARGET).statistic, abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 5, 15).astype(float), rng.integers(0, 4, 15).astype(float)  # many ties
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_equals_scipy_paired_percentile_bootstrap() -> None:
    for statistic, reference in ((tau_b_rows, stats.kendalltau), (spearman_rows, stats.spearmanr)):
        ours = bootstrap_interval(statistic, PROXY, TARGET, n_resamples=2000, seed=11)
        theirs = stats.bootstrap((PROXY, TARGET), lambda a, b, ref=reference: ref(a, b).statistic, paired=True,
                                 vectorized=False, n_resamples=2000, method="percentile",
                                 rng=np.random.default_rng(11)).confidence_interval
        assert ours == pytest.approx((theirs.low, theirs.high), abs=1e-12)
        assert ours[0] < reference(PROXY, TARGET).statistic < ours[1]


def test_pair_agreement_and_top_k_by_hand() -> None:
    x, y = [3.0, 2.0, 2.0, 1.0], [4.0, 3.0, 1.0, 1.0]
    # (0,1) alike, (1,2) proxy tie -> half, (2,3) target tie -> not counted, (0,3) alike
    assert pair_agreement(x, y, [(0, 1), (1, 2), (2, 3), (0, 3)]) == (2.5, 3)
    assert top_k_overlap(x, y, 1) == 1.0 and top_k_overlap([1, 2, 3], [3, 2, 1], 1) == 0.0
    with pytest.raises(ValueError, match="k=5"):
        top_k_overlap(x, y, 5)


# --- reference sets ------------------------------------------------------------------------------

def test_shipped_references_are_the_papers_18_designs_of_tables_i_ii_iv() -> None:
    refs = load_references()
    assert len(refs.rows) == 18 and len({r.spec for r in refs.rows}) == 18
    for row in refs.rows:  # each spec is the one space/paper.py builds for that row (checked against params)
        assert row.spec == PAPER_NAMED_SPECS[row.name], row.name
        assert row.source["table"] == row.name.split("/")[0]
    acc = {r.name: r.accuracy for r in refs.rows}
    assert acc["IV/gamma1"] < acc["IV/gamma2"] < acc["IV/gamma3"] < acc["II/hswish"]  # the paper's gamma order
    assert acc["I/deit-mlp-g4"] < acc["I/local-relu6-g4"] and acc["II/hswish-se4"] == 75.8
    space = make_space(str(PAPER_IMAGENET))  # a reference file is also a space a grid sampler walks
    assert space.size() == 18 and set(space.grid()) == {r.spec for r in refs.rows}


def _file(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "refs.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "target": "ImageNet-100", "rows": rows}))
    return path


def test_a_bad_reference_row_is_one_error_naming_the_row(tmp_path) -> None:
    good = {"name": "a", "accuracy": 70.0, "spec": PAPER_NAMED_SPECS["I/deit-mlp-g4"].to_dict()}
    bad_spec = {"name": "broken", "accuracy": 71.0, "spec": {"embed_dim": 192, "layers": [{"ffn": "lstm"}]}}
    with pytest.raises(ValueError, match=r"row 2 \('broken'\): spec is invalid: ffn='lstm'"):
        load_references(_file(tmp_path, [good, bad_spec]))
    swin = ArchSpec.uniform(PAPER_NAMED_SPECS["I/deit-mlp-g4"].layers[0], depth=12, backbone="swin_tiny")
    outside = {"name": "swin", "accuracy": 80.0, "spec": swin.to_dict()}
    with pytest.raises(ValueError, match=r"row 2 \('swin'\): spec \w+ is outside backbone 'deit_tiny'"):
        load_references(_file(tmp_path, [good, outside]))
    small = PAPER_NAMED_SPECS["I/deit-mlp-g4"].replace(embed_dim=384, num_heads=6)
    with pytest.raises(ValueError, match=r"row 2 \('wide'\).*outside backbone"):
        load_references(_file(tmp_path, [good, {"name": "wide", "accuracy": 1, "spec": small.to_dict()}]))
    with pytest.raises(ValueError, match=r"row 2 \('b'\): its spec is the design of row 'a'"):
        load_references(_file(tmp_path, [good, {**good, "name": "b"}]))
    with pytest.raises(ValueError, match=r"row 1 \('a'\): accuracy='high' is invalid"):
        load_references(_file(tmp_path, [{**good, "accuracy": "high"}]))
    with pytest.raises(ValueError, match="row 1.*key 'top1' is invalid"):
        references_from_dict({"rows": [{**good, "top1": 3}]})
    spec_file = tmp_path / "arch.json"  # a spec by path, relative to the reference file
    PAPER_NAMED_SPECS["II/hswish"].save(spec_file)
    refs = load_references(_file(tmp_path, [good, {"name": "p", "accuracy": 74.4, "spec": "arch.json"}]))
    assert refs.rows[1].spec == PAPER_NAMED_SPECS["II/hswish"] and refs.name == "mine"


def test_design_axes_of_the_papers_pairs_counted_by_hand() -> None:
    specs = {r.name: r.spec for r in load_references().rows}
    axes = {a: set() for a in AXES}
    for a, b in combinations(specs, 2):
        axis = pair_axis(specs[a], specs[b])
        if axis:
            axes[axis].add(frozenset((a, b)))
    # FFN type: DeiT MLP / 1x1 conv / locality, each gamma of Table I (the heads differ too: 3 vs 4), and
    # the DeiT MLP against every locality FFN of Table II (its GELU and lack of SE are not choices)
    table_ii = ["II/hswish", "II/hswish-eca", "II/hswish-se192", "II/hswish-se96", "II/hswish-se48", "II/hswish-se4"]
    assert axes["ffn type"] == {frozenset(p) for g in ("g4", "g6") for p in combinations(
        [f"I/deit-mlp-{g}", f"I/conv1x1-relu6-{g}", f"I/local-relu6-{g}"], 2)} | {
        frozenset(("I/deit-mlp-g4", name)) for name in table_ii}
    # gamma: Table I's three FFN types at 4 vs 6; Table IV's 1-4 without SE and with 4 SE channels
    no_se = ["IV/gamma1", "IV/gamma2", "IV/gamma3", "II/hswish"]
    with_se = ["IV/gamma1-se4", "IV/gamma2-se4", "IV/gamma3-se4", "II/hswish-se192"]
    expected = {frozenset((f"I/{t}-g4", f"I/{t}-g6")) for t in ("deit-mlp", "conv1x1-relu6", "local-relu6")}
    expected |= {frozenset(p) for group in (no_se, with_se) for p in combinations(group, 2)}
    assert axes["gamma"] == expected
    within_iv = {frozenset((f"IV/gamma{g}", f"IV/gamma{g}-se4")) for g in (1, 2, 3)}
    assert axes["channel attention"] == {frozenset(p) for p in combinations(table_ii, 2)} | within_iv
    assert axes["activation"] == {frozenset(("I/local-relu6-g4", "II/hswish"))}
    placed = ArchSpec(layers=specs["II/hswish-se192"].layers[:4] + specs["I/deit-mlp-g4"].layers[4:],
                      embed_dim=192, num_heads=4)
    assert pair_axis(placed, specs["II/hswish-se192"]) == "placement"
    assert pair_axis(specs["I/deit-mlp-g4"], specs["IV/gamma1"]) is None  # FFN type and gamma at once


def test_score_audit_uses_the_mean_over_seeds_and_reports_the_ceiling() -> None:
    refs = load_references()
    rng = np.random.default_rng(0)
    seed0 = {r.spec.id: ProxyScore(r.accuracy + rng.normal(0, 1), 120.0, 125.0, "bf16") for r in refs.rows}
    seed1 = {r.spec.id: ProxyScore(r.accuracy + rng.normal(0, 1), 100.0, 110.0, "bf16")
             for r in refs.rows[1:]}  # one design missing in seed 1: its score is seed 0's alone
    result = score_audit(refs, {"0": seed0, "1": seed1}, study="t", protocol=ProxyProtocol(), n_resamples=500)
    mean = [(seed0[r.spec.id].accuracy + seed1[r.spec.id].accuracy) / 2 if r.spec.id in seed1
            else seed0[r.spec.id].accuracy for r in refs.rows]
    target = [r.accuracy for r in refs.rows]
    assert result.agreement.kendall_tau_b == pytest.approx(stats.kendalltau(mean, target).statistic)
    both = [(seed0[k].accuracy, seed1[k].accuracy) for k in seed1]
    assert result.seed_to_seed.kendall_tau_b == pytest.approx(stats.kendalltau(*zip(*both)).statistic)
    assert result.axes["gamma"]["pairs"] == 15 and 0 <= result.axes["gamma"]["share"] <= 1
    assert result.cpu_s_per_candidate == pytest.approx((120 * 18 + 100 * 17) / 35)  # one training's mean
    unrecorded = {k: ProxyScore(p.accuracy, None, 500.0, "bf16") for k, p in seed1.items()}  # an older study
    result = score_audit(refs, {"0": seed0, "1": unrecorded}, study="t", protocol=ProxyProtocol(), n_resamples=50)
    assert result.cpu_s_per_candidate == 120 and result.rows[1]["cpu_s"] == 120  # not its wall time
    with pytest.raises(ValueError, match="2 of the 18 reference designs"):
        score_audit(refs, {"0": dict(list(seed0.items())[:2])}, study="t", protocol=ProxyProtocol())


def test_protocol_key_ignores_seed_and_threads_but_not_what_is_measured() -> None:
    p = ProxyProtocol()
    assert protocol_key(p) == protocol_key(p.replace(seed=5, threads=2, data_dir="/x"))
    assert protocol_key(p) != protocol_key(p.replace(epochs=6)) != protocol_key(p.replace(precision="fp32"))


# --- end to end ------------------------------------------------------------------------------------

def _completed(db: Path) -> int:
    try:
        return sum(1 for s in optuna.get_all_study_summaries(f"sqlite:///{db}")
                   for t in optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}").trials
                   if t.state == optuna.trial.TrialState.COMPLETE)
    except Exception:  # the file exists before its schema does
        return 0


def test_tiny_audit_end_to_end_killed_and_resumed_trains_nothing_twice(tmp_path) -> None:
    names = ["I/deit-mlp-g4", "IV/gamma1", "II/hswish-se4"]
    refs = _file(tmp_path, [{"name": n, "accuracy": a, "spec": PAPER_NAMED_SPECS[n].to_dict()}
                            for n, a in zip(names, (72.2, 65.9, 75.8))])
    cmd = [sys.executable, "-m", "audit", "--references", str(refs), "--study", "a", "--results-dir",
           str(tmp_path), "--seeds", "0", "1", "--train-size", "200", "--val-size", "100", "--epochs", "1",
           "--batch-size", "50", "--resamples", "300"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    err = tmp_path / "first-run.err"  # what it said, should it end before the kill
    with open(err, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink, cwd=tmp_path, env=env,
                                start_new_session=True)
    db = tmp_path / "a" / "study.db"
    deadline = time.time() + 300
    while time.time() < deadline and _completed(db) < 2 and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None and _completed(db) >= 2, \
        f"the audit did not get going, or ended before the kill (exit {proc.poll()}): {err.read_text()[-2000:]}"
    kill_family(proc)  # the driver and the Ray processes it started
    storage = f"sqlite:///{db}"
    before = {(s.study_name, t.user_attrs["spec_id"]): t.values
              for s in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE}

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    studies = {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
               for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == {"a-s0", "a-s1"}
    for name, study in studies.items():
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        done = [t for t in complete if t.user_attrs["status"] == "train"]
        specs = [t.user_attrs["spec_id"] for t in done]
        assert sorted(specs) == sorted(PAPER_NAMED_SPECS[n].id for n in names)  # each design once, none twice
        # a proposal of a design trained already is closed with its values, never trained
        assert all(t.user_attrs["status"] == "duplicate" and "epochs_trained" not in t.user_attrs
                   for t in complete if t not in done)
        assert all(t.user_attrs["precision"] in ("bf16", "fp32") and t.user_attrs["cpu_time_s"] > 0 for t in done)
        assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        for t in done:  # what finished before the kill was kept as it was
            assert before.get((name, t.user_attrs["spec_id"]), t.values) == t.values
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    proxy = {r["name"]: r["proxy_mean"] for r in report["rows"]}
    for row in report["rows"]:  # the report's figures are the studies' trial values
        per_seed = {s: next(t.values[0] for t in studies[f"a-s{s}"].trials
                            if t.state == optuna.trial.TrialState.COMPLETE
                            and t.user_attrs["spec_id"] == row["spec_id"])
                    for s in ("0", "1")}
        assert row["proxy"] == per_seed and row["proxy_mean"] == pytest.approx(sum(per_seed.values()) / 2)
    target = [r["target"] for r in report["rows"]]
    assert report["agreement"]["kendall_tau_b"] == pytest.approx(
        stats.kendalltau([proxy[r["name"]] for r in report["rows"]], target).statistic)
    assert report["seed_to_seed"] is not None and report["precision"]["resolved"] in ("bf16", "fp32")
    assert (tmp_path / "a" / "audit.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "a" / "audit.md").read_text()
    assert "Kendall tau-b" in markdown and "seed 0 vs seed 1 (the ceiling)" in markdown
    assert "Traceback" not in result.stdout + result.stderr
    # every row holds every signal's value, and the audit names the default ranking
    for row in report["rows"]:
        assert row["signals"]["params"] == target_cost(PAPER_NAMED_SPECS[row["name"]]).params
        assert set(row["signals"]) == set(report["signals"])  # combinations and the seeds' mean included
        assert row["signals"]["proxy"] == row["proxy"]["0"]
    assert report["default_signal"] in ("params", "proxy", "proxy+params", "proxy-params-rank", "params-then-proxy")
    assert {"params", "flops", "proxy", "proxy, mean of 2 seeds", "proxy+params"} <= set(report["signals"])
    assert report["signals"]["proxy+params"]["fitting"] == "leave-one-out"  # the rows name no table

    # scored again from the saved studies: nothing is trained, the same proxy figures come out
    trials_before = {name: len(study.trials) for name, study in studies.items()}
    rescored = subprocess.run([sys.executable, "-m", "audit", "--references", str(refs), "--study", "b",
                               "--results-dir", str(tmp_path), "--from-study", "a-s0", "--from-study", "a-s1",
                               "--storage", storage, "--resamples", "300"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
            for s in optuna.get_all_study_summaries(storage)} == trials_before
    again = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert [r["proxy"] for r in again["rows"]] == [r["proxy"] for r in report["rows"]]
    assert again["signals"]["params"] == report["signals"]["params"]
    assert not (tmp_path / "b" / "study.db").exists() and "Ray" not in rescored.stdout


def test_audit_bad_input_is_one_line_exit_2(tmp_path) -> None:
    bad = _file(tmp_path, [{"name": "x", "accuracy": 1.0, "spec": {"layers": [{"ffn": "lstm"}]}}])
    result = subprocess.run([sys.executable, "-m", "audit", "--references", str(bad), "--results-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "row 1 ('x')" in result.stderr


def test_a_search_summary_names_the_audit_of_its_protocol(tmp_path) -> None:
    from ranking.audits import audit_for, describe_audit
    from ranking.evaluation import write_audit

    refs = load_references()
    scores = {r.spec.id: ProxyScore(r.accuracy + i % 3, 60.0, 60.0, "fp32") for i, r in enumerate(refs.rows)}
    protocol = ProxyProtocol(epochs=7, seed=3)  # a protocol the project never audited
    assert audit_for(protocol, tmp_path) is None and describe_audit(None).startswith("not audited")
    result = score_audit(refs, {"3": scores}, study="mine", protocol=protocol, n_resamples=200)
    write_audit(result, tmp_path / "mine")
    found = audit_for(protocol.replace(seed=0, threads=2), tmp_path)  # the seed is not part of the protocol
    assert found is not None and found["study"] == "mine"
    line = describe_audit(found)
    assert f"Kendall tau-b {result.agreement.kendall_tau_b:.2f}" in line and "paper-imagenet (18 designs" in line
    assert audit_for(protocol.replace(epochs=8), tmp_path) is None


def test_a_oneshot_summary_cites_the_supernets_audit_against_imagenet(tmp_path) -> None:
    from ranking.audits import supernet_imagenet_audit
    from ranking.evaluation import write_audit

    checkpoint = tmp_path / ".supernets" / "abc123.pt"
    assert supernet_imagenet_audit({"path": str(checkpoint)}) is None and supernet_imagenet_audit(None) is None
    refs = load_references()
    scores = {r.spec.id: ProxyScore(r.accuracy - i % 4, 1.0, 1.0, "bf16") for i, r in enumerate(refs.rows)}
    result = score_audit(refs, {"0": scores}, study="supernet abc123", protocol=ProxyProtocol(), n_resamples=200)
    assert result.references["path"] == "space/references/paper_imagenet.yaml"  # no folder of this machine
    write_audit(result, tmp_path / ".supernets" / "abc123.paper-audit")  # where studies.supernet_audit writes it
    line = supernet_imagenet_audit({"path": str(checkpoint)})
    assert line is not None and f"Kendall tau-b {result.agreement.kendall_tau_b:.2f}" in line


def test_a_oneshot_summary_cites_the_projects_audit_of_a_supernet_of_the_same_key(tmp_path, monkeypatch) -> None:
    import ranking.audits as report

    shipped = tmp_path / "audited_supernets.json"
    shipped.write_text(json.dumps({"abc123": {"created": "2026-12-03", "stand_alone": {"summary": "tau-b 0.70"}}}))
    monkeypatch.setattr(report, "SHIPPED_SUPERNET_AUDITS", shipped)
    checkpoint = str(tmp_path / "elsewhere" / "abc123.pt")  # a new results dir: nothing beside it
    line = report.ranking_audit({"path": checkpoint, "key": "abc123"})
    assert line.startswith("tau-b 0.70") and "the project's audit of a supernet of the same key" in line
    assert report.ranking_audit({"path": checkpoint, "key": "def456"}).startswith("none yet")
    assert report.supernet_imagenet_audit({"path": checkpoint, "key": "abc123"}) is None  # not shipped


def test_a_oneshot_summary_says_when_the_search_scored_otherwise_than_its_audit(tmp_path, monkeypatch) -> None:
    import ranking.audits as report

    shipped = tmp_path / "audited_supernets.json"
    audit = {"summary": "tau-b 0.64", "recalibration_images": 128, "score_images": 250}
    shipped.write_text(json.dumps({"abc123": {"created": "2026-12-03", "stand_alone": audit}}))
    monkeypatch.setattr(report, "SHIPPED_SUPERNET_AUDITS", shipped)
    supernet = {"path": str(tmp_path / "abc123.pt"), "key": "abc123"}
    same = report.ranking_audit(supernet, {"recalibration_images": 128, "score_images": 250})
    assert "scored otherwise" not in same
    other = report.ranking_audit(supernet, {"recalibration_images": 128, "score_images": 0})
    assert "scored otherwise (score_images 0)" in other and "recalibration_images" not in other


def test_shipped_audits_name_their_reference_file_relative_to_the_project() -> None:
    from ranking.audits import SHIPPED_AUDITS, SHIPPED_SUPERNET_AUDITS

    shipped = json.loads(SHIPPED_AUDITS.read_text())
    paths = [a["references"]["path"] for a in shipped.values()]
    paths += [e["imagenet"]["references"]["path"] for e in json.loads(SHIPPED_SUPERNET_AUDITS.read_text()).values()]
    assert paths and all(p == "space/references/paper_imagenet.yaml" for p in paths), paths


def test_the_default_one_shot_supernet_has_a_shipped_audit() -> None:
    """The default space, proxy protocol, epochs and sampling give the key whose audit ships:
    changing any of them without auditing again fails here."""
    from proxy.supernet import space_supernet, training_key
    from ranking.audits import SHIPPED_SUPERNET_AUDITS
    from search.settings import SearchSettings
    from space.space import make_space

    settings, space = SearchSettings(), make_space("default")
    supernet = space_supernet(space, settings.protocol, (1, 40))  # fashion-rotations: 40 classes
    key = training_key(space, supernet, settings.protocol, settings.supernet_epochs, settings.supernet_sampling)
    entry = json.loads(SHIPPED_SUPERNET_AUDITS.read_text())[key["digest"]]
    assert entry["stand_alone"]["n"] >= 30 and entry["imagenet"]["references"]["n"] == 18
    # and it scored candidates as a default search does
    assert (entry["stand_alone"]["recalibration_images"], entry["stand_alone"]["score_images"]) == \
        (settings.recalibration_images, settings.score_images)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """A nested figure as {path: number or text}, CPU times left out (they are measured, not computed)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() if "cpu_s" not in key and key != "created"
                for k, v in _leaves(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}[{i}]").items()}
    return {path: value}


@pytest.mark.slow
def test_the_shipped_audits_rescored_from_their_rows_give_their_figures_again() -> None:
    """Every figure of ranking/audited_*.json follows from its rows with today's statistics (the
    zero-cost values as the rows hold them): intervals, buckets, regrets, agreements (minutes)."""
    from proxy.zero_cost import ZeroCostScore
    from ranking.audits import SHIPPED_AUDITS, SHIPPED_SUPERNET_AUDITS
    from ranking.evaluation import scores_from_rows

    audits = [(a, "proxy") for a in json.loads(SHIPPED_AUDITS.read_text()).values()]
    audits += [(e["imagenet"], "supernet") for e in json.loads(SHIPPED_SUPERNET_AUDITS.read_text()).values()
               if "imagenet" in e]
    assert len(audits) >= 4
    for audit, measured in audits:
        zero_cost = {row["spec_id"]: {name: ZeroCostScore(value, 0.0, row.get("undefined", {}).get(name, ""))
                                      for name, value in row["signals"].items() if name in ZERO_COST}
                     for row in audit["rows"]}
        again = score_audit(load_references(REPO / audit["references"]["path"]), scores_from_rows(audit["rows"]),
                            study=audit["study"], protocol=ProxyProtocol.from_dict(audit["protocol"]),
                            precision=audit["precision"], measured=measured, zero_cost=zero_cost).to_dict()
        shipped, computed = _leaves(audit), _leaves(again)
        assert shipped.keys() == computed.keys()
        for key, value in shipped.items():
            assert computed[key] == (pytest.approx(value, abs=1e-12, nan_ok=True) if isinstance(value, float)
                                     else value), key


def test_a_seed_whose_designs_still_train_in_other_drivers_is_left_to_them(monkeypatch) -> None:
    from types import SimpleNamespace

    from audit import runner
    from search.driver import Trained

    elsewhere = {0: 0, 1: 2}  # seed 1's study: two designs still train in another driver
    monkeypatch.setattr(runner, "train_trials", lambda settings, plan, cluster: Trained(0, elsewhere[settings.seed]))
    monkeypatch.setattr(runner, "read_scores", lambda study: {"a": study})
    plans = [(SimpleNamespace(seed=seed, study=f"s{seed}"), SimpleNamespace(space=make_space("paper"), study=seed),
              None) for seed in (0, 1)]
    assert runner.train_references(plans) == {"0": {"a": 0}}  # seed 1 is the other driver's to finish
