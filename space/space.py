"""The design space as data: per-layer choices over a base architecture.

A `SearchSpace` is a template spec (the base: width, heads, depth, resolution, backbone) plus
the choices every block may take, and optional global choices (heads; embed dim and depth
where a preset opens them). It samples specs three ways, all giving `ArchSpec`s:
Optuna define-by-run (`suggest`), seeded uniform random (`sample`) and enumeration (`grid`).
Conditional choices exist only where they apply: an SE ratio only with SE, a kernel only for
`local`, an activation and channel attention only for the 2-D FFNs.

The `paper` space is different in kind: its points are the rows of the paper's Tables I-V
(`space.paper`), one categorical choice among them.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from localvit.backbones import vit_heads
from localvit.spec import ACTIVATIONS, CHANNEL_ATTENTIONS, FFN_TYPES, ArchSpec, LayerSpec

from .bases import base_spec, read_data_file
from .paper import PAPER_NAMED_SPECS
from .references import ReferenceSet, is_reference_file, load_references, references_from_dict


class TrialLike(Protocol):
    """What `suggest` needs of an Optuna trial."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class LayerChoices:
    """What one block may choose. Values are validated against `LayerSpec`'s rules."""

    ffn: tuple[str, ...] = FFN_TYPES
    act: tuple[str, ...] = ("relu6", "hswish")
    attn: tuple[str, ...] = CHANNEL_ATTENTIONS
    se_ratio: tuple[int, ...] = (4, 48, 96, 192)
    gamma: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
    kernel: tuple[int, ...] = (3,)

    def __post_init__(self) -> None:
        for f in fields(self):
            values = getattr(self, f.name)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                shown = list(values) if isinstance(values, tuple) else values
                raise ValueError(f"{f.name}={shown!r} is invalid; accepted: a non-empty list of choices")
            if len(set(values)) != len(values):
                raise ValueError(f"{f.name}={list(values)!r} is invalid; accepted: a list without repeats")
            object.__setattr__(self, f.name, tuple(float(v) if f.name == "gamma" else v for v in values))
        for value in self.ffn:
            if value not in FFN_TYPES:
                raise ValueError(f"ffn={value!r} is invalid; accepted: {', '.join(FFN_TYPES)}")
        for value in self.act:
            if value not in ACTIVATIONS:
                raise ValueError(f"act={value!r} is invalid; accepted: {', '.join(ACTIVATIONS)}")
        for value in self.attn:
            if value not in CHANNEL_ATTENTIONS:
                raise ValueError(f"attn={value!r} is invalid; accepted: {', '.join(CHANNEL_ATTENTIONS)}")
        # Let LayerSpec judge every value in context (gamma multiple of 0.5, odd kernel, ratio >= 1).
        for gamma, kernel, ratio in itertools.product(self.gamma, self.kernel, self.se_ratio):
            LayerSpec("local", "hswish", "se", se_ratio=ratio, gamma=gamma, kernel=kernel)

    def layers(self, dim: int | None = None) -> Iterator[LayerSpec]:
        """Every layer design these choices allow (valid at width `dim`, when given)."""
        for ffn, gamma in itertools.product(self.ffn, self.gamma):
            if ffn == "mlp":
                yield LayerSpec("mlp", gamma=gamma)
                continue
            kernels = self.kernel if ffn == "local" else (None,)
            for act, attn, kernel in itertools.product(self.act, self.attn, kernels):
                ratios = self.se_ratio if attn == "se" else (None,)
                for ratio in dict.fromkeys(self.fit_ratio(r, dim, gamma) for r in ratios):
                    yield LayerSpec(ffn, act, attn, se_ratio=ratio, gamma=gamma, kernel=kernel)

    def fit_ratio(self, ratio: int | None, dim: int | None, gamma: float) -> int | None:
        """An SE ratio above the hidden width becomes the largest choice that fits it.

        Optuna needs one fixed list of choices per parameter name, while the hidden width
        varies with gamma and with the block's width (stage backbones).
        """
        if ratio is None or dim is None:
            return ratio
        hidden = int(dim * gamma)
        fitting = [r for r in self.se_ratio if r <= hidden]
        return ratio if ratio <= hidden else max(fitting, default=ratio)

    def allows(self, layer: LayerSpec) -> bool:
        return (layer.ffn in self.ffn and layer.gamma in self.gamma
                and (layer.ffn == "mlp" or (layer.act in self.act and layer.attn in self.attn))
                and (layer.se_ratio is None or layer.se_ratio in self.se_ratio)
                and (layer.kernel is None or layer.kernel in self.kernel))


