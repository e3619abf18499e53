"""The official LocalViT FLOP counter's rules (its `flops_counter.py`, ptflops-style), re-done
as forward hooks on our modules: an independent second count for the paper's FLOP columns.

Its rules differ from fvcore's: LayerNorm and GELU count nothing; ReLU/ReLU6 count one per
output element (the official h-swish and h-sigmoid contain a ReLU6, so they count too); a
Linear's bias counts once per call; eval BatchNorm counts 2 per element; average pooling one
per input element; attention adds its two matmuls.
"""
from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from localvit.layers import EfficientChannelAttention, SqueezeExcite


def paper_flops(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> int:
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        x = inputs[0]
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            per_position = math.prod(module.kernel_size) * module.in_channels // module.groups * module.out_channels
            positions = math.prod(output.shape[2:]) * output.shape[0]
            total += per_position * positions + (module.out_channels * positions if module.bias is not None else 0)
        elif isinstance(module, nn.Linear):
            total += x.numel() * module.out_features + (module.out_features if module.bias is not None else 0)
        elif isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid)):
            total += output.numel()
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * x.numel()
        elif isinstance(module, (SqueezeExcite, EfficientChannelAttention)):
            total += x.numel()  # the adaptive average pool
        elif isinstance(module, Attention):
            batch, tokens, dim = x.shape
            total += 2 * batch * tokens * tokens * dim

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, img_size, img_size))
    for handle in handles:
        handle.remove()
    return total
