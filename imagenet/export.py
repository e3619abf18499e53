"""Export found architectures as complete ImageNet training jobs.

    python -m imagenet.export --study NAME --top 3         # the best 3 by proxy accuracy
    python -m imagenet.export --study NAME --pareto        # the accuracy / FLOPs Pareto front
    python -m imagenet.export --study NAME --trial 17      # one trial
    python -m imagenet.export --spec arch.json --out DIR   # a bare spec

Each job is a folder (`results/<study>/export/<spec id>/` for trials) with `arch.json` (the
spec, its FLOPs and params, the proxy figures), `train.yaml` (the DeiT / LocalViT recipe with
the spec inline, run by `python -m imagenet.train`), `train_timm.yaml` (the same recipe for timm's
`train.py`), `provenance.json` (where it came from) and a `README.md` with the commands.

The search calls `export_trials(study, select_trials(study, top=3), results_dir)`; it reads
only the study and trial attributes of the search's storage contract (see `select_trials`).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from localvit.spec import ArchSpec, as_spec
from localvit.cli import run_cli
from imagenet.recipe import TIMM_GPUS, TrainConfig, to_timm_args
from space.cost import TARGET_IMG_SIZE, TARGET_IN_CHANS, TARGET_NUM_CLASSES, model_cost, target_cost

FLOPS_CONVENTION = "fvcore's: one multiply-add is one FLOP; attention matmuls counted; one image's forward pass"
_VERSIONED = ("torch", "timm", "optuna", "numpy", "pillow", "pyyaml", "localvit-nas")


# -- choosing trials -----------------------------------------------------------------------------

def open_study(study: str, storage: str | None = None, results_dir: str | Path = "results") -> optuna.Study:
    """The search's study: SQLite at `<results_dir>/<study>/study.db` unless `storage` is a URL."""
    if storage is None:
        path = Path(results_dir) / study / "study.db"
        if not path.is_file():
            raise ValueError(f"study={study!r} is invalid: no {path}; accepted: a study of {results_dir}/ "
                             f"(or --storage URL)")
        storage = f"sqlite:///{path}"
    elif storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise ValueError(f"storage={storage!r} is invalid; accepted: the URL of an existing study storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise ValueError(f"study={study!r} is invalid; accepted: {', '.join(names) or 'none in this storage'}") \
            from None


def select_trials(study: optuna.Study, *, top: int | None = None, pareto: bool = False, trial: int | None = None,
                  include_baselines: bool = False) -> list[FrozenTrial]:
    """The trials to export: one of `trial=N`, `top=K` or `pareto=True`.

    Candidates for `top` and `pareto` are COMPLETE, feasible (constraints <= 0) trials trained
    to the full proxy budget (`full_fidelity`) with a `spec`, baselines only when asked;
    accuracy is the first objective (validation top-1 %), FLOPs the `flops` attribute (224x224).
    One trial per architecture, the most accurate.
    """
    if sum((top is not None, pareto, trial is not None)) != 1:
        raise ValueError("choose exactly one of --top K, --pareto, --trial N")
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not found or "spec" not in found[0].user_attrs:
            raise ValueError(f"trial={trial} is invalid; accepted: a trial number of study {study.study_name!r} "
                             f"with a spec ({len(study.trials)} trials)")
        return found
    if top is not None and top < 1:
        raise ValueError(f"top={top} is invalid; accepted: a positive integer")
    ranked = ranked_candidates(study, include_baselines)
    if not ranked:
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        raise ValueError(f"study {study.study_name!r} has no trial to export: {len(trials)} trials, {complete} "
                         f"complete; accepted: complete, feasible, full-fidelity trials"
                         + ("" if include_baselines else " (baselines need --include-baselines)"))
    return ranked[:top] if top is not None else pareto_front(ranked)


def ranked_candidates(study: optuna.Study, include_baselines: bool = False) -> list[FrozenTrial]:
    """COMPLETE, feasible trials trained to the full proxy budget, one per architecture (its
    most accurate trial), most accurate first; ties go to fewer FLOPs."""
    candidates = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                  and "spec" in t.user_attrs and all(c <= 0 for c in t.constraints.values())
                  and t.user_attrs.get("full_fidelity") is True
                  and (include_baselines or not t.user_attrs.get("baseline"))]
    ranked, seen = [], set()
    for t in sorted(candidates, key=lambda t: (-_accuracy(t), _flops(t), t.number)):
        spec_id = as_spec(t.user_attrs["spec"]).id
        if spec_id not in seen:
            seen.add(spec_id)
            ranked.append(t)
    return ranked


