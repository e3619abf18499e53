"""The backbones a search can run on, their paper models as named specs, and proxy geometry.

Search backbones: `deit_tiny`, `deit_small` (the plain `vit` spec at width 192 / 384) and the
stage presets `pvt_tiny`, `swin_tiny`, `swin_mini`, `tnt_tiny`, `t2t_7`. For each:
`block_dims` gives the width of every block in spec order, `baseline_spec` and
`localvit_spec` the paper's two models, `make_spec` a spec of that backbone from per-block
designs, and `proxy_spec` the same design at a small proxy resolution.
"""
from __future__ import annotations

from typing import Any, Sequence

from .presets import PRESETS, get_preset
from .spec import ArchSpec, LayerSpec
from .vision_transformer import PAPER_SPECS

VIT_BACKBONES: dict[str, dict[str, Any]] = {
    "deit_tiny": {"embed_dim": 192, "depth": 12, "baseline": "localvit_deit_tiny", "localvit": "localvit_tiny"},
    "deit_small": {"embed_dim": 384, "depth": 12, "baseline": "localvit_deit_small", "localvit": "localvit_small"},
}
SEARCH_BACKBONES: tuple[str, ...] = (*VIT_BACKBONES, *PRESETS)


def _per_stage(backbone: str, layer_of_stage: Sequence[LayerSpec]) -> ArchSpec:
    preset = get_preset(backbone)
    layers = tuple(layer_of_stage[stage] for stage in preset.block_stages())
    return ArchSpec(layers=layers, backbone=backbone)


