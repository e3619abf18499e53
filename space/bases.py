"""What spaces and reference sets are built on: the base architecture of each backbone, and the
YAML or JSON files both are read from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localvit.backbones import VIT_BACKBONES, block_dims, vit_heads
from localvit.spec import ArchSpec, LayerSpec

#: The `deit_*` bases: LocalViT's width, depth and heads, a locality FFN in every block.
BASES: dict[str, ArchSpec] = {
    name: ArchSpec.uniform(LayerSpec("local"), depth=cfg["depth"], embed_dim=cfg["embed_dim"],
                           num_heads=vit_heads(name)[1])
    for name, cfg in VIT_BACKBONES.items()
}


def base_spec(name: str) -> ArchSpec:
    """The base architecture of a search backbone (`localvit.backbones.SEARCH_BACKBONES`)."""
    if name in BASES:
        return BASES[name]
    return ArchSpec(layers=(LayerSpec("local"),) * len(block_dims(name)), backbone=name)  # block_dims checks the name


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