def pareto_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The accuracy (up) / FLOPs (down) front of `trials`, cheapest first."""
    return sorted((t for t in trials if not any(_dominates(u, t) for u in trials)), key=_flops)


def _accuracy(trial: FrozenTrial) -> float:
    return trial.values[0]


def _flops(trial: FrozenTrial) -> float:
    return float(trial.user_attrs.get("flops", float("inf")))


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    """`a` is at least as accurate and as cheap as `b`, and better in one."""
    return (_accuracy(a) >= _accuracy(b) and _flops(a) <= _flops(b)
            and (_accuracy(a) > _accuracy(b) or _flops(a) < _flops(b)))


# -- writing jobs ---------------------------------------------------------------------------------

def export_trials(study: optuna.Study, trials: Sequence[FrozenTrial], results_dir: str | Path = "results") \
        -> list[Path]:
    """Write one job per trial under `<results_dir>/<study>/export/<spec id>/`; returns the folders."""
    baselines = _baselines(study)
    folders = []
    for trial in trials:
        spec = as_spec(trial.user_attrs["spec"])
        out = Path(results_dir) / study.study_name / "export" / spec.id
        folders.append(export_spec(spec, out, provenance=trial_provenance(study, trial, baselines),
                                   proxy=_proxy_figures(study, trial)))
    return folders


def export_spec(spec: ArchSpec, out_dir: str | Path, *, provenance: Mapping[str, Any] | None = None,
                proxy: Mapping[str, Any] | None = None) -> Path:
    """Write the job of one spec into `out_dir` (created); `proxy` holds the search's figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.for_spec(spec)
    arch = arch_record(spec, proxy)
    (out / "arch.json").write_text(json.dumps(arch, indent=2) + "\n")
    cfg.save(out / "train.yaml", _yaml_header(spec, out, "imagenet.train"))
    timm_args = to_timm_args(cfg)
    (out / "train_timm.yaml").write_text(
        "".join(f"# {line}\n" for line in _yaml_header(spec, out, "timm").splitlines())
        + yaml.safe_dump(timm_args, sort_keys=False, default_flow_style=None, width=100))
    record = {**(provenance or {}), "exported": _export_record()}
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "README.md").write_text(_readme(spec, out, cfg, arch, record))
    return out


