"""The terms every closed-form cost is a sum of, in fvcore's conventions (see `space.cost`): one
linear or convolution layer, a norm, attention, each kind of FFN. `space.cost` prices the plain
ViT with them and `space.stage_costs` the stage backbones."""
from __future__ import annotations

from dataclasses import dataclass

from localvit.layers import eca_kernel_size
from localvit.spec import LayerSpec

LAYER_NORM_FLOPS = 5
BATCH_NORM_FLOPS = 2


@dataclass(frozen=True)
class Cost:
    """FLOPs (multiply-adds) of one image's forward pass, and the parameter count."""

    flops: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params)


ZERO = Cost(0, 0)


def layer_norm(dim: int, tokens: int) -> Cost:
    return Cost(LAYER_NORM_FLOPS * dim * tokens, 2 * dim)


def linear(in_features: int, out_features: int, tokens: int, bias: bool = True) -> Cost:
    return Cost(in_features * out_features * tokens, in_features * out_features + (out_features if bias else 0))


def conv2d(in_chans: int, out_chans: int, kernel: int, out_pixels: int, groups: int = 1, bias: bool = True) -> Cost:
    weights = out_chans * (in_chans // groups) * kernel * kernel
    return Cost(weights * out_pixels, weights + (out_chans if bias else 0))


def batch_norm(chans: int, pixels: int) -> Cost:
    return Cost(BATCH_NORM_FLOPS * chans * pixels, 2 * chans)


def attention(dim: int, tokens: int, qkv_bias: bool = True) -> Cost:
    """Multi-head self-attention: qkv, the two matmuls (independent of the head count), proj."""
    matmuls = Cost(2 * tokens * tokens * dim, 0)
    return linear(dim, 3 * dim, tokens, qkv_bias) + matmuls + linear(dim, dim, tokens)


def mlp_ffn(layer: LayerSpec, dim: int, tokens: int) -> Cost:
    """DeiT MLP with its LayerNorm, over every token."""
    hidden = layer.hidden_dim(dim)
    return layer_norm(dim, tokens) + linear(dim, hidden, tokens) + linear(hidden, dim, tokens)


def locality_ffn(layer: LayerSpec, dim: int, pixels: int) -> Cost:
    """The locality FFN (`conv` or `local`) on a grid of `pixels` positions."""
    hidden = layer.hidden_dim(dim)
    cost = conv2d(dim, hidden, 1, pixels, bias=False) + batch_norm(hidden, pixels)
    if layer.kernel is not None:  # the `local` FFN's depth-wise conv
        cost += conv2d(hidden, hidden, layer.kernel, pixels, groups=hidden, bias=False) + batch_norm(hidden, pixels)
    if layer.se_ratio is not None:  # SE
        squeezed = hidden // layer.se_ratio
        cost += Cost(hidden * pixels, 0) + linear(hidden, squeezed, 1) + linear(squeezed, hidden, 1)
    elif layer.attn == "eca":
        k = eca_kernel_size(hidden)
        cost += Cost(hidden * pixels + hidden * k, k)
    return cost + conv2d(hidden, dim, 1, pixels, bias=False) + batch_norm(dim, pixels)


def ffn(layer: LayerSpec, dim: int, pixels: int, prefix_tokens: int = 0) -> Cost:
    """Any FFN of a block with `pixels` image tokens; prefix (class) tokens pass the MLP only."""
    if layer.ffn == "mlp":
        return mlp_ffn(layer, dim, pixels + prefix_tokens)
    return locality_ffn(layer, dim, pixels)
