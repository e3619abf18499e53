"""Swin Transformer (v1) and LocalViT-Swin, re-implemented on timm 1.0 with per-block designs.

Keys and math are the official Swin v1 code's (as used by LocalViT): patch merging at the
end of each stage (`layers.{i}.downsample`), the relative position index and the shifted
window mask stored in the state dict, no class token, average pooling. timm's own
`SwinTransformer` moves the merging to the start of the next stage and keeps those buffers
out of the state dict, so only its pieces are reused here: `WindowAttention`,
`PatchMerging`, `window_partition` / `window_reverse`.
LocalViT-Swin replaces every block's MLP by the locality FFN (h-swish, SE with r = dim / 4).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath, PatchEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging, WindowAttention, window_partition, window_reverse
from torch import nn

from .backbones import STAGE_PAPER_SPECS
from .layers import FeedForwardBlock
from .presets import StageGeometry
from .spec import ArchSpec, LayerSpec
from .stages import StageBackbone, drop_path_rates, stage_cfg

__all__ = ["SwinBlock", "SwinStage", "SwinTransformer", "shifted_window_mask"]

MASKED = -100.0  # the official additive mask between tokens of different regions


def shifted_window_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """(windows, window^2, window^2) additive mask for a cyclically shifted grid.

    After the shift, the last `window` rows/columns hold tokens from up to three regions
    that were not neighbours; attention between different regions is masked.
    """
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    regions = torch.zeros(1, grid, grid, 1)
    for index, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        regions[:, rows, cols, :] = index
    windows = window_partition(regions, (window, window)).reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, MASKED)


class SwinBlock(FeedForwardBlock):
    """(Shifted) window attention with pre-norm, then the spec's feed-forward design."""

    def __init__(self, dim: int, num_heads: int, geometry: StageGeometry, shifted: bool, layer: LayerSpec,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        assert geometry.window is not None and geometry.shift is not None  # a Swin stage's geometry
        self.window = geometry.window
        self.shift = geometry.shift if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size=self.window, qkv_bias=True)
        # The official code keeps the index in the state dict; timm's is non-persistent.
        self.attn.register_buffer("relative_position_index", self.attn.get_buffer("relative_position_index"),
                                  persistent=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.register_buffer("attn_mask", shifted_window_mask(geometry.grid, self.window, self.shift)
                             if self.shift else None)
        self._build_feed_forward(dim, layer, nn.LayerNorm, (geometry.grid, geometry.grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        side = self.grid_size[0]
        window = (self.window, self.window)
        shortcut = x
        x = self.norm1(x).view(batch, side, side, channels)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, window).view(-1, self.window * self.window, channels)
        windows = self.attn(windows, mask=self.attn_mask).view(-1, self.window, self.window, channels)
        x = window_reverse(windows, window, side, side)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(batch, side * side, channels))
        return self._feed_forward(x, self.drop_path)


class SwinStage(nn.Module):
    """The blocks of one stage (shift on every other block), then patch merging if not last."""

    def __init__(self, dim: int, num_heads: int, geometry: StageGeometry, layers: tuple[LayerSpec, ...],
                 drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.side = geometry.grid
        self.blocks = nn.ModuleList([SwinBlock(dim, num_heads, geometry, i % 2 == 1, layer, rate)
                                     for i, (layer, rate) in enumerate(zip(layers, drop_paths))])
        self.downsample = PatchMerging(dim, 2 * dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            batch, _, channels = x.shape
            x = self.downsample(x.view(batch, self.side, self.side, channels)).flatten(1, 2)
        return x


class SwinTransformer(StageBackbone):
    """Swin v1 whose every block follows one `LayerSpec` of a `swin_*` spec."""

    family = "swin"

    def __init__(self, spec: ArchSpec | dict | str, **kwargs: Any) -> None:
        super().__init__(spec, kwargs)
        preset, spec = self.preset, self.spec
        assert spec.patch_size is not None  # Swin's stem has a patch
        self.patch_embed = PatchEmbed(spec.img_size, spec.patch_size, spec.in_chans, preset.dims[0],
                                      norm_layer=nn.LayerNorm)
        rates = drop_path_rates(spec)
        stages, first_block = [], 0
        for stage, (depth, dim, heads, geometry) in enumerate(
                zip(preset.depths, preset.dims, preset.num_heads, self.geometry)):
            blocks = slice(first_block, first_block + depth)
            stages.append(SwinStage(dim, heads, geometry, spec.layers[blocks], rates[blocks],
                                    downsample=stage < len(preset.depths) - 1))
            first_block += depth
        self.layers = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(preset.dims[-1])
        self.head = nn.Linear(preset.dims[-1], spec.num_classes) if spec.num_classes > 0 else nn.Identity()
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _create(variant: str, spec: ArchSpec, pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    return build_model_with_cfg(SwinTransformer, variant, pretrained, spec=spec, **kwargs)


_NAMES = ("swin_v1_tiny_patch4_window7_224", "localvit_swin_tiny_patch4_window7_224",
          "swin_v1_mini_patch4_window7_224", "localvit_swin_mini_patch4_window7_224")
default_cfgs = generate_default_cfgs({f"{name}.untrained": stage_cfg("patch_embed.proj") for name in _NAMES})


@register_model
def swin_v1_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T with the official v1 keys (timm's `swin_tiny_patch4_window7_224` remaps them). 28.29M params."""
    return _create("swin_v1_tiny_patch4_window7_224", STAGE_PAPER_SPECS["swin_v1_tiny_patch4_window7_224"],
                   pretrained, **kwargs)


@register_model
def localvit_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """LocalViT-Swin: the locality FFN (h-swish, SE r=dim/4) in every block. 29.08M params."""
    return _create("localvit_swin_tiny_patch4_window7_224",
                   STAGE_PAPER_SPECS["localvit_swin_tiny_patch4_window7_224"], pretrained, **kwargs)


@register_model
def swin_v1_mini_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """The paper's Swin-M: Swin-T with 2 blocks in stage 3. 21.2M params."""
    return _create("swin_v1_mini_patch4_window7_224", STAGE_PAPER_SPECS["swin_v1_mini_patch4_window7_224"],
                   pretrained, **kwargs)


@register_model
def localvit_swin_mini_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """The paper's LocalViT-Swin-M. 21.7M params."""
    return _create("localvit_swin_mini_patch4_window7_224",
                   STAGE_PAPER_SPECS["localvit_swin_mini_patch4_window7_224"], pretrained, **kwargs)
