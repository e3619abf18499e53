"""The fidelity ladder: rungs of a protocol, their audits and the rung a search decides at."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from proxy.protocol import ProxyProtocol, at_rung, parse_rungs, protocol_at_rung, training_pool
from ranking.audits import SHIPPED_AUDITS, protocol_key
from ranking.evaluation import ProxyScore, score_audit
from ranking.ladder import (HEADLINE_PAIR, crossing, designs_markdown, ladder_for, ladder_markdown, ladder_rows,
                            trusted_rung, write_ladder)
from space.references import load_references

REPO = Path(__file__).resolve().parents[1]


def steps(protocol: ProxyProtocol) -> int:
    return protocol.train_size // protocol.batch_size * protocol.epochs


@pytest.mark.parametrize("rung", [2, 3, 10, 14, 15, 30, 100])
def test_a_rung_multiplies_the_steps_on_distinct_images_first(rung: int) -> None:
    base, pool = ProxyProtocol(), 58_000
    protocol = at_rung(base, rung, pool)
    images = min(base.train_size * rung, pool)
    assert protocol.train_size == images  # distinct images first, up to the pool
    assert protocol.epochs == (base.epochs if base.train_size * rung <= pool
                               else round(base.epochs * base.train_size * rung / pool))  # then epochs
    assert steps(protocol) / (rung * steps(base)) == pytest.approx(1, rel=0.1)
    # the warm-up keeps its share of the run
    assert protocol.warmup_epochs / protocol.epochs == pytest.approx(base.warmup_epochs / base.epochs)
    changed = {k for k, v in protocol.to_dict().items() if v != base.to_dict()[k]}
    assert changed <= {"train_size", "epochs", "warmup_epochs"}


def test_rung_one_is_the_protocol_and_bad_rungs_name_the_value() -> None:
    base = ProxyProtocol()
    assert at_rung(base, 1, 100) is base and protocol_at_rung(base, 1) is base
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"rung={bad!r} is invalid; accepted: a positive integer"):
            at_rung(base, bad, None)  # type: ignore[arg-type]
    assert parse_rungs("10, 1,3,3") == (1, 3, 10)
    for bad in ("", "0,1", "a,b", "1.5"):
        with pytest.raises(ValueError, match="accepted: positive integers separated by commas"):
            parse_rungs(bad)


def test_the_default_protocols_pool_is_the_train_files_less_validation() -> None:
    # fashion-rotations turns each of the 60,000 training items once; validation takes 2,000 of them
    assert training_pool(ProxyProtocol()) == 60_000 - ProxyProtocol().val_size
    assert training_pool(ProxyProtocol(dataset="fashion-pairs", img_size=56, patch_size=8)) is None
    assert protocol_at_rung(ProxyProtocol(), 10).train_size == 40_000
    assert protocol_at_rung(ProxyProtocol(), 30).train_size == 58_000


def _audit(rung: int, noise: float, base: ProxyProtocol, seed: int = 0) -> dict:
    """An audit of the paper's designs whose proxy is the target plus noise (less noise: a better rung)."""
    refs = load_references()
    rng = np.random.default_rng(seed)
    scores = {s: {r.spec.id: ProxyScore(r.accuracy + rng.normal(0, noise), 60.0 * rung, 61.0 * rung)
                  for r in refs.rows} for s in ("0", "1")}
    protocol = protocol_at_rung(base, rung) if rung > 1 else base
    result = score_audit(refs, scores, study=f"audit-r{rung}", protocol=protocol, n_resamples=300, rung=rung,
                         base_protocol=base)
    return result.to_dict()


def test_every_row_holds_every_signal_and_a_combinations_values_rescore_to_its_figures() -> None:
    audit = _audit(1, 1.0, ProxyProtocol())
    target = [row["target"] for row in audit["rows"]]
    for name in ("proxy+params", "proxy-params-rank", "params-then-proxy", "proxy, mean of 2 seeds", "params"):
        values = [row["signals"][name] for row in audit["rows"]]
        assert all(v is not None for v in values), name
        assert audit["signals"][name]["tau_b"] == pytest.approx(stats.kendalltau(values, target).statistic)
    # the fitted combination's row values are out of sample: they differ from the weight fitted on all rows
    weights = audit["signals"]["proxy+params"]["weights"]
    assert set(weights) - {"all"} == {"I", "II", "IV"}


def test_the_headline_gap_is_localvit_t_minus_deit_t() -> None:
    audit = _audit(1, 0.5, ProxyProtocol())
    by_id = {row["spec_id"]: row for row in audit["rows"]}
    local, deit = by_id[HEADLINE_PAIR["LocalViT-T"]], by_id[HEADLINE_PAIR["DeiT-T"]]
    assert (local["target"], deit["target"]) == (74.8, 72.2)  # the paper's Table II and I
    assert audit["headline_gap"]["target"] == pytest.approx(2.6)
    assert audit["headline_gap"]["proxy"] == pytest.approx(local["proxy_mean"] - deit["proxy_mean"])


