"""Build a model from an `ArchSpec`, whatever its backbone."""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .layers import optimize_for_inference
from .pvt import PyramidVisionTransformer
from .spec import ArchSpec, as_spec, with_overrides
from .swin import SwinTransformer
from .t2t import TokensToTokenViT
from .tnt import TransformerInTransformer
from .vision_transformer import LocalVisionTransformer, _cfg

#: Model class per backbone family: `vit`, or the family of a stage preset (`localvit.presets`).
_BACKBONES: dict[str, type[nn.Module]] = {
    "vit": LocalVisionTransformer, "pvt": PyramidVisionTransformer, "swin": SwinTransformer,
    "tnt": TransformerInTransformer, "t2t": TokensToTokenViT,
}


def _model_class(spec: ArchSpec) -> type[nn.Module]:
    return _BACKBONES["vit" if spec.preset is None else spec.preset.family]


def build_model(spec: ArchSpec | dict | str, *, inference: bool = False, **kwargs: Any) -> nn.Module:
    """The model a spec describes; `inference=True` gives the inference mode (`optimize_for_inference`)."""
    spec = as_spec(spec)
    model = _model_class(spec)(spec, **kwargs)
    return optimize_for_inference(model) if inference else model


default_cfgs = generate_default_cfgs({"localvit_custom.untrained": _cfg()})


@register_model
def localvit_custom(pretrained: bool = False, spec: ArchSpec | dict | str | None = None, **kwargs: Any) -> nn.Module:
    """Any per-layer design of any backbone (`spec`: an ArchSpec, a dict, or a path to a spec or
    an exported `arch.json`), e.g. for timm's train.py with `--model-kwargs spec=...`."""
    if spec is None:
        raise ValueError("spec=None is invalid; accepted: an ArchSpec, a dict or a path to a spec JSON file")
    if pretrained:
        raise ValueError("pretrained=True is invalid for localvit_custom; accepted: False (a design has no weights)")
    spec = with_overrides(as_spec(spec), kwargs)
    if spec.preset is not None and not kwargs.get("drop_rate"):
        kwargs.pop("drop_rate", None)  # timm's train.py always passes drop_rate; the stage models have none
    # timm fills img_size, in_chans and num_classes from the cfg: make the cfg say what the spec says.
    overlay = {"input_size": (spec.in_chans, spec.img_size, spec.img_size), "num_classes": spec.num_classes,
               **(kwargs.pop("pretrained_cfg_overlay", None) or {})}
    return build_model_with_cfg(_model_class(spec), "localvit_custom", False, spec=spec,
                                pretrained_cfg_overlay=overlay, **kwargs)
