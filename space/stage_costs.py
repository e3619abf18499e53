"""Closed-form costs of the stage backbones (PVT, Swin, TNT, T2T), in fvcore's conventions.

Each function mirrors its model in `localvit` module by module; `space.cost` registers them
per preset family. Besides the conventions of `space.cost`: unfold (the T2T soft splits, the
TNT pixel unfold), token means, gathers of the relative position bias and mask adds count
nothing; an einsum counts the product of all its index sizes (one multiply-add each).
"""
from __future__ import annotations

from localvit.presets import StageGeometry, StagePreset, stage_geometry
from localvit.spec import ArchSpec, LayerSpec
from localvit.t2t import KERNEL_RATIO, SPLITS

from .cost_terms import ZERO, Cost, attention, conv2d, ffn, layer_norm, linear, locality_ffn, mlp_ffn


def _geometry(spec: ArchSpec) -> tuple[StagePreset, list[StageGeometry]]:
    preset = spec.preset
    assert preset is not None, spec.backbone  # FAMILY_COSTS holds the stage families only
    return preset, stage_geometry(preset, spec.img_size, spec.patch_size, spec.window_size)


def _stage_layers(spec: ArchSpec, preset: StagePreset) -> list[tuple[LayerSpec, ...]]:
    starts = [sum(preset.depths[:i]) for i in range(len(preset.depths))]
    return [spec.layers[start:start + depth] for start, depth in zip(starts, preset.depths)]


def _head(dim: int, tokens: int, num_classes: int) -> Cost:
    return layer_norm(dim, tokens) + (linear(dim, num_classes, 1) if num_classes > 0 else ZERO)


def pvt_cost(spec: ArchSpec) -> Cost:
    """PVT v1: per stage a patch embedding (conv + LayerNorm), spatial-reduction attention blocks."""
    preset, geometry = _geometry(spec)
    last = len(preset.depths) - 1
    cost, in_chans, patch = Cost(0, preset.dims[-1]), spec.in_chans, spec.patch_size  # the class token
    assert patch is not None  # PVT's stem has a patch
    for stage, (layers, dim, sr_ratio, where) in enumerate(
            zip(_stage_layers(spec, preset), preset.dims, preset.sr_ratios, geometry)):
        pixels = where.grid ** 2
        prefix = 1 if stage == last else 0
        tokens = pixels + prefix
        cost += conv2d(in_chans, dim, patch, pixels) + layer_norm(dim, pixels) + Cost(0, tokens * dim)
        kv_tokens = tokens
        reduction = ZERO
        if sr_ratio > 1:
            assert where.kv_grid is not None  # PVT's geometry has it
            kv_tokens = where.kv_grid ** 2
            reduction = conv2d(dim, dim, sr_ratio, kv_tokens) + layer_norm(dim, kv_tokens)
        block_attention = (layer_norm(dim, tokens) + linear(dim, dim, tokens) + reduction
                           + linear(dim, 2 * dim, kv_tokens) + Cost(2 * tokens * kv_tokens * dim, 0)
                           + linear(dim, dim, tokens))
        for layer in layers:
            cost += block_attention + ffn(layer, dim, pixels, prefix_tokens=prefix)
        in_chans, patch = dim, 2
    return cost + _head(preset.dims[-1], geometry[-1].grid ** 2 + 1, spec.num_classes)


def swin_cost(spec: ArchSpec) -> Cost:
    """Swin v1: window attention with a relative position bias table, patch merging between stages."""
    preset, geometry = _geometry(spec)
    pixels = geometry[0].grid ** 2
    assert spec.patch_size is not None  # Swin's stem has a patch
    cost = conv2d(spec.in_chans, preset.dims[0], spec.patch_size, pixels) + layer_norm(preset.dims[0], pixels)
    for stage, (layers, dim, heads, where) in enumerate(
            zip(_stage_layers(spec, preset), preset.dims, preset.num_heads, geometry)):
        pixels = where.grid ** 2
        assert where.window is not None  # Swin's geometry has it
        window_attention = (linear(dim, 3 * dim, pixels) + Cost(2 * pixels * where.window ** 2 * dim, 0)
                            + linear(dim, dim, pixels) + Cost(0, (2 * where.window - 1) ** 2 * heads))
        for layer in layers:
            cost += layer_norm(dim, pixels) + window_attention + ffn(layer, dim, pixels)
        if stage < len(preset.depths) - 1:
            merged = pixels // 4
            cost += layer_norm(4 * dim, merged) + linear(4 * dim, 2 * dim, merged, bias=False)
    return cost + _head(preset.dims[-1], geometry[-1].grid ** 2, spec.num_classes)


