"""Exact closed-form cost model: FLOPs and parameters of a spec without building it.

Conventions are fvcore's (the paper's "FLOPs"): one multiply-add is one FLOP; linear and
convolution layers count their multiply-adds, attention's two matmuls are counted,
LayerNorm counts 5 per element, BatchNorm in eval mode 2 per element, adaptive average
pooling 1 per input element; activations, softmax, residual adds and gates count nothing.
Tests hold every formula to fvcore's count of the built model.
"""
from __future__ import annotations

from typing import Callable

from localvit.spec import ArchSpec

from .cost_terms import Cost, attention, conv2d, ffn, layer_norm, linear
from .stage_costs import FAMILY_COSTS

TARGET_IMG_SIZE = 224
TARGET_NUM_CLASSES = 1000
TARGET_IN_CHANS = 3


def _vit_cost(spec: ArchSpec) -> Cost:
    dim = spec.embed_dim
    assert dim is not None and spec.patch_size is not None  # set for `vit`
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
    if spec.preset is not None and spec.preset.family in FAMILY_COSTS:
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
