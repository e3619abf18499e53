"""Export of found architectures as ImageNet training jobs (imagenet.export, imagenet.recipe)."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import optuna
import pytest
import yaml

from localvit import ArchSpec, LayerSpec, build_model, localvit_spec, proxy_spec
from imagenet.export import export_spec
from imagenet.export import main as export_spec_main
from search.export import export_trials, load_study, trial_provenance
from search.export import main as export_study_main
from search.optuna_adapter import set_system_attr
from search.selection import select_trials
from imagenet.recipe import TrainConfig, to_timm_args
from space.cost import target_cost
from tests.conftest import FIXTURES, fvcore_cost

TIMM_ARGS = FIXTURES / "timm_train_args.txt"

# (ffn, act, attn, se_ratio, gamma, proxy top-1, full fidelity, baseline name, constraint)
TRIALS = [
    ("mlp", None, "none", None, 4.0, 70.0, True, "deit_tiny", 0.0),
    ("local", "hswish", "se", 192, 4.0, 80.0, True, "localvit_tiny", 0.0),
    ("local", "relu6", "none", None, 4.0, 82.0, True, None, 0.0),
    ("local", "hswish", "eca", None, 6.0, 90.0, True, None, 3e8),  # over the budget
    ("conv", "hswish", "none", None, 2.0, 95.0, False, None, 0.0),  # stopped early
    ("local", "relu6", "none", None, 2.0, 81.0, True, None, 0.0),
    ("local", "relu6", "none", None, 2.0, 79.0, True, None, 0.0),  # the same architecture again
    ("local", "hswish", "none", None, 1.0, 60.0, True, None, 0.0),
]


def _spec(ffn: str, act: str | None, attn: str, ratio: int | None, gamma: float) -> ArchSpec:
    return ArchSpec.uniform(LayerSpec(ffn, act, attn, se_ratio=ratio, gamma=gamma), depth=12, embed_dim=192,
                            num_heads=4)


def make_study(storage: str | None = None, name: str = "demo", baselines_attr: bool = True) -> optuna.Study:
    """A study as the search writes it (the storage contract of imagenet.export)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("settings", {"budget_flops": 1.3e9, "sampler": "tpe", "backbone": "deit_tiny"})
    study.set_user_attr("proxy_protocol", {
        "dataset": "fashion-mnist", "img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "epochs": 3,
        "batch_size": 128, "lr": 2e-3, "width_mult": 0.5, "train_subset": 6000, "val_subset": 2000, "seed": 0})
    study.set_user_attr("objectives", ["accuracy"])
    baselines = {}
    for ffn, act, attn, ratio, gamma, acc, full, baseline, constraint in TRIALS:
        spec = _spec(ffn, act, attn, ratio, gamma)
        cost = target_cost(spec)
        trial = study.ask()
        attrs = {"spec": spec.to_json(), "spec_id": spec.id, "flops": cost.flops, "params": cost.params,
                 "proxy_flops": cost.flops // 60, "proxy_params": cost.params // 4,
                 "epochs_trained": 3 if full else 1, "full_fidelity": full,
                 "val_acc_curve": [acc - 9, acc - 2, acc], "wall_time_s": 300.0}
        if baseline:
            attrs["baseline"] = baseline
            baselines[baseline] = trial.number
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("flops", constraint)
        set_system_attr(trial.storage, trial, "constraints", [constraint])
        study.tell(trial, acc)
    failed = study.ask()
    failed.set_user_attr("failure", "non-finite loss")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    if baselines_attr:
        study.set_user_attr("baselines", baselines)
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return make_study()


def _accs(trials) -> list[float]:
    return [t.value for t in trials]


def test_top_k_is_complete_feasible_full_fidelity_unique_and_no_baselines(study):
    assert _accs(select_trials(study, top=3)) == [82.0, 81.0, 60.0]
    assert _accs(select_trials(study, top=3, include_baselines=True)) == [82.0, 81.0, 80.0]
    assert len(select_trials(study, top=100)) == 3


def test_pareto_front_of_accuracy_and_flops(study):
    front = select_trials(study, pareto=True, include_baselines=True)
    flops = [t.user_attrs["flops"] for t in front]
    assert flops == sorted(flops)
    accs = _accs(front)
    assert accs == sorted(accs) and 82.0 in accs and 60.0 in accs and 80.0 not in accs
    for t in front:  # nothing selectable is both more accurate and cheaper
        assert not any(u.value > t.value and u.user_attrs["flops"] < t.user_attrs["flops"]
                       for u in select_trials(study, top=100, include_baselines=True))


