"""PVT v1 and LocalViT-PVT, re-implemented on timm 1.0 with per-block feed-forward designs.

PVT v1 ("Pyramid Vision Transformer", Wang et al., ICCV 2021) is not timm's PVT v2: four
stages with their own patch embedding and position embedding, keys and values reduced by a
strided conv (`sr`) in stages 1-3, and a class token in the last stage only. LocalViT-PVT puts
the locality FFN in every block; the class token bypasses it where it exists (stage 4).
State-dict keys are the official ones (`patch_embed{i}`, `pos_embed{i}`, `block{i}.{j}`).
The attention is timm's PVT v2 `Attention`, which is PVT v1's for non-linear attention.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from timm.layers import DropPath, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.pvt_v2 import Attention
from torch import nn

from .backbones import STAGE_PAPER_SPECS
from .layers import FeedForwardBlock
from .spec import ArchSpec, LayerSpec
from .stages import StageBackbone, drop_path_rates, stage_cfg

__all__ = ["PvtBlock", "PyramidVisionTransformer"]


class PvtBlock(FeedForwardBlock):
    """Spatial-reduction attention with pre-norm, then the spec's feed-forward design."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, layer: LayerSpec, grid_size: tuple[int, int],
                 num_prefix_tokens: int, norm_layer: Callable[[int], nn.Module], drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self._build_feed_forward(dim, layer, norm_layer, grid_size, num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), self.grid_size))
        return self._feed_forward(x, self.drop_path)


class PyramidVisionTransformer(StageBackbone):
    """PVT v1 whose every block follows one `LayerSpec` of a `pvt_*` spec."""

    family = "pvt"

    def __init__(self, spec: ArchSpec | dict | str, **kwargs: Any) -> None:
        super().__init__(spec, kwargs)
        preset, spec = self.preset, self.spec
        norm_layer = partial(nn.LayerNorm, eps=preset.layer_norm_eps)
        rates = drop_path_rates(spec)
        in_chans, img_size, patch = spec.in_chans, spec.img_size, spec.patch_size
        assert patch is not None  # PVT's stem has a patch
        last = len(preset.depths) - 1
        first_block = 0
        for stage, (depth, dim, heads, sr_ratio, geometry) in enumerate(
                zip(preset.depths, preset.dims, preset.num_heads, preset.sr_ratios, self.geometry)):
            num_prefix_tokens = 1 if stage == last else 0  # PVT v1: a class token in the last stage
            grid = (geometry.grid, geometry.grid)
            self.add_module(f"patch_embed{stage + 1}", PatchEmbed(
                img_size, patch, in_chans, dim, norm_layer=nn.LayerNorm, strict_img_size=True))
            self.register_parameter(f"pos_embed{stage + 1}", nn.Parameter(
                torch.zeros(1, geometry.grid ** 2 + num_prefix_tokens, dim)))
            self.add_module(f"block{stage + 1}", nn.ModuleList([
                PvtBlock(dim, heads, sr_ratio, spec.layers[first_block + i], grid, num_prefix_tokens, norm_layer,
                         rates[first_block + i]) for i in range(depth)]))
            first_block += depth
            in_chans, img_size, patch = dim, geometry.grid, 2
        self.norm = norm_layer(preset.dims[-1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, preset.dims[-1]))
        self.head = nn.Linear(preset.dims[-1], spec.num_classes) if spec.num_classes > 0 else nn.Identity()
        for stage in range(len(preset.depths)):
            trunc_normal_(getattr(self, f"pos_embed{stage + 1}"), std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        last = len(self.preset.depths) - 1
        for stage in range(len(self.geometry)):
            if stage:  # tokens back onto their grid for the next patch embedding
                x = x.transpose(1, 2).reshape(batch, -1, self.geometry[stage - 1].grid, self.geometry[stage - 1].grid)
            x = getattr(self, f"patch_embed{stage + 1}")(x)
            if stage == last:
                x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
            x = x + getattr(self, f"pos_embed{stage + 1}")
            for block in getattr(self, f"block{stage + 1}"):
                x = block(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _create(variant: str, spec: ArchSpec, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    return build_model_with_cfg(PyramidVisionTransformer, variant, pretrained, spec=spec, **kwargs)


default_cfgs = generate_default_cfgs({
    "pvt_v1_tiny.untrained": stage_cfg("patch_embed1.proj"),
    "localvit_pvt_tiny.untrained": stage_cfg("patch_embed1.proj"),
})


@register_model
def pvt_v1_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Tiny (PVT v1, not timm's v2), official keys. 13.23M params, 1.94 GFLOPs."""
    return _create("pvt_v1_tiny", STAGE_PAPER_SPECS["pvt_v1_tiny"], pretrained, **kwargs)


@register_model
def localvit_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """LocalViT-PVT: the locality FFN (h-swish, SE r=dim) in every block. 13.46M params, 2.01 GFLOPs."""
    return _create("localvit_pvt_tiny", STAGE_PAPER_SPECS["localvit_pvt_tiny"], pretrained, **kwargs)
