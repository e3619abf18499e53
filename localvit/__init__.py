"""LocalViT: locality-enhanced vision transformers on timm, and a per-layer builder.

Importing the package registers the models with timm (`timm.create_model("localvit_tiny")`).
"""
from .builder import build_model
from .layers import LocalityFeedForward, fold_batchnorm
from .spec import ACTIVATIONS, CHANNEL_ATTENTIONS, FFN_TYPES, ArchSpec, LayerSpec, as_spec
from .vision_transformer import PAPER_SPECS, LocalityBlock, LocalVisionTransformer

__all__ = [
    "ACTIVATIONS", "CHANNEL_ATTENTIONS", "FFN_TYPES", "PAPER_SPECS", "ArchSpec", "LayerSpec", "LocalityBlock",
    "LocalityFeedForward", "LocalVisionTransformer", "as_spec", "build_model", "fold_batchnorm",
]
