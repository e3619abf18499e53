"""Build a model from an `ArchSpec`, whatever its backbone."""
from __future__ import annotations

from typing import Any

from torch import nn

from .layers import fold_batchnorm
from .pvt import PyramidVisionTransformer
from .spec import ArchSpec, as_spec
from .swin import SwinTransformer
from .t2t import TokensToTokenViT
from .tnt import TransformerInTransformer
from .vision_transformer import LocalVisionTransformer

#: Model class per backbone family: `vit`, or the family of a stage preset (`localvit.presets`).
_BACKBONES: dict[str, type[nn.Module]] = {
    "vit": LocalVisionTransformer, "pvt": PyramidVisionTransformer, "swin": SwinTransformer,
    "tnt": TransformerInTransformer, "t2t": TokensToTokenViT,
}


def build_model(spec: ArchSpec | dict | str, *, inference: bool = False, **kwargs: Any) -> nn.Module:
    """The model a spec describes; `inference=True` folds BatchNorm for fast evaluation."""
    spec = as_spec(spec)
    family = "vit" if spec.preset is None else spec.preset.family
    model = _BACKBONES[family](spec, **kwargs)
    return fold_batchnorm(model) if inference else model