def arch_record(spec: ArchSpec, proxy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What arch.json holds: the spec, its cost as built and at 224x224 / 1000 classes (None where
    its geometry does not fit there), and the proxy figures."""
    built = model_cost(spec)
    cost = {"img_size": spec.img_size, "in_chans": spec.in_chans, "num_classes": spec.num_classes,
            "flops": built.flops, "params": built.params}
    try:
        at_target = target_cost(spec)
    except ValueError:  # a geometry made for small images (a Swin window) may not tile 224x224
        target = None
    else:
        target = {"img_size": TARGET_IMG_SIZE, "in_chans": TARGET_IN_CHANS, "num_classes": TARGET_NUM_CLASSES,
                  "flops": at_target.flops, "params": at_target.params}
    return {"spec_id": spec.id, "spec": spec.to_dict(), "cost": cost, "target_cost": target,
            "flops_convention": FLOPS_CONVENTION, "proxy": dict(proxy) if proxy else None}


def trial_provenance(study: optuna.Study, trial: FrozenTrial, baselines: Mapping[str, Any] | None = None) \
        -> dict[str, Any]:
    """Where a trial's architecture came from: study, trial, settings, proxy protocol and result."""
    attrs = trial.user_attrs
    return {
        "study": study.study_name, "trial": trial.number, "state": trial.state.name,
        "feasible": all(c <= 0 for c in trial.constraints.values()), "constraints": trial.constraints,
        "objectives": study.user_attrs.get("objectives"), "values": trial.values,
        "baseline": attrs.get("baseline"), "params": trial.params,
        "search_costs": {k: attrs.get(k) for k in ("flops", "params", "proxy_flops", "proxy_params")},
        "settings": study.user_attrs.get("settings"), "proxy_protocol": study.user_attrs.get("proxy_protocol"),
        "proxy_result": {k: attrs.get(k) for k in (
            "epochs_trained", "full_fidelity", "val_acc_curve", "wall_time_s", "failure")}
        | {"val_top1": trial.values[0] if trial.values else None},
        "baselines": _baselines(study) if baselines is None else dict(baselines),
    }


def _proxy_figures(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    protocol = study.user_attrs.get("proxy_protocol") or {}
    attrs = trial.user_attrs
    return {**{k: protocol.get(k) for k in ("dataset", "img_size", "patch_size", "in_chans", "num_classes",
                                            "width_mult", "epochs")},
            "flops": attrs.get("proxy_flops"), "params": attrs.get("proxy_params"),
            "val_top1": trial.values[0] if trial.values else None, "epochs_trained": attrs.get("epochs_trained"),
            "full_fidelity": attrs.get("full_fidelity"), "val_acc_curve": attrs.get("val_acc_curve")}


def _baselines(study: optuna.Study) -> dict[str, Any]:
    """The study's baselines with their proxy accuracy and costs, to judge the found ones by: the
    study's `baselines` attribute, else the trials marked with a `baseline` name."""
    trials = study.get_trials(deepcopy=False)
    numbers = study.user_attrs.get("baselines") or {
        t.user_attrs["baseline"]: t.number for t in trials if t.user_attrs.get("baseline")}
    by_number = {t.number: t for t in trials}
    result = {}
    for name, number in numbers.items():
        t = by_number.get(number)
        result[name] = {"trial": number, "state": t.state.name if t else None,
                        "val_top1": t.values[0] if t is not None and t.values else None,
                        **{k: t.user_attrs.get(k) if t else None for k in ("spec_id", "flops", "params")}}
    return result


def _export_record() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions, "git": _git()}


def _git() -> dict[str, Any] | None:
    """The commit of this checkout and whether tracked files differ from it (None outside git)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


# -- the README -----------------------------------------------------------------------------------

def _yaml_header(spec: ArchSpec, out: Path, trainer: str) -> str:
    if trainer == "timm":
        return (f"LocalViT-NAS architecture {spec.id}: the DeiT / LocalViT ImageNet recipe for timm's train.py\n"
                f"(argument names of timm 1.0; batch_size is per GPU, {TIMM_GPUS} GPUs give the global batch).\n"
                f"torchrun --nproc_per_node={TIMM_GPUS} train.py --config {(out / 'train_timm.yaml').resolve()} "
                f"--data-dir /path/to/imagenet")
    return (f"LocalViT-NAS architecture {spec.id}: the DeiT / LocalViT ImageNet recipe, every value explicit.\n"
            f"python -m imagenet.train --config {out / 'train.yaml'} --data-dir /path/to/imagenet\n"
            f"lr = optim.lr_base x run.batch_size (global) / optim.lr_base_size; --batch-size changes both.")


def _layers_summary(spec: ArchSpec) -> list[str]:
    """One line per run of identical blocks."""
    lines, start = [], 0
    for i in range(1, len(spec.layers) + 1):
        if i == len(spec.layers) or spec.layers[i] != spec.layers[start]:
            layer = spec.layers[start]
            blocks = f"block {start + 1}" if i - start == 1 else f"blocks {start + 1}-{i}"
            lines.append(f"- {blocks}: " + ", ".join(f"{k} {v}" for k, v in layer.to_dict().items()))
            start = i
    return lines


def _readme(spec: ArchSpec, out: Path, cfg: TrainConfig, arch: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    cost, target, proxy = arch["cost"], arch["target_cost"] or arch["cost"], arch["proxy"]
    origin = (f"Found by the search of study `{record['study']}`, trial {record['trial']}"
              if "study" in record else "Exported from a spec file")
    lines = [
        f"# LocalViT-NAS architecture `{spec.id}`", "",
        f"{origin}: a `{spec.backbone}` LocalViT-family model, {spec.depth} blocks"
        + (f", width {spec.embed_dim}, {spec.num_heads} heads" if spec.embed_dim else "") + ".",
        *_layers_summary(spec), "",
        f"Cost at {target['img_size']}x{target['img_size']}, {target['num_classes']} classes: "
        f"{target['flops'] / 1e9:.3f} GFLOPs, {target['params'] / 1e6:.3f} M parameters "
        f"({FLOPS_CONVENTION}).",
    ]
    if cost != target:
        lines.append(f"As configured here ({cost['img_size']}x{cost['img_size']}, {cost['num_classes']} classes): "
                     f"{cost['flops'] / 1e9:.4f} GFLOPs, {cost['params'] / 1e6:.3f} M parameters.")
    if proxy and proxy.get("val_top1") is not None:
        lines.append(f"Proxy result: {proxy['val_top1']:.2f}% validation top-1 on {proxy.get('dataset')} at "
                     f"{proxy.get('img_size')}x{proxy.get('img_size')} after {proxy.get('epochs_trained')} epochs "
                     "(a ranking signal, not an ImageNet accuracy).")
    config, timm_config = out / "train.yaml", (out / "train_timm.yaml").resolve()
    lines += [
        "", "Files: `arch.json` (spec and costs), `train.yaml` (the recipe, spec inline), `train_timm.yaml` "
        "(the recipe for timm's train.py), `provenance.json` (study, settings, versions, git commit).", "",
        "## Train on ImageNet", "",
        f"The DeiT / LocalViT recipe: {cfg.schedule.epochs} epochs, global batch {cfg.run.batch_size}, AdamW "
        f"(lr {cfg.optim.lr_base:g} x batch / {cfg.optim.lr_base_size} = {cfg.lr:g}, weight decay "
        f"{cfg.optim.weight_decay:g}), cosine to {cfg.schedule.min_lr:g} after {cfg.schedule.warmup_epochs} warm-up "
        f"epochs, RandAugment, mixup / cutmix, random erasing, repeated augmentation, EMA, mixed precision.",
        "`--data-dir` is an ImageNet folder: `train/<class>/*.JPEG` and `val/<class>/*.JPEG` (1000 classes). "
        "Run from the repository root (with the project installed).", "",
        "On 1 GPU (the whole global batch on it; with `--batch-size 256` the learning rate follows):", "",
        f"    python -m imagenet.train --config {config} --data-dir /path/to/imagenet", "",
        "On N GPUs of one machine (global batch split over them):", "",
        f"    torchrun --nproc_per_node=8 -m imagenet.train --config {config} --data-dir /path/to/imagenet", "",
        f"It writes `{out / 'train'}/`: `log.csv` (top-1 / top-5 of the model and its EMA every epoch), "
        "`last.pth` every epoch, `best.pth`, `config.yaml`; the last line printed is `best top-1: X`. "
        "Add `--resume` to continue from `last.pth`.", "",
        "## Evaluate a checkpoint", "",
        f"    python -m imagenet.train --config {config} --data-dir /path/to/imagenet --eval --checkpoint "
        f"{out / 'train' / 'best.pth'}", "",
        "`--ema` evaluates the checkpoint's EMA weights.", "",
        "## With timm's train.py", "",
        "`train_timm.yaml` holds the same recipe under timm's argument names; `device_modules: [localvit]` makes "
        "timm import this project (install it: `pip install -e <this repository>`) so that `localvit_custom` is "
        "registered, and `model_kwargs` passes the spec. From a clone of pytorch-image-models:", "",
        f"    torchrun --nproc_per_node={TIMM_GPUS} train.py --config {timm_config} --data-dir /path/to/imagenet", "",
        f"`batch_size` is per GPU ({cfg.run.batch_size // TIMM_GPUS} x {TIMM_GPUS} = {cfg.run.batch_size}); timm "
        "derives the learning rate from `lr_base` for the GPUs it runs on. timm's loader supports repeated "
        "augmentation only in distributed runs: on one GPU add `--aug-repeats 0`. With Pillow 13 or newer, "
        "timm's RandAugment `inc1` posterize fails (0 bits) about once in 800 images: use Pillow < 13 there "
        "(`imagenet.train` handles it).", "",
        "## Use the model", "",
        "    import localvit",
        f"    model = localvit.build_model('{out / 'arch.json'}')", "",
    ]
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagenet.export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="study name (SQLite at <results>/<study>/study.db unless --storage)")
    source.add_argument("--spec", help="arch.json or spec JSON file to export alone (with --out)")
    parser.add_argument("--storage", help="Optuna storage URL of the study")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--top", type=int, metavar="K", help="the K most accurate architectures")
    pick.add_argument("--pareto", action="store_true", help="the accuracy / FLOPs Pareto front")
    pick.add_argument("--trial", type=int, metavar="N", help="trial number N")
    parser.add_argument("--include-baselines", action="store_true", help="let --top / --pareto pick baselines")
    parser.add_argument("--out", help="with --spec: the folder to write")
    args = parser.parse_args(argv)
    if args.spec:
        if not args.out:
            parser.error("--spec needs --out DIR")
        folders = [export_spec(ArchSpec.load(args.spec), args.out, provenance={"source": str(args.spec)})]
    else:
        if args.out:
            parser.error("--out goes with --spec; trials are written under <results>/<study>/export/")
        if args.top is None and not args.pareto and args.trial is None:
            parser.error("--study needs one of --top K, --pareto, --trial N")
        study = open_study(args.study, args.storage, args.results)
        trials = select_trials(study, top=args.top, pareto=args.pareto, trial=args.trial,
                               include_baselines=args.include_baselines)
        folders = export_trials(study, trials, args.results)
    for folder in folders:
        print(folder)
    return 0


if __name__ == "__main__":
    run_cli(main)
