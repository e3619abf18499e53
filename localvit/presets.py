"""Shapes of the stage backbones (PVT, Swin, TNT, T2T) and the token grids they run on.

A preset fixes what the paper fixes for a backbone (widths, heads, depths, attention
geometry); the per-block feed-forward designs come from the spec. Standard library only, so
that `spec.py` can validate against it and the search can enumerate blocks without torch.

Block order (the order of `ArchSpec.layers`) is stage by stage, block by block. For T2T the
two token blocks of the tokens-to-token module come first (stages 0 and 1), then the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cli import fail

FAMILIES = ("pvt", "swin", "tnt", "t2t")


@dataclass(frozen=True)
class StagePreset:
    """One stage backbone at its paper size (224x224)."""

    family: str
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    num_heads: tuple[int, ...]
    patch_size: int | None  # stem patch; None where the stem is fixed (T2T's soft splits)
    sr_ratios: tuple[int, ...] = ()  # PVT: spatial reduction of keys and values per stage
    window_size: int | None = None  # Swin
    inner_dim: int | None = None  # TNT: pixel (inner) width
    inner_heads: int | None = None  # TNT
    first_stride: int | None = None  # TNT: stride of the pixel stem
    layer_norm_eps: float = 1e-5

    def block_dims(self) -> list[int]:
        """Width of every block, in spec order."""
        return [dim for depth, dim in zip(self.depths, self.dims) for _ in range(depth)]

    def block_stages(self) -> list[int]:
        """Stage index of every block, in spec order."""
        return [stage for stage, depth in enumerate(self.depths) for _ in range(depth)]

    @property
    def depth(self) -> int:
        return sum(self.depths)


PRESETS: dict[str, StagePreset] = {
    "pvt_tiny": StagePreset("pvt", (2, 2, 2, 2), (64, 128, 320, 512), (1, 2, 5, 8), 4, sr_ratios=(8, 4, 2, 1),
                            layer_norm_eps=1e-6),
    "swin_tiny": StagePreset("swin", (2, 2, 6, 2), (96, 192, 384, 768), (3, 6, 12, 24), 4, window_size=7),
    # The paper's Swin-M: Swin-T with 2 instead of 6 blocks in stage 3.
    "swin_mini": StagePreset("swin", (2, 2, 2, 2), (96, 192, 384, 768), (3, 6, 12, 24), 4, window_size=7),
    # TNT-T: TNT-S with embedding width 192 (inner width 12, 3 heads inside and out).
    "tnt_tiny": StagePreset("tnt", (12,), (192,), (3,), 16, inner_dim=12, inner_heads=3, first_stride=4),
    # T2T-ViT-7: a performer token block of width 64 after each of the first two soft splits
    # (stages 0 and 1), then 7 blocks of width 256 (stage 2).
    "t2t_7": StagePreset("t2t", (1, 1, 7), (64, 64, 256), (1, 1, 4), None),
}


def get_preset(backbone: str) -> StagePreset:
    try:
        return PRESETS[backbone]
    except KeyError:
        fail("backbone", backbone, ", ".join(["vit", *PRESETS]))
        raise  # unreachable, keeps type checkers content


def t2t_split_sizes(img_size: int) -> tuple[int, int, int]:
    """Side of the token grid after each soft split (unfold 7/4/2, then 3/2/1 twice)."""
    first = (img_size + 2 * 2 - 7) // 4 + 1
    second = (first + 2 - 3) // 2 + 1
    third = (second + 2 - 3) // 2 + 1
    return first, second, third


@dataclass(frozen=True)
class StageGeometry:
    """Where each stage runs: token grid side, and the family's attention geometry there."""

    grid: int  # side of the square token grid of the stage
    window: int | None = None  # Swin: window side actually used (clamped to the grid)
    shift: int | None = None  # Swin: shift of the odd blocks (0 when the window covers the grid)
    kv_grid: int | None = None  # PVT: side of the reduced key/value grid


def stage_geometry(preset: StagePreset, img_size: int, patch_size: int | None,
                   window_size: int | None = None) -> list[StageGeometry]:
    """Per-stage geometry at `img_size`; raises ValueError when the backbone cannot run there."""
    patch = preset.patch_size if patch_size is None else patch_size
    if preset.family == "t2t":
        sides = t2t_split_sizes(img_size)
        if min(sides) < 1 or sides[2] != img_size // 16:
            fail("img_size", img_size, "a multiple of 16 for T2T (three soft splits, strides 4, 2, 2)")
        return [StageGeometry(side) for side in sides]
    assert patch is not None, preset  # every stem but T2T's has a patch
    if img_size % patch:
        fail("img_size", img_size, f"a multiple of patch_size={patch}")
    grid = img_size // patch
    if preset.family == "tnt":
        assert preset.first_stride is not None, preset
        if patch % preset.first_stride:
            fail("patch_size", patch, f"a multiple of the TNT pixel stride {preset.first_stride}")
        return [StageGeometry(grid)]
    num_stages = len(preset.depths)
    if grid % (2 ** (num_stages - 1)):
        fail("img_size", img_size, f"a size whose {grid}x{grid} patch grid halves {num_stages - 1} times "
                                    f"(a multiple of {patch * 2 ** (num_stages - 1)})")
    grids = [grid // 2 ** i for i in range(num_stages)]
    if preset.family == "pvt":
        for side, ratio in zip(grids, preset.sr_ratios):
            if side < ratio:
                fail("img_size", img_size, f"a size giving stage grids of at least the reduction ratios "
                                            f"{preset.sr_ratios} (got {grids})")
        return [StageGeometry(side, kv_grid=side // ratio) for side, ratio in zip(grids, preset.sr_ratios)]
    window = preset.window_size if window_size is None else window_size
    assert window is not None, preset  # the family left, Swin, has windows
    stages = []
    for side in grids:
        if side <= window:  # the official rule: one window over the whole grid, no shift
            stages.append(StageGeometry(side, window=side, shift=0))
        elif side % window:
            fail("window_size", window, f"a divisor of every stage grid larger than it (grids {grids})")
        else:
            stages.append(StageGeometry(side, window=window, shift=window // 2))
    return stages


def block_dims(backbone: str) -> list[int]:
    """Width of every block of a stage backbone, in spec order."""
    return get_preset(backbone).block_dims()


__all__ = ["FAMILIES", "PRESETS", "StageGeometry", "StagePreset", "block_dims", "get_preset", "stage_geometry",
           "t2t_split_sizes"]
