"""The prepared device check (bench/device_check.sh) at its tiny size on the CPU, so that the script a
GPU machine runs unattended cannot rot; and its parts: synthetic data, the rung it picks, timeouts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.device_check import (
    PAPER_DESIGNS,
    STEPS,
    Check,
    pick_rung,
    run_command,
    write_synthetic_idx,
)
from proxy.data import load_fashion_mnist
from proxy.protocol import ProxyProtocol
from proxy.runtime import resolve_precision

REPO = Path(__file__).resolve().parents[1]


def device_check(tmp_path: Path, *args: str, timeout: int) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--tiny", "--out", str(tmp_path), *args],
                            capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "device_check.md").read_text().startswith("# Device check")
    return json.loads((tmp_path / "device_check.json").read_text())


def test_the_tiny_device_check_saves_every_steps_figures(tmp_path) -> None:
    report = device_check(tmp_path, "--skip", "search", "--skip", "oneshot", "--budget", "150", timeout=400)
    steps = report["steps"]
    assert list(steps) == list(STEPS) and all("step_seconds" in step for step in steps.values())
    env = steps["environment"]
    if not torch.cuda.is_available():
        assert env["device"] == "cpu" and env["gpus"] == []
        assert (env["gpus_per_trial_auto"], env["workers_auto"]) == (0.0, 2)  # CPU-only: as before
        assert env["precision_auto"]["resolved"] == resolve_precision("auto")
    speed = steps["speed"]["rows"]
    assert [(r["width_mult"], r["precision"]) for r in speed] == [(0.5, "fp32"), (0.5, "bf16"), (1.0, "fp32"),
                                                                  (1.0, "bf16")]
    assert all(r.get("images_per_s", 0) > 0 or r.get("error") for r in speed)
    assert any(r.get("images_per_s", 0) > 0 for r in speed), speed  # at least one measured, not all errors
    assert [r["trials"] for r in steps["side_by_side"]["rows"]] == [1, 2]
    assert steps["search"] == steps["oneshot"] == {"skipped": "--skip", "step_seconds": 0.0}
    audit = steps["audit"]
    assert "--rungs" in audit.get("skipped", "") or audit.get("rung") == 1, audit


@pytest.mark.slow
def test_the_tiny_one_shot_step_trains_and_scores_on_the_device_it_names(tmp_path) -> None:
    skip = [arg for step in STEPS if step != "oneshot" for arg in ("--skip", step)]
    oneshot = device_check(tmp_path, *skip, "--budget", "300", timeout=600)["steps"]["oneshot"]
    where = "cuda" if torch.cuda.is_available() else "cpu"
    assert oneshot["exit"] == 0 and "error" not in oneshot, oneshot
    assert oneshot["supernet_device"] == oneshot["scoring_device"] == where
    assert oneshot["candidates_scored"] == 6 and oneshot["supernet_train_s"] > 0


def test_synthetic_idx_files_read_as_fashion_mnist(tmp_path) -> None:
    arrays = load_fashion_mnist(write_synthetic_idx(tmp_path / "synthetic", train=200, test=50),
                                cache_dir=tmp_path / "cache")
    assert arrays["train_images"].shape == (200, 28, 28) and arrays["test_images"].shape == (50, 28, 28)
    assert arrays["train_images"].dtype == np.uint8
    assert np.bincount(arrays["train_labels"]).tolist() == [20] * 10
    # Each class carries its pattern: images of a class are closer to their class mean than to others'.
    images, labels = arrays["train_images"].reshape(200, -1).astype(float), arrays["train_labels"]
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    nearest = ((images[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == labels).mean() > 0.9


def test_the_rung_is_the_highest_whose_designs_fit_half_the_time_left(tmp_path) -> None:
    images = ProxyProtocol().train_size * ProxyProtocol().epochs

    def check_with(rate: float, left: float) -> Check:
        check = Check(tiny=False, out=tmp_path, device="cuda", deadline=time.monotonic() + left)
        check.figures["side_by_side"] = {"rows": [{"trials": 1, "images_per_s_sum": rate / 2},
                                                  {"trials": 8, "images_per_s_sum": rate}]}
        return check

    fits = lambda rate, rung, left: PAPER_DESIGNS * images * rung / rate <= 0.5 * (left - 60)
    assert fits(40_000, 10, 300) and pick_rung(check_with(40_000, 300)) == 10
    assert not fits(10_000, 10, 300) and fits(10_000, 3, 300) and pick_rung(check_with(10_000, 300)) == 3
    assert not fits(1_000, 1, 300) and pick_rung(check_with(1_000, 300)) is None
    assert pick_rung(Check(tiny=False, out=tmp_path, device="cuda", deadline=time.monotonic() + 300)) is None


def test_a_step_past_its_time_is_stopped_and_reads_124(tmp_path) -> None:
    started = time.monotonic()
    assert run_command(["sleep", "60"], 1.0, tmp_path / "log") == 124
    assert time.monotonic() - started < 20
    assert run_command([sys.executable, "-c", "raise SystemExit(3)"], 60.0, tmp_path / "log") == 3


@pytest.mark.slow
def test_the_tiny_device_check_runs_a_search_on_the_cpu(tmp_path) -> None:
    report = device_check(tmp_path, timeout=900)
    search = report["steps"]["search"]
    assert search["exit"] == 0 and search["trials_trained"] >= 1, search
    assert search["devices"] == (["cuda"] if torch.cuda.is_available() else ["cpu"])
