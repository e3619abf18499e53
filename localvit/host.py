"""The machine and the checkout a run is on: what a result records (the device, the commit) and
how many CPU threads a training takes. Low in the layers because the throughput measurement, the
proxy training, the ImageNet trainer and the benchmarks all use it."""
from __future__ import annotations

import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]


def device_name(device: str | torch.device) -> str:
    """A name that identifies the hardware: the GPU's name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside (None: left as they are), restored after:
    two 1-thread trainings side by side beat one 2-thread training on 2 cores."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def git_state() -> dict[str, Any] | None:
    """The commit of this checkout and whether tracked files differ from it (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


__all__ = ["cpu_threads", "device_name", "git_state"]
