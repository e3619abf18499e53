"""Exact closed-form cost model: FLOPs and parameters of a spec without building it.

Conventions are fvcore's (the paper's "FLOPs"): one multiply-add is one FLOP; linear and
convolution layers count their multiply-adds, attention's two matmuls are counted,
LayerNorm counts 5 per element, BatchNorm in eval mode 2 per element, adaptive average
pooling 1 per input element; activations, softmax, residual adds and gates count nothing.
Tests hold every formula to fvcore's count of the built model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from localvit.layers import eca_kernel_size
from localvit.spec import ArchSpec, LayerSpec

TARGET_IMG_SIZE = 224
TARGET_NUM_CLASSES = 1000
TARGET_IN_CHANS = 3
LAYER_NORM_FLOPS = 5
BATCH_NORM_FLOPS = 2


@dataclass(frozen=True)
class Cost:
    """FLOPs (multiply-adds) of one image's forward pass, and the parameter count."""

    flops: int
    params: int

    def __add__(self, other: "Cost") -> "Cost":
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
    if layer.ffn == "local":
        cost += conv2d(hidden, hidden, layer.kernel, pixels, groups=hidden, bias=False) + batch_norm(hidden, pixels)
    if layer.attn == "se":
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


def _vit_cost(spec: ArchSpec) -> Cost:
    dim = spec.embed_dim
    pixels = spec.grid_size[0] * spec.grid_size[1]
    tokens = pixels + 1
    cost = conv2d(spec.in_chans, dim, spec.patch_size, pixels) + Cost(0, dim + tokens * dim)  # cls, pos_embed
    for layer in spec.layers:
        cost += layer_norm(dim, tokens) + attention(dim, tokens) + ffn(layer, dim, pixels, prefix_tokens=1)
    return cost + layer_norm(dim, tokens) + linear(dim, spec.num_classes, 1)


_BACKBONE_COSTS: dict[str, Callable[[ArchSpec], Cost]] = {"vit": _vit_cost}
_MEMO: dict[ArchSpec, Cost] = {}


def register_backbone_cost(backbone: str, fn: Callable[[ArchSpec], Cost]) -> None:
    """Let a backbone module supply its closed-form cost."""
    _BACKBONE_COSTS[backbone] = fn


def _cost_function(spec: ArchSpec) -> Callable[[ArchSpec], Cost]:
    """A registered cost, else the formula of the spec's stage-backbone family (`space.stage_costs`)."""
    if spec.backbone in _BACKBONE_COSTS:
        return _BACKBONE_COSTS[spec.backbone]
    if spec.preset is not None:
        from .stage_costs import FAMILY_COSTS  # imported here: it builds on this module's helpers
        if spec.preset.family in FAMILY_COSTS:
            return FAMILY_COSTS[spec.preset.family]
    raise ValueError(f"backbone={spec.backbone!r} has no cost model; accepted: "
                     f"{', '.join(sorted(_BACKBONE_COSTS))} and the stage presets")


def model_cost(spec: ArchSpec) -> Cost:
    """Cost of the spec as given (its own resolution, channels and classes), memoised.

    The memo is keyed by the frozen spec's value, which is what its id hashes: equal specs
    have equal ids, and hashing the value avoids serialising every new spec to JSON.
    """
    cost = _MEMO.get(spec)
    if cost is None:
        cost = _MEMO[spec] = _cost_function(spec)(spec)
    return cost


def at_resolution(spec: ArchSpec, img_size: int = TARGET_IMG_SIZE, num_classes: int = TARGET_NUM_CLASSES,
                  in_chans: int = TARGET_IN_CHANS) -> ArchSpec:
    """The same design at another input size (the target task by default)."""
    return spec.replace(img_size=img_size, num_classes=num_classes, in_chans=in_chans)


def target_cost(spec: ArchSpec) -> Cost:
    """Cost at the target task: 224x224 RGB, 1000 classes (the paper's setting)."""
    return model_cost(at_resolution(spec))