def _locality_se(dims: Sequence[int], gammas: Sequence[float], ratio_divisor: int = 1) -> list[LayerSpec]:
    """LocalViT's block: h-swish, SE whose reduction is the stage width (divided by `ratio_divisor`)."""
    return [LayerSpec("local", "hswish", "se", se_ratio=dim // ratio_divisor, gamma=gamma)
            for dim, gamma in zip(dims, gammas)]


_PVT, _SWIN, _SWIN_M = PRESETS["pvt_tiny"], PRESETS["swin_tiny"], PRESETS["swin_mini"]
_PVT_GAMMAS = (8, 8, 4, 4)
_T2T_TOKEN_MLP, _T2T_TOKEN_LOCAL = LayerSpec("mlp", gamma=1), LayerSpec("local", "hswish", gamma=1)

#: The paper's stage-backbone models as specs (224x224, 1000 classes), by registered timm name.
STAGE_PAPER_SPECS: dict[str, ArchSpec] = {
    "pvt_v1_tiny": _per_stage("pvt_tiny", [LayerSpec("mlp", gamma=g) for g in _PVT_GAMMAS]),
    "localvit_pvt_tiny": _per_stage("pvt_tiny", _locality_se(_PVT.dims, _PVT_GAMMAS)),
    "swin_v1_tiny_patch4_window7_224": _per_stage("swin_tiny", [LayerSpec("mlp")] * 4),
    "localvit_swin_tiny_patch4_window7_224": _per_stage("swin_tiny", _locality_se(_SWIN.dims, [4] * 4, 4)),
    "swin_v1_mini_patch4_window7_224": _per_stage("swin_mini", [LayerSpec("mlp")] * 4),
    "localvit_swin_mini_patch4_window7_224": _per_stage("swin_mini", _locality_se(_SWIN_M.dims, [4] * 4, 4)),
    "tnt_t_legacy_patch16_224": _per_stage("tnt_tiny", [LayerSpec("mlp")]),
    "localvit_tnt_t_patch16_224": _per_stage("tnt_tiny", _locality_se((192,), (4,))),
    "t2t_vit_7": _per_stage("t2t_7", [_T2T_TOKEN_MLP, _T2T_TOKEN_MLP, LayerSpec("mlp", gamma=2)]),
    "localvit_T2t_conv7": _per_stage(
        "t2t_7", [_T2T_TOKEN_LOCAL, _T2T_TOKEN_LOCAL, LayerSpec("local", "hswish", "se", se_ratio=128, gamma=2)]),
}

#: Registered names of the paper's baseline and LocalViT model per search backbone.
PAPER_NAMES: dict[str, tuple[str, str]] = {
    **{name: (cfg["baseline"], cfg["localvit"]) for name, cfg in VIT_BACKBONES.items()},
    "pvt_tiny": ("pvt_v1_tiny", "localvit_pvt_tiny"),
    "swin_tiny": ("swin_v1_tiny_patch4_window7_224", "localvit_swin_tiny_patch4_window7_224"),
    "swin_mini": ("swin_v1_mini_patch4_window7_224", "localvit_swin_mini_patch4_window7_224"),
    "tnt_tiny": ("tnt_t_legacy_patch16_224", "localvit_tnt_t_patch16_224"),
    "t2t_7": ("t2t_vit_7", "localvit_T2t_conv7"),
}
#: The paper's names of each backbone's LocalViT model and of the transformer it improves.
BASELINE_NAMES: dict[str, tuple[str, str]] = {
    "deit_tiny": ("LocalViT-T", "DeiT-T"), "deit_small": ("LocalViT-S", "DeiT-S"),
    "pvt_tiny": ("LocalViT-PVT", "PVT-T"), "swin_tiny": ("LocalViT-Swin", "Swin-T"),
    "swin_mini": ("LocalViT-Swin-M", "Swin-M"), "tnt_tiny": ("LocalViT-TNT", "TNT-T"),
    "t2t_7": ("LocalViT-T2T", "T2T-ViT-7"),
}

#: Proxy geometry per stage backbone at 32x32 input (pad or resize 28x28 images to 32):
#: PVT 8/4/2/1 grids; Swin 16/8/4/2 grids with 4x4 windows (shifted in stages 1-2);
#: TNT a 4x4 patch grid of 2x2 pixels; T2T 8/4/2 grids.
PROXY_IMG_SIZE = 32
PROXY_GEOMETRY: dict[str, dict[str, int]] = {
    "pvt_tiny": {"patch_size": 4},
    "swin_tiny": {"patch_size": 2, "window_size": 4},
    "swin_mini": {"patch_size": 2, "window_size": 4},
    "tnt_tiny": {"patch_size": 8},
    "t2t_7": {},
}


def _check(backbone: str) -> None:
    if backbone not in SEARCH_BACKBONES:
        raise ValueError(f"backbone={backbone!r} is invalid; accepted: {', '.join(SEARCH_BACKBONES)}")


def block_dims(backbone: str) -> list[int]:
    """Input width of every block of a search backbone, in spec order."""
    _check(backbone)
    if backbone in VIT_BACKBONES:
        cfg = VIT_BACKBONES[backbone]
        return [cfg["embed_dim"]] * cfg["depth"]
    return get_preset(backbone).block_dims()


def baseline_spec(backbone: str) -> ArchSpec:
    """The paper's baseline on this backbone (DeiT MLP in every block)."""
    _check(backbone)
    return _named(PAPER_NAMES[backbone][0])


def localvit_spec(backbone: str) -> ArchSpec:
    """The paper's LocalViT model on this backbone."""
    _check(backbone)
    return _named(PAPER_NAMES[backbone][1])


def vit_heads(backbone: str) -> tuple[int, ...]:
    """The head counts of the paper's two models on a `deit_*` backbone (baseline's, LocalViT's):
    what a vit space chooses among; () for a stage backbone, whose heads are fixed."""
    _check(backbone)
    if backbone not in VIT_BACKBONES:
        return ()
    return tuple(heads for name in PAPER_NAMES[backbone] if (heads := _named(name).num_heads) is not None)


def _named(name: str) -> ArchSpec:
    return PAPER_SPECS[name] if name in PAPER_SPECS else STAGE_PAPER_SPECS[name]


def make_spec(backbone: str, layers: Sequence[LayerSpec], num_heads: int | None = None, **fields: Any) -> ArchSpec:
    """A spec of `backbone` with one LayerSpec per block (`len(block_dims(backbone))` of them).

    For `deit_*`, `num_heads` is the vit head count (default LocalViT's: 4 for T, 8 for S; DeiT
    uses 3 / 6 and neither changes costs); stage backbones fix their heads and take none.
    """
    _check(backbone)
    if backbone in VIT_BACKBONES:
        return ArchSpec(layers=tuple(layers), embed_dim=VIT_BACKBONES[backbone]["embed_dim"],
                        num_heads=localvit_spec(backbone).num_heads if num_heads is None else num_heads,
                        **fields)
    if num_heads is not None:
        raise ValueError(f"num_heads={num_heads!r} is invalid; accepted: None for backbone={backbone!r}")
    return ArchSpec(layers=tuple(layers), backbone=backbone, **fields)


def proxy_spec(spec: ArchSpec, img_size: int = PROXY_IMG_SIZE, in_chans: int | None = None,
               num_classes: int | None = None) -> ArchSpec:
    """A stage-backbone spec at the proxy resolution, with the geometry that runs there.

    `vit` specs are returned with only the resolution, channels and classes changed (their
    patch size is the caller's choice). Raises ValueError when the backbone cannot run at
    `img_size` (32 works for every preset).
    """
    changes: dict[str, Any] = {"img_size": img_size}
    if in_chans is not None:
        changes["in_chans"] = in_chans
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if spec.backbone in PROXY_GEOMETRY:
        changes.update(PROXY_GEOMETRY[spec.backbone])
    return spec.replace(**changes)


__all__ = ["BASELINE_NAMES", "PAPER_NAMES", "PROXY_GEOMETRY", "PROXY_IMG_SIZE", "SEARCH_BACKBONES", "STAGE_PAPER_SPECS",
           "VIT_BACKBONES", "baseline_spec", "block_dims", "localvit_spec", "make_spec", "proxy_spec", "vit_heads"]