def test_single_trial_and_bad_choices(study):
    assert select_trials(study, trial=3)[0].number == 3  # asked for by number: exported even if infeasible
    with pytest.raises(ValueError, match="trial=99"):
        select_trials(study, trial=99)
    with pytest.raises(ValueError, match="exactly one"):
        select_trials(study, top=2, pareto=True)


def test_exported_job(study, tmp_path):
    (folder,) = export_trials(study, select_trials(study, top=1), tmp_path)
    spec = _spec("local", "relu6", "none", None, 4.0)
    assert folder == tmp_path / "demo" / "export" / spec.id
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "arch.json", "provenance.json", "train.yaml", "train_timm.yaml"]

    arch = json.loads((folder / "arch.json").read_text())
    assert arch["spec_id"] == spec.id and ArchSpec.load(folder / "arch.json") == spec
    assert arch["target_cost"] == arch["cost"] == {"img_size": 224, "in_chans": 3, "num_classes": 1000,
                                                   "flops": target_cost(spec).flops,
                                                   "params": target_cost(spec).params}
    assert arch["proxy"]["val_top1"] == 82.0 and arch["proxy"]["img_size"] == 28 and arch["proxy"]["full_fidelity"]

    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["study"] == "demo" and prov["trial"] == 2 and prov["feasible"]
    assert prov["settings"]["sampler"] == "tpe" and prov["proxy_protocol"]["dataset"] == "fashion-mnist"
    assert prov["proxy_result"]["val_acc_curve"] == [73.0, 80.0, 82.0]
    assert prov["baselines"]["localvit_tiny"]["val_top1"] == 80.0
    assert prov["exported"]["versions"]["timm"] == __import__("timm").__version__
    assert "git" in prov["exported"]

    readme = (folder / "README.md").read_text()
    for text in (f"--config {folder / 'train.yaml'} --data-dir", "torchrun --nproc_per_node=8 -m imagenet.train",
                 "--eval --checkpoint", "device_modules", f"{target_cost(spec).flops / 1e9:.3f} GFLOPs"):
        assert text in readme


def test_baselines_are_found_by_their_trials_without_the_study_attribute():
    study = make_study(baselines_attr=False)
    provenance = trial_provenance(study, select_trials(study, top=1)[0])
    assert provenance["baselines"]["localvit_tiny"] == provenance["baselines"]["localvit_tiny"] | {
        "trial": 1, "val_top1": 80.0, "spec_id": _spec("local", "hswish", "se", 192, 4.0).id}
    assert set(provenance["baselines"]) == {"deit_tiny", "localvit_tiny"}


def test_train_yaml_round_trips_with_the_full_recipe(tmp_path):
    spec = _spec("local", "hswish", "se", 4, 3.0)
    folder = export_spec(spec, tmp_path / "job")
    cfg = TrainConfig.load(folder / "train.yaml")
    assert cfg.model.spec.id == spec.id and cfg == TrainConfig.for_spec(spec)
    raw = yaml.safe_load((folder / "train.yaml").read_text())
    recipe = {  # the recipe, every value written out
        ("schedule", "epochs"): 300, ("run", "batch_size"): 1024, ("optim", "opt"): "adamw", ("optim", "eps"): 1e-8,
        ("optim", "weight_decay"): 0.05, ("optim", "lr_base"): 5e-4, ("optim", "lr_base_size"): 512,
        ("schedule", "sched"): "cosine", ("schedule", "min_lr"): 1e-5, ("schedule", "warmup_epochs"): 5,
        ("schedule", "warmup_lr"): 1e-6, ("model", "drop_path"): 0.1, ("augment", "smoothing"): 0.1,
        ("augment", "mixup"): 0.8, ("augment", "cutmix"): 1.0, ("augment", "mixup_switch_prob"): 0.5,
        ("augment", "auto_augment"): "rand-m9-mstd0.5-inc1", ("augment", "color_jitter"): 0.4,
        ("data", "interpolation"): "bicubic", ("augment", "reprob"): 0.25, ("augment", "remode"): "pixel",
        ("augment", "repeated_aug"): 3, ("run", "model_ema"): True, ("run", "model_ema_decay"): 0.99996,
        ("run", "amp"): True, ("data", "crop_pct"): 0.875, ("run", "seed"): 0,
    }
    for (section, key), value in recipe.items():
        assert raw[section][key] == value, (section, key)
    assert cfg.lr == pytest.approx(1e-3)
    for section in fields(cfg):  # every value written out, none left to a default
        assert set(raw[section.name]) == {f.name for f in fields(getattr(cfg, section.name))}