@dataclass(frozen=True)
class SearchSpace:
    """Per-layer choices over a base spec, with optional global choices."""

    name: str
    base: ArchSpec
    layer: LayerChoices = field(default_factory=LayerChoices)
    heads: tuple[int, ...] = ()
    embed_dims: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    shared: bool = False  # one design for every block (the paper's uniform models)

    def __post_init__(self) -> None:
        for name in ("heads", "embed_dims", "depths"):
            values = tuple(getattr(self, name))
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={list(values)!r} is invalid; accepted: a list of positive integers")
            if values and self.base.backbone != "vit":
                raise ValueError(f"{name}={list(values)!r} is invalid for backbone={self.base.backbone!r}; "
                                 f"accepted: [] (its widths and heads are fixed by the preset)")
            object.__setattr__(self, name, values)
        for dim, heads in itertools.product(self.embed_dims or self.base.block_dims[:1], self.heads):
            if dim % heads:
                raise ValueError(f"heads={heads} is invalid for embed_dim={dim}; accepted: divisors of {dim}")
        if self.base.backbone != "vit" and self.depths:
            raise ValueError(f"depths={list(self.depths)!r} is invalid for backbone={self.base.backbone!r}; "
                             f"accepted: []")
        for dim in set(self._all_block_dims()):
            if not any(True for _ in self.layer.layers(dim)):
                raise ValueError(f"layer choices allow no design at width {dim}")

    # -- structure --------------------------------------------------------------------------
    def _all_block_dims(self) -> list[int]:
        if self.base.backbone != "vit":
            return list(self.base.block_dims)
        return list(self.embed_dims or self.base.block_dims[:1])

    def _globals(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, values) for name, values in
                (("embed_dim", self.embed_dims), ("depth", self.depths), ("heads", self.heads)) if len(values) > 1]

    def _with_globals(self, values: Mapping[str, int]) -> tuple[ArchSpec, int]:
        """The base with the global choices applied (layers still the base's), and the depth."""
        changes: dict[str, Any] = {}
        if self.embed_dims:
            changes["embed_dim"] = values.get("embed_dim", self.embed_dims[0])
        if self.heads:
            changes["num_heads"] = values.get("heads", self.heads[0])
        depth = values.get("depth", self.depths[0]) if self.depths else self.base.depth
        if depth != self.base.depth:
            changes["layers"] = (self.base.layers[0],) * depth
        base = self.base.replace(**changes) if changes else self.base
        return base, depth

    def bases(self) -> Iterator[ArchSpec]:
        """One spec per combination of global choices; its layers are a placeholder."""
        names = [name for name, _ in self._globals()]
        for values in itertools.product(*(choices for _, choices in self._globals())):
            base, depth = self._with_globals(dict(zip(names, values)))
            placeholder = next(iter(self.layer.layers(min(self._dims(base, depth)))))
            yield base.replace(layers=(placeholder,) * depth)

    def block_choices(self, base: ArchSpec) -> list[list[LayerSpec]]:
        """The distinct designs each block of `base` may take (one list when shared)."""
        dims = self._dims(base, base.depth)
        if self.shared:
            return [list(dict.fromkeys(self.layer.layers(min(dims))))]
        return [list(dict.fromkeys(self.layer.layers(dim))) for dim in dims]

    @staticmethod
    def _dims(base: ArchSpec, depth: int) -> list[int]:
        return list(base.block_dims) if base.backbone != "vit" else base.block_dims[:1] * depth

    def _layer_names(self, depth: int) -> list[str]:
        return ["all"] if self.shared else [f"l{i:02d}" for i in range(depth)]

    # -- sampling -----------------------------------------------------------------------------
    def suggest(self, trial: TrialLike) -> ArchSpec:
        """Define-by-run: ask `trial` for every choice that applies (names like `l03.ffn`)."""
        return self._build(lambda name, choices: trial.suggest_categorical(name, list(choices)))

    def sample(self, rng: random.Random | int | None = None,
               accept: Callable[[ArchSpec], bool] | None = None, max_tries: int = 10_000) -> ArchSpec:
        """Uniform over each choice as it applies (seeded); rejection-sample under `accept`.

        Raises ValueError when `max_tries` draws found nothing acceptable, rather than looping.
        """
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        for _ in range(max_tries):
            spec = self._build(lambda name, choices: rng.choice(list(choices)))
            if accept is None or accept(spec):
                return spec
        raise ValueError(f"no spec of space {self.name!r} met the constraint in {max_tries} random draws; "
                         f"accepted: a constraint that some spec of the space meets (see space bounds)")

    def _build(self, choose: Callable[[str, Sequence[Any]], Any]) -> ArchSpec:
        values = {name: choose(name, choices) for name, choices in self._globals()}
        base, depth = self._with_globals(values)
        dims = self._dims(base, depth)
        layers = []
        for prefix, dim in zip(self._layer_names(depth), dims if not self.shared else [min(dims)]):
            layers.append(self._choose_layer(prefix, dim, choose))
        if self.shared:
            layers = layers * depth
        return base.replace(layers=tuple(layers))

    def _choose_layer(self, prefix: str, dim: int, choose: Callable[[str, Sequence[Any]], Any]) -> LayerSpec:
        c = self.layer
        ffn = choose(f"{prefix}.ffn", c.ffn)
        gamma = choose(f"{prefix}.gamma", c.gamma)
        if ffn == "mlp":
            return LayerSpec("mlp", gamma=gamma)
        act = choose(f"{prefix}.act", c.act)
        attn = choose(f"{prefix}.attn", c.attn)
        ratio = c.fit_ratio(choose(f"{prefix}.se_ratio", c.se_ratio), dim, gamma) if attn == "se" else None
        kernel = choose(f"{prefix}.kernel", c.kernel) if ffn == "local" else None
        return LayerSpec(ffn, act, attn, se_ratio=ratio, gamma=gamma, kernel=kernel)

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        """The choices that give `spec` (what `suggest` would record), for enqueueing it."""
        if not self.contains(spec):
            raise ValueError(f"spec {spec.id} is not in space {self.name!r}")
        params: dict[str, Any] = {}
        for name, _ in self._globals():
            params[name] = {"embed_dim": spec.embed_dim, "depth": spec.depth, "heads": spec.num_heads}[name]
        for prefix, layer in zip(self._layer_names(spec.depth), spec.layers):
            params[f"{prefix}.ffn"] = layer.ffn
            params[f"{prefix}.gamma"] = layer.gamma
            if layer.ffn != "mlp":
                params[f"{prefix}.act"] = layer.act
                params[f"{prefix}.attn"] = layer.attn
                if layer.se_ratio is not None:
                    params[f"{prefix}.se_ratio"] = layer.se_ratio
                if layer.kernel is not None:
                    params[f"{prefix}.kernel"] = layer.kernel
        return params

    def from_params(self, params: Mapping[str, Any]) -> ArchSpec:
        """The spec a set of choices gives; choices that do not apply are ignored."""
        def choose(name: str, choices: Sequence[Any]) -> Any:
            if name not in params:
                raise ValueError(f"parameter {name!r} is missing; accepted: one of {list(choices)!r}")
            if params[name] not in choices:
                raise ValueError(f"{name}={params[name]!r} is invalid; accepted: {list(choices)!r}")
            return params[name]
        return self._build(choose)

    def distributions(self) -> dict[str, list[Any]]:
        """Every parameter name with its choices (for NNI and for documentation)."""
        names: dict[str, list[Any]] = {name: list(values) for name, values in self._globals()}
        depth = max(self.depths or (self.base.depth,))
        for prefix in self._layer_names(depth):
            for choice in ("ffn", "gamma", "act", "attn", "se_ratio", "kernel"):
                names[f"{prefix}.{choice}"] = list(getattr(self.layer, choice))
        return names

    def contains(self, spec: ArchSpec) -> bool:
        if spec.backbone != self.base.backbone:
            return False
        try:
            values = {"embed_dim": spec.embed_dim, "depth": spec.depth, "heads": spec.num_heads}
            base, depth = self._with_globals({k: v for k, v in values.items() if v is not None})  # stages: no width
            same_globals = base.replace(layers=spec.layers) == spec
        except ValueError:  # e.g. a depth the base cannot take
            return False
        in_globals = all(getattr(spec, attr) in values for attr, values in
                         (("embed_dim", self.embed_dims), ("depth", self.depths), ("num_heads", self.heads))
                         if values)
        uniform = not self.shared or len(set(spec.layers)) == 1
        return same_globals and in_globals and uniform and all(self.layer.allows(x) for x in spec.layers)

    def size(self) -> int:
        """Number of distinct specs (exact; can be astronomically large)."""
        total = 0
        for base in self.bases():
            count = 1
            for options in self.block_choices(base):
                count *= len(options)
            total += count
        return total

    def grid(self, limit: int = 100_000) -> Iterator[ArchSpec]:
        """Every spec of a small space, each once."""
        size = self.size()
        if size > limit:
            raise ValueError(f"space {self.name!r} has {size} specs; accepted for a grid: at most {limit} "
                             f"(use shared=true or fewer choices)")
        for base in self.bases():
            choices = self.block_choices(base)
            if self.shared:
                for layer in choices[0]:
                    yield base.replace(layers=(layer,) * base.depth)
            else:
                for layers in itertools.product(*choices):
                    yield base.replace(layers=tuple(layers))


