"""What spaces and reference sets are built on: the base architecture of each backbone, and the
YAML or JSON files both are read from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localvit.presets import PRESETS
from localvit.spec import ArchSpec, LayerSpec

BASES: dict[str, ArchSpec] = {
    "deit_tiny": ArchSpec.uniform(LayerSpec("local"), depth=12, embed_dim=192, num_heads=4),
    "deit_small": ArchSpec.uniform(LayerSpec("local"), depth=12, embed_dim=384, num_heads=8),
}


def base_spec(name: str) -> ArchSpec:
    """The base architecture of a backbone name: `deit_tiny`, `deit_small` or a stage preset."""
    if name in BASES:
        return BASES[name]
    if name in PRESETS:
        return ArchSpec(layers=(LayerSpec("local"),) * PRESETS[name].depth, backbone=name)
    raise ValueError(f"backbone={name!r} is invalid; accepted: {', '.join([*BASES, *PRESETS])}")


def read_data_file(path: str | Path, what: str) -> Any:
    """A parsed .yaml/.yml or .json file; a missing or unparsable one is a ValueError naming it as `what`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is invalid; accepted: an existing .yaml or .json file")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as err:  # both parsers' errors: report the file, not a trace
        raise ValueError(f"{what} {str(path)!r} cannot be parsed: {str(err).splitlines()[0]}") from None


__all__ = ["BASES", "base_spec", "read_data_file"]
