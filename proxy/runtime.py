"""How proxy training runs on this machine: the precision (`auto` resolves by CPU)
and jemalloc for the processes that train.

bf16 autocast pays only where the CPU computes bf16 natively (AVX512-BF16 or AMX: about 1.4x
fp32 for a LocalViT-T proxy); on AVX2-only CPUs oneDNN falls back to slow kernels, 10-60x
slower than fp32 (measured on this project's machines, which are of both kinds), so `auto`
means fp32 there. Every study records what `auto` resolved to and on which processor.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from localvit.host import device_name

PRECISIONS = ("auto", "fp32", "bf16")
JEMALLOC_PATH = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 autocast where the CPU computes bf16 natively (oneDNN: AVX512-BF16 or AMX), fp32
    elsewhere (see the module's docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid; accepted: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def precision_record(precision: str) -> dict[str, Any]:
    """What `precision` resolves to on this machine and why (`auto` differs from one CPU to the
    next): stored with a study, so that a study resumed elsewhere can say it changed."""
    return {"requested": precision, "resolved": resolve_precision(precision), "cpu": cpu_name()}


def cpu_name() -> str:
    """The processor's model name and whether oneDNN computes bf16 natively on it."""
    name = device_name("cpu").removeprefix("cpu: ")
    return f"{name}, {'native' if resolve_precision('auto') == 'bf16' else 'no native'} bf16"


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """bf16 autocast on `device` when `precision` (resolved) is bf16, a no-op otherwise."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def jemalloc_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (e.g. a Ray worker's ``runtime_env["env_vars"]``) that
    preloads jemalloc when it is installed (Debian ``libjemalloc2``); unchanged otherwise."""
    env = dict(os.environ if env is None else env)
    if Path(JEMALLOC_PATH).is_file() and JEMALLOC_PATH not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(x for x in (JEMALLOC_PATH, env.get("LD_PRELOAD", "")) if x)
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


__all__ = ["JEMALLOC_CONF", "JEMALLOC_PATH", "PRECISIONS", "autocast", "cpu_name", "jemalloc_env",
           "precision_record", "resolve_precision"]