def _tnt_attention(dim: int, tokens: int, groups: int = 1) -> Cost:
    """TNT attention (`qk` and `v` without bias) over `groups` independent sets of `tokens`."""
    rows = tokens * groups
    return (linear(dim, 2 * dim, rows, bias=False) + linear(dim, dim, rows, bias=False)
            + Cost(2 * tokens * tokens * dim * groups, 0) + linear(dim, dim, rows))


def tnt_cost(spec: ArchSpec) -> Cost:
    """TNT (legacy layout): an inner transformer on each patch's pixels, an outer one on the patches."""
    preset, geometry = _geometry(spec)
    dim, inner, stride = preset.dims[0], preset.inner_dim, preset.first_stride
    assert inner is not None and stride is not None and spec.patch_size is not None  # a TNT preset's
    patches = geometry[0].grid ** 2
    side = spec.patch_size // stride  # pixels per patch side
    pixels = side * side
    stem_side = (spec.img_size + 2 * 3 - 7) // stride + 1
    cost = conv2d(spec.in_chans, inner, 7, stem_side ** 2)
    cost += Cost(0, dim + (patches + 1) * dim + inner * pixels)  # cls_token, patch_pos, pixel_pos
    cost += layer_norm(pixels * inner, patches) + linear(pixels * inner, dim, patches) + layer_norm(dim, patches)
    inner_rows = patches * pixels
    inner_half = (layer_norm(inner, inner_rows) + _tnt_attention(inner, pixels, patches)
                  + mlp_ffn(LayerSpec("mlp"), inner, inner_rows)
                  + layer_norm(inner, inner_rows) + linear(inner * pixels, dim, patches))
    tokens = patches + 1
    for layer in spec.layers:
        cost += inner_half + layer_norm(dim, tokens) + _tnt_attention(dim, tokens)
        cost += ffn(layer, dim, patches, prefix_tokens=1)
    return cost + _head(dim, tokens, spec.num_classes)


def _token_performer(in_dim: int, dim: int, tokens: int, layer: LayerSpec) -> Cost:
    """One-head performer: kqv, random features of k and q, the three linear-attention einsums, proj."""
    features = int(dim * KERNEL_RATIO)
    attention_cost = (layer_norm(in_dim, tokens) + linear(in_dim, 3 * dim, tokens)
                      + Cost(2 * tokens * dim * features, features * dim)  # phi(k), phi(q); frozen w
                      + Cost(tokens * features + 2 * tokens * features * dim, 0)  # normaliser, k^T v, q (k^T v)
                      + linear(dim, dim, tokens))
    if layer.ffn == "mlp":
        return attention_cost + mlp_ffn(layer, dim, tokens)
    return attention_cost + Cost(0, 2 * dim) + locality_ffn(layer, dim, tokens)  # norm2 is kept, unused


def t2t_cost(spec: ArchSpec) -> Cost:
    """T2T-ViT: two performer token blocks between soft splits, a projection, a ViT encoder."""
    preset, geometry = _geometry(spec)
    token_dim, dim = preset.dims[0], preset.dims[2]
    sides = [where.grid for where in geometry]
    first_kernel, later_kernel = SPLITS[0][0], SPLITS[1][0]
    cost = _token_performer(spec.in_chans * first_kernel ** 2, token_dim, sides[0] ** 2, spec.layers[0])
    cost += _token_performer(token_dim * later_kernel ** 2, token_dim, sides[1] ** 2, spec.layers[1])
    pixels = sides[2] ** 2
    tokens = pixels + 1
    cost += linear(token_dim * later_kernel ** 2, dim, pixels) + Cost(0, dim + tokens * dim)  # cls, pos_embed
    for layer in spec.layers[2:]:
        cost += layer_norm(dim, tokens) + attention(dim, tokens, qkv_bias=False)
        cost += ffn(layer, dim, pixels, prefix_tokens=1)
    return cost + _head(dim, tokens, spec.num_classes)


#: Cost function per stage-backbone family.
FAMILY_COSTS = {"pvt": pvt_cost, "swin": swin_cost, "tnt": tnt_cost, "t2t": t2t_cost}
