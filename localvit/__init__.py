"""LocalViT: locality-enhanced vision transformers on timm, and a per-layer builder.

Importing the package registers the models with timm (`timm.create_model("localvit_tiny")`,
`"localvit_pvt_tiny"`, `"localvit_swin_tiny_patch4_window7_224"`, `"localvit_tnt_t_patch16_224"`,
`"localvit_T2t_conv7"` and their baselines).
"""
from .backbones import (SEARCH_BACKBONES, STAGE_PAPER_SPECS, baseline_spec, block_dims, localvit_spec, make_spec,
                        proxy_spec)
from .builder import build_model
from .layers import LocalityFeedForward, fold_batchnorm, optimize_for_inference
from .spec import ACTIVATIONS, CHANNEL_ATTENTIONS, FFN_TYPES, ArchSpec, LayerSpec, as_spec
from .supernet import Supernet, recalibrate_bn
from .vision_transformer import PAPER_SPECS, LocalityBlock, LocalVisionTransformer

__all__ = [
    "ACTIVATIONS", "CHANNEL_ATTENTIONS", "FFN_TYPES", "PAPER_SPECS", "SEARCH_BACKBONES", "STAGE_PAPER_SPECS",
    "ArchSpec", "LayerSpec", "LocalityBlock", "LocalityFeedForward", "LocalVisionTransformer", "as_spec",
    "baseline_spec", "block_dims", "build_model", "fold_batchnorm", "localvit_spec", "make_spec",
    "optimize_for_inference", "proxy_spec", "recalibrate_bn", "Supernet",
]
