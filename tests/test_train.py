"""The ImageNet trainer (imagenet.train) on a tiny ImageNet-layout folder of real Fashion-MNIST images."""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localvit import ArchSpec, LayerSpec, build_model
from imagenet.export import export_spec
from imagenet.train import keep_zero_bit_posterize, main
from tests.conftest import OFFICIAL as OFFICIAL_FIXTURES

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = (2, 3, 4, 5, 2, 3, 4, 5, 2, 3)  # unequal, so that a constant guess is no round number
MEAN, STD = np.array((0.485, 0.456, 0.406)), np.array((0.229, 0.224, 0.225))
TINY = ArchSpec(layers=(LayerSpec("local", "hswish", "se", se_ratio=4), LayerSpec("mlp")), embed_dim=32,
                num_heads=4, img_size=32, patch_size=8, num_classes=CLASSES)
# The official code's LocalViT (h-swish + SE r=4, img 32, patch 8, dim 32, depth 2, 4 heads, 10 classes).
OFFICIAL = ArchSpec.uniform(LayerSpec("local", "hswish", "se", se_ratio=4), depth=2, embed_dim=32, num_heads=4,
                            img_size=32, patch_size=8, num_classes=10)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """`train/<class>/*.png` and `val/<class>/*.png`: real Fashion-MNIST images padded to 32x32 RGB."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {FASHION_MNIST} (make data)")
    root = tmp_path_factory.mktemp("imagenet")
    for split, prefix, counts in (("train", "train", [TRAIN_PER_CLASS] * CLASSES), ("val", "t10k", VAL_PER_CLASS)):
        images = _read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
        for label, count in enumerate(counts):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == label)[:count]:
                Image.fromarray(np.pad(images[i], 2)).convert("RGB").save(folder / f"{i}.png")
    return root


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _tiny_run_args(config: Path, data: Path, out: Path) -> list[str]:
    # Small and fast, everything else the exported recipe: mixup, cutmix, RandAugment, random
    # erasing, EMA, repeated augmentation. No warm-up and a larger lr, so that the weights move.
    # Eval crop 1.0 keeps the 32x32 images as they are for the independent count.
    return ["--config", str(config), "--data-dir", str(data), "--output", str(out), "--batch-size", "16",
            "--workers", "0", "--device", "cpu", "--set", "schedule.warmup_epochs=0", "--set", "optim.lr_base=0.03",
            "--set", "data.crop_pct=1.0"]


def _count_correct(state_dict: dict, spec: ArchSpec, val_dir: Path) -> tuple[int, int, set[int]]:
    """Top-1 hits, images and the classes predicted, counted here without the trainer's data pipeline."""
    model = build_model(spec).eval()
    model.load_state_dict(state_dict)
    classes = sorted(p.name for p in val_dir.iterdir())
    correct = total = 0
    predicted = set()
    with torch.no_grad():
        for label, name in enumerate(classes):
            for path in sorted((val_dir / name).iterdir()):
                pixels = (np.asarray(Image.open(path).convert("RGB"), np.float64) / 255 - MEAN) / STD
                logits = model(torch.from_numpy(pixels).permute(2, 0, 1)[None].float())
                predicted.add(logits.argmax(1).item())
                correct += int(logits.argmax(1).item() == label)
                total += 1
    return correct, total, predicted


def _top1(text: str) -> float:
    return float(re.search(r"top-1: ([\d.]+)", text).group(1))