def test_a_ladder_gathers_each_rungs_audit_and_trusts_the_lowest_that_beats_counting(tmp_path) -> None:
    base = ProxyProtocol(train_size=3000)  # a protocol no shipped audit holds
    audits = {1: _audit(1, 3.0, base), 3: _audit(3, 0.01, base, seed=1), 10: _audit(10, 0.001, base, seed=2)}
    for audit in audits.values():
        (tmp_path / audit["study"]).mkdir()
        (tmp_path / audit["study"] / "audit.json").write_text(json.dumps(audit))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "audit.json").write_text(json.dumps({**audits[3], "base_protocol_key": "x"}))
    ladder = ladder_for(protocol_key(base), tmp_path)
    assert list(ladder) == [1, 3, 10]
    assert [a["protocol_key"] for a in ladder.values()] == [protocol_key(protocol_at_rung(base, r)) for r in (1, 3, 10)]
    expected = next((r for r in (1, 3, 10) if audits[r]["default_signal"] not in ("params", "flops")), None)
    assert trusted_rung(ladder) == expected
    assert expected is not None  # almost noiseless proxies beat counting by the audit's own rule
    rows = ladder_rows(ladder)
    for row, audit in zip(rows, audits.values()):
        assert row["measured"]["tau_b"] == audit["signals"]["proxy"]["tau_b"]
        assert row["params"]["tau_b"] == audit["signals"]["params"]["tau_b"]
        assert row["cpu_s_per_candidate"] == pytest.approx(60.0 * row["rung"])
        assert row["steps"] == steps(protocol_at_rung(base, row["rung"]))
    page = write_ladder(ladder, tmp_path / "ladder", "t")
    assert (tmp_path / "ladder" / "ladder.png").stat().st_size > 1000
    assert f"Rung {expected} is the lowest" in page.read_text()
    assert json.loads((tmp_path / "ladder" / "ladder.json").read_text())["rows"][0]["rung"] == 1


def test_the_trend_is_a_least_squares_line_in_log_rung() -> None:
    rows = [{"rung": r, "measured": {"tau_b": t}, "params": {"tau_b": 0.78}}
            for r, t in ((1, 0.5), (3, 0.6), (10, 0.65))]
    fit = stats.linregress(np.log10([1, 3, 10]), [0.5, 0.6, 0.65])
    trend = crossing(rows)
    assert trend["slope_per_decade"] == pytest.approx(fit.slope)
    assert math.log10(trend["rung"]) == pytest.approx((0.78 - fit.intercept) / fit.slope)
    falling = [{**r, "measured": {"tau_b": 1 - r["measured"]["tau_b"]}} for r in rows]
    assert crossing(falling)["rung"] is None and crossing(rows[:1]) is None


def test_the_shipped_default_protocol_is_rung_one_of_its_ladder() -> None:
    shipped = json.loads(SHIPPED_AUDITS.read_text())
    key = protocol_key(ProxyProtocol())
    ladder = ladder_for(key)
    assert ladder[1] == shipped[key]
    text = ladder_markdown(ladder_rows(ladder), "t")
    assert "| 1x | 4,000 x 3 (93) |" in text and "params (free)" in text
    designs = designs_markdown(ladder).splitlines()
    assert designs[2].startswith("| design | target | params (M) | rung 1, seeds 0, 1 |")
    assert designs[2].count("| rung ") == len(ladder)  # a column a shipped rung
    rows = sorted(shipped[key]["rows"], key=lambda r: -r["target"])
    assert len(designs) == 4 + len(rows)
    for line, row in zip(designs[4:], rows):  # best on ImageNet first, each seed's proxy score
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["name"] and float(cells[1]) == row["target"]
        assert [float(v) for v in cells[3].split(" / ")] == [round(row["proxy"][s], 1) for s in ("0", "1")]


