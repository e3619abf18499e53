"""Export an architecture as a complete ImageNet training job.

    python -m imagenet.export --spec arch.json --out DIR   # a spec file (`python -m search.export`: a study's best)

A job is a folder with `arch.json` (the spec, its FLOPs and params, the proxy figures when it
came from a search), `train.yaml` (the DeiT / LocalViT recipe with the spec inline, run by
`python -m imagenet.train`), `train_timm.yaml` (the same recipe for timm's `train.py`),
`provenance.json` (where it came from) and a `README.md` with the commands.
"""
from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from imagenet.recipe import TIMM_GPUS, TrainConfig, to_timm_args
from localvit.cli import run_cli
from localvit.host import git_state
from localvit.spec import ArchSpec
from proxy.protocol import ProxyProtocol
from space.cost import TARGET_IMG_SIZE, TARGET_IN_CHANS, TARGET_NUM_CLASSES, model_cost, target_cost

FLOPS_CONVENTION = "fvcore's: one multiply-add is one FLOP; attention matmuls counted; one image's forward pass"
_VERSIONED = ("torch", "timm", "optuna", "numpy", "pillow", "pyyaml", "localvit-nas")



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


def _export_record() -> dict[str, Any]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "versions": versions, "git": git_state()}


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
        *_loop_section(out, config, record),
        "## Use the model", "",
        "    import localvit",
        f"    model = localvit.build_model('{out / 'arch.json'}')", "",
    ]
    return "\n".join(lines)


def _loop_section(out: Path, config: Path, record: Mapping[str, Any]) -> list[str]:
    """How a finished run becomes evidence: the command that trains this design on ImageNet (or a
    subset), then audits the search's ranking with its result among the others."""
    folder = out.parent
    if "study" in record:  # the search proxy-trained every exported design: its study holds the scores
        settings = record.get("settings") or {}
        storage = settings.get("storage") or f"sqlite:///{folder.parent / 'study.db'}"
        audit = f"python -m audit --references {folder} --from-study {record['study']} --storage {storage}"
    else:
        protocol = " ".join(["", *ProxyProtocol.from_dict(record["proxy_protocol"]).option_args()]) \
            if record.get("proxy_protocol") else ""
        audit = f"python -m audit --references {folder}{protocol}"
    return [
        "## Train, then audit the ranking with the result", "",
        "A run writes `result.yaml` beside its checkpoints: a reference row with the design, its best top-1, the "
        "data it was trained on and whether it finished. Once three or more designs of this folder are trained "
        "on one dataset, the audit measures how well every signal (the proxy, the parameter count, ...) ranks them "
        "as your runs do, and `run_search.py --references` ranks by what wins on your evidence:", "",
        f"    python -m imagenet.train --config {config} --data-dir /path/to/imagenet-or-a-subset \\",
        f"        && {audit}", "",
        "The head follows the data folder's class count (`--num-classes` to say otherwise). Unfinished runs are "
        "left out (`--include-unfinished` counts them); repeated runs of one design count as their mean.", ""]


# -- the command ----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagenet.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="arch.json or spec JSON file to export")
    parser.add_argument("--out", required=True, help="the folder to write")
    args = parser.parse_args(argv)
    print(export_spec(ArchSpec.load(args.spec), args.out, provenance={"source": str(args.spec)}))
    return 0


if __name__ == "__main__":
    run_cli(main)
