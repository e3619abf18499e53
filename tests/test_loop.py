"""Closing the loop: an exported design trains on a subset as it is, its run writes a reference
row (`result.yaml`), a folder of them is a reference set, and the audit and the search's
ranking read it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from imagenet.export import export_spec
from imagenet.recipe import TrainConfig
from imagenet.train import RunResult, main
from localvit import ArchSpec
from proxy.protocol import ProxyProtocol
from space.paper import PAPER_NAMED_SPECS
from space.references import load_references
from tests.test_train import imagenet  # noqa: F401  (the fixture: a 10-class ImageNet-layout folder)

REPO = Path(__file__).resolve().parents[1]
#: Three of the paper's designs at 32x32 with patch 8 (16 tokens), exported as for ImageNet (1000 classes).
DESIGNS = [PAPER_NAMED_SPECS[name].replace(img_size=32, patch_size=8)
           for name in ("II/hswish-eca", "IV/gamma2", "I/conv1x1-relu6-g4")]
#: Where the runs written by hand say they trained (a path only: nothing reads it).
SUBSET = Path("/data/imagenet-subset")
PROTOCOL = ProxyProtocol(dataset="fashion-mnist", train_size=200, val_size=100, epochs=1, batch_size=50)


def _train(design: ArchSpec, data: Path, folder: Path, epochs: int = 1) -> Path:
    job = export_spec(design, folder / design.id)
    assert main(["--config", str(job / "train.yaml"), "--data-dir", str(data), "--batch-size", "16", "--workers",
                 "0", "--device", "cpu", "--epochs", str(epochs), "--set", "data.crop_pct=1.0",
                 "--set", "run.model_ema=false"]) == 0
    return job / "train" / "result.yaml"


@pytest.fixture(scope="module")
def results(imagenet, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("exports")
    for design in DESIGNS:
        _train(design, imagenet, folder)
    return folder


def test_a_run_of_a_1000_class_export_on_a_10_class_folder_writes_a_reference_row(results, imagenet) -> None:  # noqa: F811
    design = DESIGNS[0]
    path = results / design.id / "train" / "result.yaml"
    data = yaml.safe_load(path.read_text())
    (row,) = data["rows"]
    source = row["source"]
    assert design.num_classes == 1000 and source["classes"] == 10 and source["trained_num_classes"] == 10
    assert source["dataset"] == imagenet.name and source["img_size"] == 32 and source["epochs"] == 1
    assert source["finished"] is True and source["epochs_done"] == 1 and source["train_images"] == 120
    trained = TrainConfig.load(path.parent / "config.yaml").model.spec  # what trained: the data's head
    assert trained.num_classes == 10 and trained.layers == design.layers and source["trained_spec_id"] == trained.id
    best = max(float(line.split(",")[3]) for line in (path.parent / "log.csv").read_text().splitlines()[1:])
    references = load_references(path)
    (ref,) = references.rows
    assert ref.spec == design and ref.accuracy == pytest.approx(best, abs=1e-3)  # the same design, its accuracy
    assert len(source["recipe_hash"]) == 10
    assert "imagenet-or-a-subset" in (results / design.id / "README.md").read_text()  # the loop's command


def _saved_study(storage: str, designs: list[ArchSpec], accuracies: list[float]) -> None:
    """A study as a search leaves it: trained trials of the designs, with their proxy top-1."""
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr("proxy_protocol", PROTOCOL.to_dict())
    study.set_user_attr("precision", {"requested": "auto", "resolved": "fp32", "cpu": "test"})
    for design, accuracy in zip(designs, accuracies):
        study.add_trial(optuna.trial.create_trial(value=accuracy, user_attrs={
            "status": "train", "full_fidelity": True, "spec_id": design.id, "spec": design.to_json(),
            "cpu_time_s": 10.0, "wall_time_s": 10.0}))


def _audit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "audit", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_a_folder_of_results_audits_from_saved_studies_and_the_search_ranks_by_it(results, tmp_path) -> None:
    references = load_references(results)
    assert len(references.rows) == 3 and references.name == results.name and "32x32, 1 epochs" in references.target
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _saved_study(storage, DESIGNS, [60.0, 50.0, 40.0])
    done = _audit("--references", str(results), "--from-study", "s", "--storage", storage, "--results-dir",
                  str(tmp_path), "--resamples", "200", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    audits = list(tmp_path.glob("audit-*/audit.json"))
    assert len(audits) == 1
    audit = json.loads(audits[0].read_text())
    assert audit["references"]["key"] == references.key and audit["references"]["n"] == 3
    assert {r["spec_id"]: r["target"] for r in audit["rows"]} == {r.spec.id: r.accuracy for r in references.rows}
    assert audit["default_signal"] and "params" in audit["signals"]
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3  # nothing was trained

    from search.rank_by import resolve
    from search.settings import SearchSettings

    settings = SearchSettings(study="x", results_dir=str(tmp_path), references=str(results), protocol=PROTOCOL)
    rank_by = resolve(settings)
    assert rank_by.signal == audit["default_signal"] and audit["study"] in rank_by.why
    assert f"on {results.name} (3 designs" in rank_by.why
    other = resolve(SearchSettings(study="x", results_dir=str(tmp_path / "none"), references=str(results),
                                   protocol=PROTOCOL))  # no audit of these rows there: parameter count
    assert other.signal == "params" and "no audit on" in other.why and "3 designs of" in other.why


def test_a_stopped_run_is_flagged_and_left_out(tmp_path) -> None:
    cfg = TrainConfig.for_spec(DESIGNS[1]).override({"schedule.epochs": 3})
    out = tmp_path / "folder" / "stopped"
    out.mkdir(parents=True)
    RunResult(DESIGNS[1].replace(num_heads=3), None, cfg, SUBSET, 10, 120, 35).write(out, 41.0, 1, 1)
    row = yaml.safe_load((out / "result.yaml").read_text())["rows"][0]
    assert row["source"]["finished"] is False and row["source"]["epochs_done"] == 1
    with pytest.raises(ValueError, match="no finished result"):
        load_references(tmp_path / "folder")
    assert len(load_references(tmp_path / "folder", include_unfinished=True).rows) == 1


def test_repeated_runs_of_a_design_are_one_row_with_their_mean(tmp_path) -> None:
    folder = tmp_path / "runs"
    for k, accuracy in enumerate((50.0, 54.0)):
        out = folder / f"seed{k}"
        out.mkdir(parents=True)
        cfg = TrainConfig.for_spec(DESIGNS[0]).override({"schedule.epochs": 1})
        RunResult(DESIGNS[0], None, cfg, SUBSET, 10, 120, 35).write(out, accuracy, 1, 1)
    (row,) = load_references(folder).rows
    assert row.accuracy == 52.0 and row.source["runs"] == 2 and row.source["accuracies"] == [50.0, 54.0]


@pytest.mark.parametrize("problem, words", [
    ("target", "mixes targets"), ("malformed", "accuracy='high' is invalid"),
])
def test_mixed_targets_and_a_malformed_row_are_one_line_naming_the_file(tmp_path, problem, words) -> None:
    folder = tmp_path / "mixed"
    for design in DESIGNS:
        out = folder / design.id
        out.mkdir(parents=True)
        cfg = TrainConfig.for_spec(design).override({"schedule.epochs": 1})
        RunResult(design, None, cfg, SUBSET, 10, 120, 35).write(out, 50.0, 1, 1)
    odd = folder / DESIGNS[2].id / "result.yaml"
    data = yaml.safe_load(odd.read_text())
    if problem == "target":
        data["rows"][0]["source"]["epochs"] = 300  # a run of another recipe
    else:
        data["rows"][0]["accuracy"] = "high"
    odd.write_text(yaml.safe_dump(data))
    done = _audit("--references", str(folder), "--results-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.count("\n") == 0 and str(odd) in line and words in line, line
    if problem == "target":
        assert "300 epochs" in line and "accepted: rows of one dataset, image size and epoch count" in line
