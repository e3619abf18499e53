"""LocalViT on the DeiT backbone, re-implemented on timm 1.0.

Each block takes its own feed-forward design from an `ArchSpec`: `mlp` blocks are timm's
DeiT `Block` unchanged; `conv` and `local` blocks keep the attention half and replace
LayerNorm + MLP by the locality FFN applied to the image tokens on their grid, the class
token bypassing it and DropPath only on attention, as in the official code.

Paper: "LocalViT: Analyzing Locality in Vision Transformers", Li et al., IROS 2023.
Official code: https://github.com/ofsoundof/LocalViT (MIT).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from .layers import LocalityFeedForward
from .spec import ArchSpec, LayerSpec, as_spec, with_overrides

__all__ = ["LocalityBlock", "LocalVisionTransformer"]


class LocalityBlock(nn.Module):
    """Attention with pre-norm, then the locality FFN on the image tokens (no norm, no DropPath)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            layer: LayerSpec,
            grid_size: tuple[int, int],
            num_prefix_tokens: int = 1,
            qkv_bias: bool = True,
            drop_path: float = 0.0,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.conv = LocalityFeedForward(dim, layer)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        return self.conv.forward_tokens(x, self.grid_size, self.num_prefix_tokens)


def _make_block(spec: ArchSpec, *, dim: int, num_heads: int, qkv_bias: bool, drop_path: float, attn_drop: float,
                proj_drop: float, norm_layer: type[nn.Module], depth: int, **_: Any) -> nn.Module:
    """The `block_fn` timm's VisionTransformer calls with the block index as `depth`."""
    layer = spec.layers[depth]
    if layer.ffn == "mlp":
        return Block(dim, num_heads, mlp_ratio=layer.gamma, qkv_bias=qkv_bias, proj_drop=proj_drop,
                     attn_drop=attn_drop, drop_path=drop_path, norm_layer=norm_layer, act_layer=nn.GELU)
    return LocalityBlock(dim, num_heads, layer, spec.grid_size, qkv_bias=qkv_bias, drop_path=drop_path,
                         attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer)


class LocalVisionTransformer(VisionTransformer):
    """A DeiT-style ViT whose every block follows one `LayerSpec` of `spec`."""

    def __init__(self, spec: ArchSpec | dict | str, **kwargs: Any) -> None:
        spec = as_spec(spec)
        spec = with_overrides(spec, kwargs)
        for key in ("embed_dim", "depth", "num_heads", "patch_size", "block_fn", "mlp_ratio"):
            if key in kwargs:
                raise ValueError(f"{key}={kwargs[key]!r} cannot be passed to LocalVisionTransformer; "
                                 f"accepted: set it in the spec")
        self.spec = spec
        assert spec.embed_dim is not None and spec.num_heads is not None and spec.patch_size is not None
        super().__init__(
            img_size=spec.img_size, patch_size=spec.patch_size, in_chans=spec.in_chans,
            num_classes=spec.num_classes, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, qkv_bias=True, drop_path_rate=spec.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            # timm annotates block_fn as a class; it only calls it, as it does norm_layer.
            block_fn=partial(_make_block, spec), **kwargs)  # type: ignore[arg-type]


# --- registered models ------------------------------------------------------------------

def _vit_spec(layer: LayerSpec, embed_dim: int, num_heads: int, depth: int = 12) -> ArchSpec:
    return ArchSpec.uniform(layer, depth=depth, embed_dim=embed_dim, num_heads=num_heads)


#: The paper's models as specs (224x224, 1000 classes). The names are the registered ones.
PAPER_SPECS: dict[str, ArchSpec] = {
    "localvit_tiny": _vit_spec(LayerSpec("local", "hswish", "se", se_ratio=192), 192, 4),
    "localvit_tiny_se4": _vit_spec(LayerSpec("local", "hswish", "se", se_ratio=4), 192, 4),
    "localvit_tiny_relu6_mlp6": _vit_spec(LayerSpec("local", "relu6", gamma=6), 192, 4),
    "localvit_small": _vit_spec(LayerSpec("local", "hswish", "se", se_ratio=384), 384, 8),
    "localvit_deit_tiny": _vit_spec(LayerSpec("mlp"), 192, 3),
    "localvit_deit_small": _vit_spec(LayerSpec("mlp"), 384, 6),
}

#: Official registered names of the same models, so the official commands keep working.
OFFICIAL_NAMES = {
    "localvit_tiny_mlp4_act3_r192": "localvit_tiny",
    "localvit_tiny_mlp4_act3_r4": "localvit_tiny_se4",
    "localvit_tiny_mlp6_act1": "localvit_tiny_relu6_mlp6",
    "localvit_small_mlp4_act3_r384": "localvit_small",
}

_RELEASE = "https://github.com/ofsoundof/LocalViT/releases/download/v1.0.0/"


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "mit", **kwargs,
    }