@dataclass(frozen=True)
class ListSpace:
    """A list of named designs, one categorical choice among them: the paper's table rows (the
    default, `--space paper`) or the rows of a reference file (`space.references`), which a grid
    sampler trains one by one."""

    name: str = "paper"
    points: Mapping[str, ArchSpec] = field(default_factory=lambda: _distinct(PAPER_NAMED_SPECS))
    param: str = "paper_row"

    def suggest(self, trial: TrialLike) -> ArchSpec:
        return self.points[trial.suggest_categorical(self.param, list(self.points))]

    def sample(self, rng: random.Random | int | None = None,
               accept: Callable[[ArchSpec], bool] | None = None, max_tries: int = 10_000) -> ArchSpec:
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        candidates = [s for s in self.points.values() if accept is None or accept(s)]
        if not candidates:
            raise ValueError(f"no design of space {self.name!r} meets the constraint; accepted: a looser budget")
        return rng.choice(candidates)

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        for name, point in self.points.items():
            if point == spec:
                return {self.param: name}
        raise ValueError(f"spec {spec.id} is not a design of space {self.name!r}")

    def from_params(self, params: Mapping[str, Any]) -> ArchSpec:
        row = params.get(self.param)
        if not isinstance(row, str) or row not in self.points:
            raise ValueError(f"{self.param}={row!r} is invalid; accepted: {', '.join(self.points)}")
        return self.points[row]

    def distributions(self) -> dict[str, list[Any]]:
        return {self.param: list(self.points)}

    def contains(self, spec: ArchSpec) -> bool:
        return spec in self.points.values()

    def size(self) -> int:
        return len(self.points)

    def grid(self, limit: int = 100_000) -> Iterator[ArchSpec]:
        yield from self.points.values()