def test_bad_rungs_are_one_line_exit_2(capsys, tmp_path) -> None:
    from audit.runner import main

    for args in (["--rungs", "0,3"], ["--rungs", "3", "--from-study", "x"]):
        with pytest.raises(SystemExit) as stopped:
            main([*args, "--results-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and "Traceback" not in err, err
        assert err.strip().count("\n") == 0 and "rungs" in err


def _write_ladder(folder: Path, base: ProxyProtocol) -> dict[int, dict]:
    audits = {1: _audit(1, 5.0, base), 2: _audit(2, 0.001, base, seed=1)}  # rung 2 ranks almost as ImageNet
    assert audits[1]["default_signal"] == "params" and audits[2]["default_signal"] not in ("params", "flops")
    for audit in audits.values():
        (folder / audit["study"]).mkdir()
        (folder / audit["study"] / "audit.json").write_text(json.dumps(audit))
    return audits


def test_the_finalists_rank_by_their_values_at_the_trusted_rung(tmp_path) -> None:
    import optuna

    from search.rank_by import promotion_rung, record, resolve
    from search.report import Standing
    from search.settings import SearchSettings
    from space.cost import target_cost

    base = ProxyProtocol(train_size=300)
    settings = SearchSettings(study="s", results_dir=str(tmp_path), protocol=base, max_rung="auto")
    assert promotion_rung(settings) == 1  # nothing audited beyond rung 1 in this folder, nor shipped
    audits = _write_ladder(tmp_path, base)
    assert promotion_rung(settings) == 2 and promotion_rung(SearchSettings(max_rung="5")) == 5
    study = optuna.create_study(direction="maximize")
    rows = load_references().rows[:4]
    for row, at_one in zip(rows, (70.0, 69.0, 68.0, 67.0)):
        cost = target_cost(row.spec)
        study.add_trial(optuna.trial.create_trial(value=at_one, user_attrs={
            "status": "train", "full_fidelity": True, "spec": row.spec.to_json(), "spec_id": row.spec.id,
            "flops": cost.flops, "params": cost.params}))
    # rung 1 is not trusted: without a promotion the ranking is the rung-1 audit's (params)
    assert resolve(settings).signal == "params" and resolve(settings).rung == 1
    promotion = {"rung": 2, "values": {"1": 80.0, "2": 81.0}, "baselines": {}, "finalists": 2,
                 "protocol_key": protocol_key(protocol_at_rung(base, 2))}
    rank_by = resolve(settings, None, promotion)
    assert rank_by.rung == 2 and rank_by.signal == audits[2]["default_signal"] and "rung 2" in rank_by.why
    record(study, rank_by)
    standing = Standing.of(study)
    if rank_by.signal == "proxy":  # the best at rung 2 wins, though trial 0 led at rung 1
        assert [t.number for t in standing.candidates[:2]] == [2, 1]
    assert {t.number for t in standing.candidates[:2]} == {1, 2}  # the finalists rank before the others
    # promoted to a rung that its audit does not trust: auto ranks as rung 1's audit says
    assert resolve(settings, None, {**promotion, "rung": 3}).rung == 1


@pytest.mark.slow
def test_a_search_takes_its_finalists_to_the_trusted_rung_and_ranks_them_there(tmp_path) -> None:
    import optuna

    from search.rank_by import promotion_rung
    from search.report import Standing
    from search.settings import SearchSettings

    assert promotion_rung(SearchSettings()) == 1  # no shipped rung beats counting: the default promotes nothing
    tiny = ["--dataset", "fashion-mnist", "--train-size", "200", "--val-size", "100", "--epochs", "1",
            "--batch-size", "50"]
    base = ProxyProtocol(dataset="fashion-mnist", train_size=200, val_size=100, epochs=1, batch_size=50)
    audits = _write_ladder(tmp_path, base)
    result = subprocess.run([sys.executable, str(REPO / "run_search.py"), "--study", "s", "--results-dir", ".",
                             *tiny, "--budget-flops", "1.3G", "--trials", "4", "--confirm-seeds", "0",
                             "--finalists", "2", "--export-top", "1"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    promotion = study.user_attrs["promotion"]
    assert promotion["rung"] == 2 and promotion["protocol_key"] == protocol_key(protocol_at_rung(base, 2))
    searched = [t for t in study.trials if t.user_attrs.get("status") == "train" and t.user_attrs.get("full_fidelity")
                and not t.user_attrs.get("baseline")]
    by_proxy = sorted(searched, key=lambda t: (-t.values[0], t.user_attrs["flops"], t.number))[:2]
    assert set(promotion["values"]) == {str(t.number) for t in by_proxy}
    assert set(promotion["baselines"]) == {"LocalViT-T"}
    standing = Standing.of(study)
    assert standing.rank_by.rung == 2 and standing.rank_by.signal == audits[2]["default_signal"]
    if standing.rank_by.signal == "proxy":  # the finalist best at rung 2 is the best found
        flops = {str(t.number): t.user_attrs["flops"] for t in searched}
        best = min(promotion["values"], key=lambda n: (-promotion["values"][n], flops[n], int(n)))  # ties: fewer FLOPs
        assert standing.best.number == int(best)
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "Trained again at rung 2" in summary and "ranked there" in summary
    assert "rung 2" in summary.split("- ranking signal:")[1].split("\n")[0]
    ladder = summary.split("- the fidelity ladder")[1].split("\n")[0]
    assert ("no rung decided" if standing.rank_by.signal in ("params", "flops") else
            f"rung 2 decided: {standing.rank_by.signal} ranked the finalists there (2 of them") in ladder
