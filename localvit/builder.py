"""Build a model from an `ArchSpec`, whatever its backbone."""
from __future__ import annotations

from typing import Any

from torch import nn

from .layers import fold_batchnorm
from .spec import ArchSpec, as_spec
from .vision_transformer import LocalVisionTransformer

_BACKBONES: dict[str, type[nn.Module]] = {"vit": LocalVisionTransformer}


def build_model(spec: ArchSpec | dict | str, *, inference: bool = False, **kwargs: Any) -> nn.Module:
    """The model a spec describes; `inference=True` folds BatchNorm for fast evaluation."""
    spec = as_spec(spec)
    model = _BACKBONES[spec.backbone](spec, **kwargs)
    return fold_batchnorm(model) if inference else model
