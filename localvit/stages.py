"""What the stage backbones (PVT, Swin, TNT, T2T) share: spec handling, classifier, init, timm cfg."""
from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from .presets import StageGeometry, StagePreset, stage_geometry
from .spec import SPEC_OVERRIDES, ArchSpec, as_spec, with_overrides

def spec_for_family(spec: ArchSpec | dict | str, family: str, kwargs: dict[str, Any]) -> ArchSpec:
    """The spec with the timm-style overrides popped from `kwargs` applied; nothing else may remain."""
    spec = as_spec(spec)
    if spec.preset is None or spec.preset.family != family:
        raise ValueError(f"backbone={spec.backbone!r} is invalid here; accepted: a {family} preset")
    spec = with_overrides(spec, kwargs)
    if kwargs:
        key = sorted(kwargs)[0]
        raise ValueError(f"{key}={kwargs[key]!r} cannot be passed to a {family} model; accepted: "
                         f"{', '.join(SPEC_OVERRIDES)} (set the rest in the spec)")
    return spec


def drop_path_rates(spec: ArchSpec) -> list[float]:
    """Stochastic depth rising linearly over all blocks (every official backbone does this)."""
    return torch.linspace(0, spec.drop_path_rate, spec.depth).tolist()


class StageBackbone(nn.Module):
    """Base of PVT, Swin and T2T: the spec, its preset and geometry, and a linear classifier."""

    family: str = ""

    def __init__(self, spec: ArchSpec | dict | str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec_for_family(spec, self.family, kwargs)
        assert self.spec.preset is not None  # spec_for_family checked it
        self.preset: StagePreset = self.spec.preset
        self.geometry: list[StageGeometry] = stage_geometry(
            self.preset, self.spec.img_size, self.spec.patch_size, self.spec.window_size)
        self.num_classes = self.spec.num_classes
        self.num_features = self.head_hidden_size = self.preset.dims[-1]

    def _init_weights(self) -> None:
        """Truncated-normal linear layers with zero bias, as every official backbone initialises."""
        self.apply(init_weights_vit_timm)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def stage_cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg of a stage backbone (no weights are downloaded unless asked for)."""
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": first_conv, "classifier": "head", "license": "mit", **kwargs,
    }