def test_timm_variant_uses_only_timm_train_py_names(tmp_path):
    spec = _spec("local", "hswish", "se", 192, 4.0)
    folder = export_spec(spec, tmp_path / "job")
    timm_cfg = yaml.safe_load((folder / "train_timm.yaml").read_text())
    names = {line.strip() for line in TIMM_ARGS.read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {"model_kwargs", "device_modules", "aug_repeats", "lr_base_scale"} <= names  # the list is the real one
    assert set(timm_cfg) - names == set()
    assert timm_cfg == json.loads(json.dumps(to_timm_args(TrainConfig.for_spec(spec))))
    assert ArchSpec.from_dict(timm_cfg["model_kwargs"]["spec"]).id == spec.id
    assert timm_cfg["model"] == "localvit_custom" and timm_cfg["device_modules"] == ["localvit"]
    # timm's per-GPU batch over 8 GPUs, the lr computed by timm from lr_base with linear scaling
    assert timm_cfg["batch_size"] * 8 == 1024 and timm_cfg["lr"] is None and timm_cfg["lr_base_scale"] == "linear"
    model = __import__("timm").create_model(timm_cfg["model"], drop_path_rate=timm_cfg["drop_path"],
                                            **timm_cfg["model_kwargs"])
    assert model.spec.replace(drop_path_rate=0.0).id == spec.id


@pytest.mark.parametrize("spec", [
    ArchSpec(layers=(LayerSpec("local", "hswish", "se", se_ratio=4), LayerSpec("mlp"),
                     LayerSpec("conv", "relu6", "eca", gamma=2.0), LayerSpec("local", "relu6", gamma=6.0, kernel=5)),
             embed_dim=64, num_heads=2),
    proxy_spec(localvit_spec("pvt_tiny"), img_size=32, num_classes=10),
], ids=["vit-224", "pvt-32"])
def test_model_from_arch_json_has_its_flops_and_params(spec, tmp_path):
    folder = export_spec(spec, tmp_path / "job")
    arch = json.loads((folder / "arch.json").read_text())
    flops, params = fvcore_cost(build_model(ArchSpec.load(folder / "arch.json")), spec.img_size)
    assert (flops, params) == (arch["cost"]["flops"], arch["cost"]["params"])
    target = target_cost(spec)
    assert (arch["target_cost"]["flops"], arch["target_cost"]["params"]) == (target.flops, target.params)


def test_cli_exports_from_sqlite_and_from_a_spec_file(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    make_study(f"sqlite:///{tmp_path / 'demo' / 'study.db'}")
    assert load_study("demo", results_dir=tmp_path).study_name == "demo"
    with pytest.raises(SystemExit) as exit_:
        run(export_study_main, ["--study", "demo", "--results", str(tmp_path), "--top", "2"])
    assert exit_.value.code == 0
    folders = capsys.readouterr().out.split()
    assert [Path(f).parent for f in folders] == [tmp_path / "demo" / "export"] * 2

    with pytest.raises(SystemExit) as exit_:
        run(export_spec_main, ["--spec", str(Path(folders[0]) / "arch.json"), "--out", str(tmp_path / "again")])
    assert exit_.value.code == 0
    assert ArchSpec.load(tmp_path / "again" / "arch.json") == ArchSpec.load(Path(folders[0]) / "arch.json")


def run(main, argv):
    from localvit.cli import run_cli

    run_cli(main, argv)


@pytest.mark.parametrize("main, argv, message", [
    (export_study_main, ["--study", "nope", "--top", "1"], "study='nope' is invalid"),
    (export_spec_main, ["--spec", "{missing}", "--out", "{tmp}/x"], "is invalid; accepted: an existing"),
    (export_spec_main, ["--spec", "{bad_spec}", "--out", "{tmp}/x"], "ffn='transformer' is invalid"),
    (export_spec_main, ["--spec", "{not_json}", "--out", "{tmp}/x"], "is not valid JSON"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, main, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"layers": [{"ffn": "transformer"}]}))
    (tmp_path / "text.json").write_text("layers: 1")
    paths = {"missing": tmp_path / "none.json", "bad_spec": tmp_path / "bad.json", "not_json": tmp_path / "text.json",
             "tmp": tmp_path}
    with pytest.raises(SystemExit) as exit_:
        run(main, [a.format(**paths) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