def _distinct(named: Mapping[str, ArchSpec]) -> dict[str, ArchSpec]:
    """Rows that are the same model (e.g. LocalViT-T in Tables II-V) once, under their first name."""
    seen: dict[ArchSpec, str] = {}
    for name, spec in named.items():
        seen.setdefault(spec, name)
    return {name: spec for spec, name in seen.items()}


Space = SearchSpace | ListSpace

# --- presets and files ------------------------------------------------------------------------

_SPACE_KEYS = {"base", "layers", "heads", "embed_dim", "depth", "shared"}
_BASE_KEYS = {"embed_dim", "num_heads", "depth", "img_size", "patch_size", "in_chans", "num_classes", "backbone"}


def make_space(preset: str = "default", backbone: str = "deit_tiny", include_unfinished: bool = False) -> Space:
    """A named space: `paper` (the paper's table rows) or `default` (per-layer freedom); or a
    space file, a reference file or a folder of reference files (`load_space`)."""
    if preset == "paper":
        if backbone != "deit_tiny":
            raise ValueError(f"backbone={backbone!r} is invalid with space 'paper'; accepted: deit_tiny")
        return ListSpace()
    if preset == "default":
        base = base_spec(backbone)
        return SearchSpace("default", base, LayerChoices(kernel=(3, 5)), heads=vit_heads(backbone))
    path = Path(preset)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        return load_space(path, backbone, include_unfinished)
    raise ValueError(f"space={preset!r} is invalid; accepted: paper, default, or a .yaml/.json space or "
                     f"reference file, or a folder of reference files")


