"""Measured inference throughput of a spec, cached on disk, usable as a search constraint.

A measurement builds the model in inference mode (`optimize_for_inference`), runs warm-up batches,
then reports the median images/s of several timed batches. On CPU it runs with a fixed
thread count (1 by default, the way search trials run side by side) and says so, because
the figure depends on it more than on anything else.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from localvit import ArchSpec, build_model
from localvit.host import cpu_threads, device_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Throughput:
    """One measurement: images/s (median over `repeats` timed batches) and its conditions."""

    images_per_s: float
    batch: int
    img_size: int
    dtype: str
    device: str
    threads: int | None
    repeats: int
    seconds: float  # wall time of the whole measurement, build included


def _check(batch: int, img_size: int, dtype: str, warmup: int, repeats: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid; accepted: {', '.join(DTYPES)}")
    for name, value, low in (("batch", batch, 1), ("img_size", img_size, 1), ("warmup", warmup, 0),
                             ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is invalid; accepted: an integer >= {low}")


@torch.inference_mode()
def measure_model(model: nn.Module, *, batch: int = 64, img_size: int = 224, in_chans: int = 3,
                  device: str = "cpu", dtype: str = "float32", warmup: int = 2, repeats: int = 5,
                  threads: int | None = 1) -> Throughput:
    """Images/s of `model` in eval mode under `torch.inference_mode`; the model is moved to `device`."""
    _check(batch, img_size, dtype, warmup, repeats)
    start = time.perf_counter()
    dev = torch.device(device)
    model = model.eval().to(dev)
    x = torch.randn(batch, in_chans, img_size, img_size, device=dev)
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype], enabled=dtype != "float32")
    timings = []
    with cpu_threads(threads if dev.type == "cpu" else None), autocast:
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                timings.append(time.perf_counter() - t0)
    return Throughput(images_per_s=batch / statistics.median(timings), batch=batch, img_size=img_size, dtype=dtype,
                      device=device_name(dev), threads=threads if dev.type == "cpu" else None, repeats=repeats,
                      seconds=time.perf_counter() - start)


def default_cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "localvit-nas" / "throughput.jsonl"


#: Bumped when what `measure` times changes, so that figures cached before are not reused.
MEASUREMENT_VERSION = 2  # 2: the inference mode fuses activations into the convolutions


def _cache_key(spec: ArchSpec, device: str, batch: int, img_size: int, dtype: str, threads: int | None) -> str:
    import timm

    return json.dumps([MEASUREMENT_VERSION, spec.id, device_name(device), batch, img_size, dtype, threads,
                       torch.__version__, timm.__version__])


def measure(spec: ArchSpec, *, device: str = "cpu", batch: int = 64, img_size: int = 224, dtype: str = "float32",
            threads: int | None = 1, warmup: int = 2, repeats: int = 5,
            cache: Path | None | bool = True) -> Throughput:
    """Throughput of `spec` at `img_size` (its classes and channels kept), cached on disk.

    The cache key is (spec id, device name, batch, resolution, dtype, threads, torch and timm
    versions); `cache=False` measures afresh, a path chooses the cache file.
    """
    _check(batch, img_size, dtype, warmup, repeats)
    path = default_cache_path() if cache is True else (Path(cache) if cache else None)
    key = _cache_key(spec, device, batch, img_size, dtype, threads)
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["key"] == key:
                return Throughput(**entry["result"])
    model = build_model(spec.replace(img_size=img_size), inference=True)
    result = measure_model(model, batch=batch, img_size=img_size, in_chans=spec.in_chans, device=device,
                           dtype=dtype, warmup=warmup, repeats=repeats, threads=threads)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"key": key, "result": asdict(result)}) + "\n")
    return result
