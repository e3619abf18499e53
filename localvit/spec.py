"""The architecture spec: one immutable, JSON-serialisable description of a model.

Everything in the project (builder, cost model, samplers, search, export) takes an
`ArchSpec`. It imports nothing heavier than the standard library so that the design
space can create and hash thousands of specs without touching torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from .cli import fail
from .presets import PRESETS, StagePreset, stage_geometry

FFN_TYPES = ("mlp", "conv", "local")
"""`mlp`: DeiT MLP (LayerNorm, Linear, GELU, Linear); `conv`: the locality FFN without its
depth-wise conv (the paper's Table I); `local`: the locality FFN of LocalViT."""
ACTIVATIONS = ("relu6", "hswish", "gelu")
CHANNEL_ATTENTIONS = ("none", "se", "eca")
MAX_KERNEL = 7
SPEC_VERSION = 1


@dataclass(frozen=True)
class LayerSpec:
    """The feed-forward design of one transformer block.

    Fields that do not apply to a design are None in canonical form: an `mlp` layer has
    no channel attention and no kernel, a `conv` layer no kernel, and only SE has a ratio.
    `act=None` and `kernel=None` mean the type's default (GELU for `mlp`, h-swish
    otherwise; kernel 3 for `local`).
    """

    ffn: str = "local"
    act: str | None = None
    attn: str = "none"
    se_ratio: int | None = None
    gamma: float = 4.0
    kernel: int | None = None

    def __post_init__(self) -> None:
        if self.ffn not in FFN_TYPES:
            fail("ffn", self.ffn, ", ".join(FFN_TYPES))
        act = self.act if self.act is not None else ("gelu" if self.ffn == "mlp" else "hswish")
        if act not in ACTIVATIONS:
            fail("act", act, ", ".join(ACTIVATIONS))
        if self.ffn == "mlp" and act != "gelu":
            fail("act", act, "'gelu' for ffn='mlp' (the DeiT MLP)")
        if self.attn not in CHANNEL_ATTENTIONS:
            fail("attn", self.attn, ", ".join(CHANNEL_ATTENTIONS))
        if self.ffn == "mlp" and self.attn != "none":
            fail("attn", self.attn, "'none' for ffn='mlp' (channel attention needs the 2-D FFN)")
        if self.attn == "se":
            if isinstance(self.se_ratio, bool) or not isinstance(self.se_ratio, int) or self.se_ratio < 1:
                fail("se_ratio", self.se_ratio, "a positive integer when attn='se'")
        elif self.se_ratio is not None:
            fail("se_ratio", self.se_ratio, f"None when attn={self.attn!r} (only SE has a ratio)")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            fail("gamma", self.gamma, "a positive multiple of 0.5")
        gamma = float(self.gamma)
        if gamma <= 0 or (gamma * 2) != int(gamma * 2):
            fail("gamma", self.gamma, "a positive multiple of 0.5 (the paper uses 1, 2, 3, 4, 6)")
        kernel = self.kernel
        if self.ffn == "local":
            kernel = 3 if kernel is None else kernel
            if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0 \
                    or kernel > MAX_KERNEL:
                fail("kernel", self.kernel, f"an odd integer from 1 to {MAX_KERNEL} (the paper uses 3)")
        elif kernel is not None:
            fail("kernel", kernel, f"None when ffn={self.ffn!r} (only 'local' has a depth-wise conv)")
        object.__setattr__(self, "act", act)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "kernel", kernel)

    def hidden_dim(self, dim: int) -> int:
        """Hidden width of the FFN for input width `dim` (the official `int(C * gamma)`)."""
        return int(dim * self.gamma)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            fail("layer field", sorted(unknown)[0], ", ".join(cls.__dataclass_fields__))
        return cls(**data)