def load_space(path: str | Path, backbone: str = "deit_tiny", include_unfinished: bool = False) -> Space:
    """A space from a YAML or JSON file (docs/models.md), or the designs of a reference file or
    folder (`space.references`), which a grid sampler trains in turn."""
    if Path(path).is_dir():
        return _references_space(load_references(path, backbone, include_unfinished))
    data = read_data_file(path, "space file")
    if is_reference_file(data):
        return _references_space(references_from_dict(data, path=path, backbone=backbone,
                                                      include_unfinished=include_unfinished))
    if not isinstance(data, dict):
        raise ValueError(f"space file {str(path)!r} is invalid; accepted: a mapping with keys "
                         f"{', '.join(sorted(_SPACE_KEYS))}")
    return space_from_dict(data, name=Path(path).stem, backbone=backbone)


def _references_space(references: ReferenceSet) -> ListSpace:
    return ListSpace(name=references.name, points={row.name: row.spec for row in references.rows}, param="reference")


def space_from_dict(data: Mapping[str, Any], name: str = "custom", backbone: str = "deit_tiny") -> SearchSpace:
    unknown = set(data) - _SPACE_KEYS
    if unknown:
        raise ValueError(f"space key {sorted(unknown)[0]!r} is invalid; accepted: {', '.join(sorted(_SPACE_KEYS))}")
    base_value = data.get("base", backbone)
    if isinstance(base_value, str):
        base = base_spec(base_value)
    elif isinstance(base_value, Mapping):
        bad = set(base_value) - _BASE_KEYS
        if bad:
            raise ValueError(f"base key {sorted(bad)[0]!r} is invalid; accepted: {', '.join(sorted(_BASE_KEYS))}")
        globals_ = dict(base_value)
        depth = globals_.pop("depth", 12)
        base = ArchSpec(layers=(LayerSpec("local"),) * depth, **globals_)
    else:
        raise ValueError(f"base={base_value!r} is invalid; accepted: a backbone name or a mapping of "
                         f"{', '.join(sorted(_BASE_KEYS))}")
    layer_data = data.get("layers", {})
    if not isinstance(layer_data, Mapping):
        raise ValueError(f"layers={layer_data!r} is invalid; accepted: a mapping of choice lists")
    bad = set(layer_data) - {f.name for f in fields(LayerChoices)}
    if bad:
        raise ValueError(f"layers key {sorted(bad)[0]!r} is invalid; accepted: "
                         f"{', '.join(f.name for f in fields(LayerChoices))}")
    shared = data.get("shared", False)
    if not isinstance(shared, bool):
        raise ValueError(f"shared={shared!r} is invalid; accepted: true or false")

    def ints(key: str) -> tuple[int, ...]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise ValueError(f"{key}={value!r} is invalid; accepted: a list of positive integers")
        return tuple(value)

    return SearchSpace(name, base, LayerChoices(**{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in layer_data.items()}),
                       heads=ints("heads"), embed_dims=ints("embed_dim"), depths=ints("depth"), shared=shared)