#: The official ImageNet weights (MIT); timm downloads them only when asked for `pretrained=True`.
_OFFICIAL_WEIGHTS = {"localvit_tiny": "localvit_t.pth", "localvit_tiny_se4": "localvit_t_se4.pth",
                     "localvit_small": "localvit_s.pth"}
_NAMES = {**{name: name for name in PAPER_SPECS}, **OFFICIAL_NAMES}  # registered name -> spec name

default_cfgs = generate_default_cfgs({
    **{f"{name}.in1k" if spec_name in _OFFICIAL_WEIGHTS else f"{name}.untrained":
       _cfg(_RELEASE + _OFFICIAL_WEIGHTS[spec_name] if spec_name in _OFFICIAL_WEIGHTS else "")
       for name, spec_name in _NAMES.items()},
})


def _checkpoint_filter(state_dict: dict[str, Any], model: VisionTransformer) -> dict[str, Any]:
    """Official checkpoints are DeiT training states: unwrap `model`, then timm's ViT filter."""
    state_dict = state_dict.get("model", state_dict)
    return checkpoint_filter_fn(state_dict, model)


def _create(variant: str, spec: ArchSpec, pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    # timm fills img_size, in_chans and num_classes from the cfg: make the cfg say what the spec says.
    overlay = {"input_size": (spec.in_chans, spec.img_size, spec.img_size), "num_classes": spec.num_classes,
               **(kwargs.pop("pretrained_cfg_overlay", None) or {})}
    return build_model_with_cfg(
        LocalVisionTransformer, variant, pretrained, spec=spec, pretrained_filter_fn=_checkpoint_filter,
        pretrained_cfg_overlay=overlay, feature_cfg=dict(out_indices=3, feature_cls="getter"), **kwargs)


@register_model
def localvit_tiny(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T: h-swish + SE (4 channels, r=192), gamma 4, 4 heads. 5.91M params, 1.28 GFLOPs."""
    return _create("localvit_tiny", PAPER_SPECS["localvit_tiny"], pretrained, **kwargs)


@register_model
def localvit_tiny_se4(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T-SE4: SE with r=4 (192 channels). 9.38M params."""
    return _create("localvit_tiny_se4", PAPER_SPECS["localvit_tiny_se4"], pretrained, **kwargs)


@register_model
def localvit_tiny_relu6_mlp6(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-T with ReLU6, gamma 6, no SE (Table I). 7.66M params."""
    return _create("localvit_tiny_relu6_mlp6", PAPER_SPECS["localvit_tiny_relu6_mlp6"], pretrained, **kwargs)


@register_model
def localvit_small(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """LocalViT-S: h-swish + SE (r=384), gamma 4, 8 heads. 22.43M params."""
    return _create("localvit_small", PAPER_SPECS["localvit_small"], pretrained, **kwargs)


@register_model
def localvit_deit_tiny(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """DeiT-T made by the per-layer builder (every block `mlp`). 5.72M params."""
    return _create("localvit_deit_tiny", PAPER_SPECS["localvit_deit_tiny"], pretrained, **kwargs)


@register_model
def localvit_deit_small(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """DeiT-S made by the per-layer builder (every block `mlp`). 22.05M params."""
    return _create("localvit_deit_small", PAPER_SPECS["localvit_deit_small"], pretrained, **kwargs)


@register_model
def localvit_tiny_mlp4_act3_r192(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """Official name of `localvit_tiny`. LocalViT-T: h-swish + SE (4 channels, r=192), gamma 4, 4 heads.
    5.91M params, 1.28 GFLOPs."""
    return _create("localvit_tiny_mlp4_act3_r192", PAPER_SPECS["localvit_tiny"], pretrained, **kwargs)


@register_model
def localvit_tiny_mlp4_act3_r4(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """Official name of `localvit_tiny_se4`. LocalViT-T-SE4: SE with r=4 (192 channels). 9.38M params."""
    return _create("localvit_tiny_mlp4_act3_r4", PAPER_SPECS["localvit_tiny_se4"], pretrained, **kwargs)


@register_model
def localvit_tiny_mlp6_act1(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """Official name of `localvit_tiny_relu6_mlp6`. LocalViT-T with ReLU6, gamma 6, no SE (Table I). 7.66M params."""
    return _create("localvit_tiny_mlp6_act1", PAPER_SPECS["localvit_tiny_relu6_mlp6"], pretrained, **kwargs)


@register_model
def localvit_small_mlp4_act3_r384(pretrained: bool = False, **kwargs: Any) -> LocalVisionTransformer:
    """Official name of `localvit_small`. LocalViT-S: h-swish + SE (r=384), gamma 4, 8 heads. 22.43M params."""
    return _create("localvit_small_mlp4_act3_r384", PAPER_SPECS["localvit_small"], pretrained, **kwargs)