@dataclass(frozen=True)
class ArchSpec:
    """A whole model: the global shape plus one `LayerSpec` per block.

    `backbone` names the family the layers plug into. `vit` is the DeiT/LocalViT plain
    transformer whose width, heads, patch and depth are given here (None means 192, 4, 16).
    Any other value names a stage backbone preset of `localvit.presets` (`pvt_tiny`,
    `swin_tiny`, `swin_mini`, `tnt_tiny`, `t2t_7`) that fixes widths and heads per stage:
    there `embed_dim` and `num_heads` must be None, `patch_size` is the stem patch (None means
    the preset's; T2T has no patch and takes None), `window_size` is Swin's attention window
    (None means the preset's 7; only Swin has one), and `layers` holds one LayerSpec per block
    of every stage in the preset's block order. Fields that do not apply are left out of the
    JSON, so `vit` specs serialise exactly as before `window_size` existed.
    """

    layers: tuple[LayerSpec, ...]
    embed_dim: int | None = None
    num_heads: int | None = None
    img_size: int = 224
    patch_size: int | None = None
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    backbone: str = "vit"
    window_size: int | None = None

    def __post_init__(self) -> None:
        layers = tuple(LayerSpec.from_dict(x) if isinstance(x, Mapping) else x for x in self.layers)
        if not layers or not all(isinstance(x, LayerSpec) for x in layers):
            fail("layers", self.layers, "a non-empty sequence of LayerSpec (or dicts)")
        object.__setattr__(self, "layers", layers)
        for name in ("embed_dim", "num_heads", "img_size", "patch_size", "in_chans", "num_classes", "window_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                fail(name, value, "a positive integer")
        if self.backbone == "vit":
            self._resolve_vit()
        elif self.backbone in PRESETS:
            self._resolve_stages(PRESETS[self.backbone])
        else:
            fail("backbone", self.backbone, ", ".join(["vit", *PRESETS]))
        if not 0.0 <= float(self.drop_path_rate) < 1.0:
            fail("drop_path_rate", self.drop_path_rate, "a number in [0, 1)")
        object.__setattr__(self, "drop_path_rate", float(self.drop_path_rate))
        for i, (layer, dim) in enumerate(zip(layers, self.block_dims)):
            hidden = layer.hidden_dim(dim)
            if hidden < 1:
                fail(f"layers[{i}].gamma", layer.gamma, f"a ratio giving at least 1 hidden channel at dim {dim}")
            if layer.attn == "se" and layer.se_ratio is not None and layer.se_ratio > hidden:
                fail(f"layers[{i}].se_ratio", layer.se_ratio, f"at most the hidden width {hidden} (it divides it)")

    def _resolve_vit(self) -> None:
        for name, default in (("embed_dim", 192), ("num_heads", 4), ("patch_size", 16)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.window_size is not None:
            fail("window_size", self.window_size, "None for backbone='vit' (only Swin has windows)")
        assert self.embed_dim is not None and self.num_heads is not None and self.patch_size is not None
        if self.embed_dim % self.num_heads:
            fail("num_heads", self.num_heads, f"a divisor of embed_dim={self.embed_dim}")
        if self.img_size % self.patch_size:
            fail("img_size", self.img_size, f"a multiple of patch_size={self.patch_size}")

    def _resolve_stages(self, preset: StagePreset) -> None:
        widths = ", ".join(map(str, preset.dims))
        for name in ("embed_dim", "num_heads"):
            if getattr(self, name) is not None:
                fail(name, getattr(self, name), f"None for backbone={self.backbone!r} (its preset fixes the "
                                                 f"stage widths {widths} and heads)")
        if preset.patch_size is None and self.patch_size is not None:
            fail("patch_size", self.patch_size, f"None for backbone={self.backbone!r} (its stem is fixed)")
        if preset.window_size is None and self.window_size is not None:
            fail("window_size", self.window_size, f"None for backbone={self.backbone!r} (only Swin has windows)")
        if self.patch_size is None and preset.patch_size is not None:
            object.__setattr__(self, "patch_size", preset.patch_size)
        if self.window_size is None and preset.window_size is not None:
            object.__setattr__(self, "window_size", preset.window_size)
        if len(self.layers) != preset.depth:
            fail("layers", f"{len(self.layers)} layers", f"{preset.depth} for backbone={self.backbone!r} "
                                                          f"(stage depths {preset.depths})")
        stage_geometry(preset, self.img_size, self.patch_size, self.window_size)  # raises when it cannot run

    @property
    def preset(self) -> StagePreset | None:
        """The stage backbone preset, None for `vit`."""
        return PRESETS.get(self.backbone)

    @property
    def block_dims(self) -> list[int]:
        """Input width of every block, in `layers` order."""
        preset = self.preset
        if preset is None:
            assert self.embed_dim is not None  # set for `vit` in __post_init__
            return [self.embed_dim] * len(self.layers)
        return preset.block_dims()

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid of the (first) stage."""
        if self.preset is None:
            assert self.patch_size is not None  # set for `vit` in __post_init__
            side = self.img_size // self.patch_size
        else:
            side = stage_geometry(self.preset, self.img_size, self.patch_size, self.window_size)[0].grid
        return side, side

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__
                if name != "layers" and getattr(self, name) is not None}
        data["layers"] = [layer.to_dict() for layer in self.layers]
        data["version"] = SPEC_VERSION
        return data

    def to_json(self, indent: int | None = None) -> str:
        if indent is None:
            return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            fail("version", version, str(SPEC_VERSION))
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            fail("spec field", sorted(unknown)[0], ", ".join(cls.__dataclass_fields__))
        if "layers" not in data:
            fail("layers", None, "a list of layer dicts")
        data["layers"] = tuple(LayerSpec.from_dict(x) for x in data["layers"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"spec JSON is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            fail("spec JSON", type(data).__name__, "a JSON object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        """A spec file: a bare spec, or a record holding one under `spec` (an exported `arch.json`)."""
        path = Path(path)
        if not path.is_file():
            fail("spec path", str(path), "an existing JSON file (a spec or an exported arch.json)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"spec file {str(path)!r} is not valid JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            data = data["spec"]
        if not isinstance(data, dict):
            raise ValueError(f"spec file {str(path)!r} holds {type(data).__name__}; accepted: a JSON object")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"spec file {str(path)!r}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    @cached_property
    def id(self) -> str:
        """Stable short id: the first 12 hex digits of the SHA-1 of the canonical JSON."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def uniform(cls, layer: LayerSpec, depth: int = 12, **globals_: Any) -> ArchSpec:
        """The same layer design in every block."""
        return cls(layers=(layer,) * depth, **globals_)


#: The spec fields timm's factories pass as keyword arguments (e.g. `num_classes=10`).
SPEC_OVERRIDES = ("img_size", "in_chans", "num_classes", "drop_path_rate")


def with_overrides(spec: ArchSpec, kwargs: dict[str, Any]) -> ArchSpec:
    """The spec with the timm-style overrides popped from `kwargs` applied.

    timm passes the cfg's input size as an (H, W) tuple: a square one becomes `img_size`.
    """
    overrides = {key: kwargs.pop(key) for key in SPEC_OVERRIDES if key in kwargs}
    if isinstance(overrides.get("img_size"), (tuple, list)):
        height, width = overrides["img_size"]
        if height != width:
            raise ValueError(f"img_size={overrides['img_size']!r} is invalid; accepted: a square size")
        overrides["img_size"] = height
    return spec.replace(**overrides) if overrides else spec


def as_spec(spec: ArchSpec | Mapping[str, Any] | str | Path) -> ArchSpec:
    """Accept a spec object, a dict, a JSON string or a path to a JSON file."""
    if isinstance(spec, ArchSpec):
        return spec
    if isinstance(spec, Mapping):
        return ArchSpec.from_dict(spec)
    if isinstance(spec, (str, Path)):
        text = str(spec).lstrip()
        return ArchSpec.from_json(text) if text.startswith("{") else ArchSpec.load(spec)
    raise ValueError(f"spec={spec!r} is invalid; accepted: ArchSpec, dict, JSON string or path to a JSON file")


__all__ = ["ArchSpec", "LayerSpec", "as_spec", "FFN_TYPES", "ACTIVATIONS", "CHANNEL_ATTENTIONS"]