def test_train_resume_and_evaluate_with_the_full_recipe(imagenet, tmp_path, capsys):
    job = export_spec(TINY, tmp_path / "job")
    out = tmp_path / "run"
    args = _tiny_run_args(job / "train.yaml", imagenet, out)

    text = _run(capsys, *args, "--epochs", "1")
    assert (out / "last.pth").is_file() and (out / "best.pth").is_file()
    first = torch.load(out / "last.pth", weights_only=True)
    assert first["epoch"] == 1 and first["spec_id"] == TINY.id
    cfg = first["config"]  # the exported recipe ran, with only the test's overrides
    assert cfg["augment"]["mixup"] == 0.8 and cfg["augment"]["cutmix"] == 1.0 and cfg["augment"]["reprob"] == 0.25
    assert cfg["augment"]["auto_augment"] == "rand-m9-mstd0.5-inc1" and cfg["augment"]["repeated_aug"] == 3
    assert cfg["run"]["model_ema"] and first["model_ema"] is not None
    assert "best top-1: " in text.splitlines()[-1]

    text = _run(capsys, *args, "--epochs", "2", "--resume")
    assert "epochs 2-2" in text
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 2
    steps = TRAIN_PER_CLASS * CLASSES // 16  # repeated augmentation keeps the epoch length on one process
    assert [s["step"] for s in last["optimizer"]["state"].values()][0] == 2 * steps  # the optimizer resumed
    with (out / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    best = max(float(r["top1"]) for r in rows)
    assert text.splitlines()[-1].startswith(f"best top-1: {best:.2f}")

    text = _run(capsys, *args, "--eval", "--checkpoint", str(out / "last.pth"))
    correct, total, _ = _count_correct(last["model"], TINY, imagenet / "val")
    assert total == sum(VAL_PER_CLASS) and f"({total} images" in text
    assert _top1(text) == pytest.approx(100 * correct / total, abs=0.005)
    assert float(rows[-1]["top1"]) == pytest.approx(100 * correct / total, abs=1e-4)  # the log agrees

    text = _run(capsys, *args, "--eval", "--checkpoint", str(out / "last.pth"), "--ema")
    correct, total, _ = _count_correct(last["model_ema"], TINY, imagenet / "val")
    assert _top1(text) == pytest.approx(100 * correct / total, abs=0.005)


def test_evaluates_an_official_checkpoint(imagenet, tmp_path, capsys):
    fixture = torch.load(OFFICIAL_FIXTURES / "localvit_act3_r4.pt", weights_only=True)
    # The official DeiT-style training state: weights under `model`, the arguments as a Namespace.
    checkpoint = tmp_path / "localvit_official.pth"
    torch.save({"model": fixture["state_dict"], "epoch": 299, "args": argparse.Namespace(model="localvit")},
               checkpoint)
    job = export_spec(OFFICIAL, tmp_path / "job")
    text = _run(capsys, "--config", str(job / "train.yaml"), "--data-dir", str(imagenet), "--set",
                "data.crop_pct=1.0", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                "--eval", "--checkpoint", str(checkpoint))
    correct, total, predicted = _count_correct(fixture["state_dict"], OFFICIAL, imagenet / "val")
    assert len(predicted) > 1  # the count tells predictions apart, not just the share of one class
    assert _top1(text) == pytest.approx(100 * correct / total, abs=0.005)


def test_a_paper_model_by_its_official_name_gets_the_recipe():
    from localvit.vision_transformer import PAPER_SPECS
    from imagenet.recipe import TrainConfig
    from imagenet.train import load_config, parse_args

    args = parse_args(["--model", "localvit_tiny_mlp4_act3_r192", "--data-dir", "in1k", "--eval", "--checkpoint",
                       "localvit_t.pth"])
    assert load_config(args) == TrainConfig.for_spec(PAPER_SPECS["localvit_tiny"]).override({"data.dir": "in1k"})


def test_posterize_to_zero_bits_gives_a_black_image():
    from timm.data.auto_augment import NAME_TO_OP

    keep_zero_bit_posterize()
    keep_zero_bit_posterize()  # idempotent
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert NAME_TO_OP["PosterizeIncreasing"](image, 0).getextrema() == ((0, 0),) * 3
    assert NAME_TO_OP["PosterizeIncreasing"](image, 8).getextrema() == image.getextrema()


def _bad_config(tmp_path: Path, section: str, key: str, value) -> Path:
    import yaml

    job = export_spec(TINY, tmp_path / "job")
    data = yaml.safe_load((job / "train.yaml").read_text())
    data[section][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("case, message", [
    ("unknown_key", "optim.wd=0.05 is an unknown key; accepted keys in optim: opt, lr_base"),
    ("wrong_type", "schedule.epochs='many' is invalid; accepted: an integer"),
    ("bad_spec", "model.spec: act='tanh' is invalid; accepted: relu6, hswish, gelu"),
    ("no_val", "has no val/ folder; accepted: an ImageNet layout folder"),
    ("classes", "--num-classes 5 is invalid: the data dir has 10 classes; accepted: at least 10"),
    ("missing", "config='nothing.yaml' is invalid; accepted: an existing YAML file"),
])
def test_bad_input_is_one_line_and_exit_2(imagenet, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.chdir(tmp_path)
    config, data, more = export_spec(TINY, tmp_path / "ok") / "train.yaml", imagenet, []
    if case == "unknown_key":
        config = _bad_config(tmp_path, "optim", "wd", 0.05)
    elif case == "wrong_type":
        config = _bad_config(tmp_path, "schedule", "epochs", "many")
    elif case == "bad_spec":
        config = _bad_config(tmp_path, "model", "spec", {**TINY.to_dict(), "layers": [{"ffn": "local", "act": "tanh"}]})
    elif case == "no_val":
        data = tmp_path / "flat"
        (data / "train" / "a").mkdir(parents=True)
    elif case == "classes":  # a head smaller than the data's classes (a larger one, or none given, is fine)
        config = export_spec(TINY.replace(num_classes=1000), tmp_path / "big") / "train.yaml"
        more = ["--num-classes", "5"]
    elif case == "missing":
        config = Path("nothing.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), "--data-dir", str(data), "--device", "cpu", "--workers", "0", *more])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_command_line_error_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "imagenet.train", "--config", str(tmp_path / "none.yaml"),
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: config=") and result.stderr.count("\n") == 1


def test_distributed_run_counts_every_validation_image_once(imagenet, tmp_path, capsys):
    """Two CPU processes under torchrun (Gloo): the sharded validation adds up to the single-process one."""
    job = export_spec(TINY, tmp_path / "job")
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "imagenet.train",
         *_tiny_run_args(job / "train.yaml", imagenet, out), "--epochs", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 x cpu" in result.stdout and result.stdout.count("best top-1:") == 1
    with (out / "log.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    text = _run(capsys, *_tiny_run_args(job / "train.yaml", imagenet, out), "--eval", "--checkpoint",
                str(out / "last.pth"))
    assert f"({sum(VAL_PER_CLASS)} images" in text
    assert _top1(text) == pytest.approx(float(row["top1"]), abs=0.005)
