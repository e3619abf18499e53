"""How proxy training runs on this machine: the precision (`auto` resolves by device),
the device's set-up, and what a trial needs of a GPU's memory (jemalloc: `proxy.allocator`).

On the CPU, bf16 autocast pays only where the CPU computes bf16 natively (AVX512-BF16 or AMX:
about 1.4x fp32 for a LocalViT-T proxy); on AVX2-only CPUs oneDNN falls back to slow kernels,
10-60x slower than fp32 (measured on this project's machines, which are of both kinds), so
`auto` means fp32 there. On a CUDA GPU `auto` is bf16 autocast where the GPU supports bf16
(Ampere and later), fp32 elsewhere, and fp32 matrix products run on TF32 tensor cores
(`prepare_device`). Every study records what `auto` resolved to and on which device
(docs/gpu.md; the GPU path has not run on a GPU yet).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from localvit.host import device_name

PRECISIONS = ("auto", "fp32", "bf16")
#: GPU memory a training process holds before its first tensor (CUDA context, cuBLAS/cuDNN
#: workspaces): about 0.5 GiB with torch 2.x; rounded up.
CUDA_CONTEXT_BYTES = 1 << 30


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """`auto` on `device`: on a CUDA GPU bf16 autocast where it supports bf16, on the CPU where it
    computes bf16 natively (oneDNN: AVX512-BF16 or AMX); fp32 elsewhere (the module's docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid; accepted: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if cuda_bf16() else "fp32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def cuda_bf16() -> bool:
    """Whether the current CUDA GPU computes bf16 (False without one)."""
    try:
        return torch.cuda.is_available() and bool(torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):  # a broken driver answers like no GPU
        return False


def prepare_device(precision: str, device: str = "cpu") -> str:
    """`precision` resolved for `device` (`resolve_precision`), the device set up to train: on CUDA,
    fp32 matrix products and convolutions on TF32 tensor cores (bf16 autocast is unaffected); the
    CPU is left as it is."""
    resolved = resolve_precision(precision, device)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return resolved


def precision_record(precision: str, device: str = "cpu") -> dict[str, Any]:
    """What `precision` resolves to for trials on `device` and why (`auto` differs from one device
    to the next): stored with a study, so that a study resumed elsewhere can say it changed."""
    record: dict[str, Any] = {"requested": precision, "resolved": resolve_precision(precision, device),
                              "cpu": cpu_name(),
              "device": "cpu"}
    if torch.device(device).type == "cuda":
        record["device"] = f"cuda: {device_name(device)}" if torch.cuda.is_available() else "cuda"
        record["tf32"] = True
    return record


def cpu_name() -> str:
    """The processor's model name and whether oneDNN computes bf16 natively on it."""
    name = device_name("cpu").removeprefix("cpu: ")
    return f"{name}, {'native' if resolve_precision('auto') == 'bf16' else 'no native'} bf16"


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """bf16 autocast on `device` when `precision` (resolved) is bf16, a no-op otherwise."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_bytes(model: nn.Module, batch: int, img_size: int, in_chans: int, probe_batch: int = 8) -> int:
    """Device memory one training step of `model` at `batch` needs, measured on the CPU: the
    tensors autograd keeps for the backward pass in one fp32 forward at `probe_batch` (scaled to
    `batch`; they grow with it linearly), plus weights, gradients and AdamW's two moments
    (16 bytes a parameter). The same on any device, as it counts bytes, not time."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # counted below
    seen: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    probe = min(batch, probe_batch)
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(torch.zeros(probe, in_chans, img_size, img_size)).sum()
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return int(sum(seen.values()) * batch / probe) + 16 * params


__all__ = ["CUDA_CONTEXT_BYTES", "PRECISIONS", "autocast", "cpu_name",
           "cuda_bf16", "precision_record", "prepare_device", "resolve_precision", "training_bytes"]
