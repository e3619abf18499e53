"""TNT and LocalViT-TNT on timm's own TNT, with per-block outer feed-forward designs.

The official TNT used by LocalViT is timm's TNT in its `legacy` layout (pixel stem conv then
unfold, `blocks.{i}.proj` with bias, no second projection norm), so the model is timm's class;
only the blocks change. The locality goes into the outer (patch) transformer only: a
locality block keeps the inner transformer and the outer attention and replaces the outer
`norm_mlp` + `mlp` by the locality FFN on the patch grid, the class token bypassing it.
TNT-T is TNT-S at embedding width 192 (inner width 12, 3 inner and 3 outer heads).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.tnt import TNT, Block
from torch import nn

from .backbones import STAGE_PAPER_SPECS
from .layers import LocalityFeedForward
from .presets import stage_geometry
from .spec import ArchSpec, LayerSpec
from .stages import drop_path_rates, spec_for_family, stage_cfg

__all__ = ["LocalityTntBlock", "TransformerInTransformer"]


class LocalityTntBlock(Block):
    """timm's legacy TNT block with the outer MLP replaced by the locality FFN (no DropPath on it)."""

    def __init__(self, layer: LayerSpec, grid_size: tuple[int, int], **block_kwargs: Any) -> None:
        super().__init__(legacy=True, **block_kwargs)
        del self.norm_mlp, self.mlp
        self.grid_size = grid_size
        self.conv = LocalityFeedForward(block_kwargs["dim_out"], layer)

    def forward(self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        batch, num_tokens, _ = patch_embed.shape
        pixels_to_patch = self.proj(self.norm1_proj(pixel_embed).reshape(batch, num_tokens - 1, -1))
        patch_embed = torch.cat([patch_embed[:, :1], patch_embed[:, 1:] + pixels_to_patch], dim=1)
        patch_embed = patch_embed + self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        return pixel_embed, self.conv.forward_tokens(patch_embed, self.grid_size, num_prefix_tokens=1)


class TransformerInTransformer(TNT):
    """timm's legacy TNT whose every block follows one `LayerSpec` of a `tnt_*` spec."""

    def __init__(self, spec: ArchSpec | dict | str, **kwargs: Any) -> None:
        spec = spec_for_family(spec, "tnt", kwargs)
        preset = spec.preset
        assert preset and preset.inner_dim and preset.inner_heads and preset.first_stride and spec.patch_size
        dim = preset.dims[0]
        super().__init__(
            img_size=spec.img_size, patch_size=spec.patch_size, in_chans=spec.in_chans,
            num_classes=spec.num_classes, embed_dim=dim, inner_dim=preset.inner_dim, depth=0,
            num_heads_inner=preset.inner_heads, num_heads_outer=preset.num_heads[0], qkv_bias=False,
            first_stride=preset.first_stride, legacy=True)
        self.spec = spec
        grid = stage_geometry(preset, spec.img_size, spec.patch_size)[0].grid
        num_pixel = self.pixel_embed.new_patch_size[0] * self.pixel_embed.new_patch_size[1]
        blocks = []
        for layer, rate in zip(spec.layers, drop_path_rates(spec)):
            block_kwargs: dict[str, Any] = dict(dim=preset.inner_dim, dim_out=dim, num_pixel=num_pixel,
                                num_heads_in=preset.inner_heads, num_heads_out=preset.num_heads[0],
                                qkv_bias=False, drop_path=rate, norm_layer=nn.LayerNorm)
            if layer.ffn == "mlp":
                blocks.append(Block(mlp_ratio=layer.gamma, legacy=True, **block_kwargs))
            else:
                blocks.append(LocalityTntBlock(layer, (grid, grid), **block_kwargs))
        self.blocks = nn.ModuleList(blocks)
        reduction = self.pixel_embed.feat_ratio()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=dim, reduction=reduction) for i in range(len(blocks))]
        self.blocks.apply(self._init_weights)


def _create(variant: str, spec: ArchSpec, pretrained: bool = False, **kwargs: Any) -> TransformerInTransformer:
    return build_model_with_cfg(TransformerInTransformer, variant, pretrained, spec=spec, **kwargs)


_TNT_NORMALISATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # the official TNT cfg
default_cfgs = generate_default_cfgs({
    f"{name}.untrained": stage_cfg("pixel_embed.proj", **_TNT_NORMALISATION)
    for name in ("tnt_t_legacy_patch16_224", "localvit_tnt_t_patch16_224")})


@register_model
def tnt_t_legacy_patch16_224(pretrained: bool = False, **kwargs: Any) -> TransformerInTransformer:
    """TNT-T (TNT-S at width 192), official legacy layout and keys. 6.07M params."""
    return _create("tnt_t_legacy_patch16_224", STAGE_PAPER_SPECS["tnt_t_legacy_patch16_224"], pretrained, **kwargs)


@register_model
def localvit_tnt_t_patch16_224(pretrained: bool = False, **kwargs: Any) -> TransformerInTransformer:
    """LocalViT-TNT: the locality FFN (h-swish, SE r=192) in the outer blocks. 6.26M params."""
    return _create("localvit_tnt_t_patch16_224", STAGE_PAPER_SPECS["localvit_tnt_t_patch16_224"], pretrained,
                   **kwargs)
