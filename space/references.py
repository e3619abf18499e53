"""Reference sets: designs whose accuracy under the target setting (ImageNet) is known.

A proxy that ranks these designs as the target does earns some trust for the designs it has
not seen; `python -m audit` measures that. The paper's ImageNet top-1 of Tables I, II and IV ship
as `references/paper_imagenet.yaml`; a user's own file has the same form:

    name: my-imagenet-100          # optional; the file's stem otherwise
    target: ImageNet-100 top-1 (%), 300 epochs
    rows:
      - name: my-design            # unique
        accuracy: 81.3             # the target accuracy, any scale where higher is better
        source: {run: "imagenet.train 2026-11-30"}   # optional, free-form
        spec: {embed_dim: 192, num_heads: 4, layers: [...]}   # or "path/arch.json" (relative to the file)

Nothing here knows the shipped rows: every file is read and checked the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from localvit.spec import ArchSpec, as_spec

from .bases import base_spec, read_data_file

PAPER_IMAGENET = Path(__file__).resolve().parent / "references" / "paper_imagenet.yaml"
"""The paper's ImageNet top-1 of Tables I, II and IV: 18 distinct designs on the DeiT-T base."""
_FILE_KEYS = {"name", "target", "source", "rows"}
_ROW_KEYS = {"name", "accuracy", "spec", "source"}


@dataclass(frozen=True)
class ReferenceRow:
    """One design and its accuracy under the target setting."""

    name: str
    spec: ArchSpec
    accuracy: float
    source: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceSet:
    """The rows of a reference file, checked: valid specs of one backbone, distinct names and designs."""

    name: str
    target: str
    rows: tuple[ReferenceRow, ...]
    path: str = ""

    def by_spec_id(self) -> dict[str, ReferenceRow]:
        return {row.spec.id: row for row in self.rows}


def is_reference_file(data: Any) -> bool:
    """A parsed YAML/JSON file is a reference set when it holds `rows` (a space file never does)."""
    return isinstance(data, Mapping) and "rows" in data


def load_references(path: str | Path = PAPER_IMAGENET, backbone: str = "deit_tiny") -> ReferenceSet:
    """Read and check a reference file; every bad row is an error that names the row."""
    data = read_data_file(path, "reference file")
    return references_from_dict(data, path=path, backbone=backbone)


def references_from_dict(data: Any, path: str | Path = "", backbone: str = "deit_tiny") -> ReferenceSet:
    where = f"reference file {str(path)!r}" if path else "reference set"
    if not is_reference_file(data) or not isinstance(data["rows"], list) or not data["rows"]:
        raise ValueError(f"{where} is invalid; accepted: a mapping with a non-empty list under `rows`")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise ValueError(f"{where}: key {sorted(unknown)[0]!r} is invalid; accepted: {', '.join(sorted(_FILE_KEYS))}")
    base = base_spec(backbone)
    rows: list[ReferenceRow] = []
    names: dict[str, int] = {}
    designs: dict[ArchSpec, str] = {}
    for number, raw in enumerate(data["rows"], start=1):
        label = f"{where}, row {number}" + (f" ({raw.get('name')!r})" if isinstance(raw, Mapping) else "")
        row = _read_row(raw, label, Path(path).parent if path else Path.cwd())
        if not _of_backbone(row.spec, base):
            raise ValueError(f"{label}: spec {row.spec.id} is outside backbone {backbone!r}; accepted: designs of "
                             f"that backbone ({_describe_base(base)})")
        if row.name in names:
            raise ValueError(f"{label}: name {row.name!r} is taken by row {names[row.name]}; accepted: unique names")
        if row.spec in designs:
            raise ValueError(f"{label}: its spec is the design of row {designs[row.spec]!r}; accepted: one row "
                             f"per design (average repeated runs into one accuracy)")
        names[row.name], designs[row.spec] = number, row.name
        rows.append(row)
    name = data.get("name") or (Path(path).stem if path else "references")
    return ReferenceSet(name=str(name), target=str(data.get("target", "")), rows=tuple(rows), path=str(path))


def _read_row(raw: Any, label: str, folder: Path) -> ReferenceRow:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{label} is invalid; accepted: a mapping with name, accuracy and spec")
    unknown = set(raw) - _ROW_KEYS
    missing = {"name", "accuracy", "spec"} - set(raw)
    if unknown or missing:
        bad = f"key {sorted(unknown)[0]!r} is invalid" if unknown else f"key {sorted(missing)[0]!r} is missing"
        raise ValueError(f"{label}: {bad}; accepted: name, accuracy, spec and an optional source")
    accuracy = raw["accuracy"]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy):
        raise ValueError(f"{label}: accuracy={accuracy!r} is invalid; accepted: a finite number")
    spec = raw["spec"]
    if isinstance(spec, str) and not spec.lstrip().startswith("{") and not Path(spec).is_absolute():
        spec = folder / spec
    try:
        spec = as_spec(spec)
    except ValueError as err:
        raise ValueError(f"{label}: spec is invalid: {err}") from None
    source = raw.get("source") or {}
    if not isinstance(source, Mapping):
        source = {"note": str(source)}
    return ReferenceRow(name=str(raw["name"]), spec=spec, accuracy=float(accuracy), source=dict(source))


def _of_backbone(spec: ArchSpec, base: ArchSpec) -> bool:
    """Same family; for the plain ViT also the same width and depth (the head count may differ)."""
    if spec.backbone != base.backbone:
        return False
    return base.backbone != "vit" or (spec.embed_dim == base.embed_dim and spec.depth == base.depth)


def _describe_base(base: ArchSpec) -> str:
    if base.backbone == "vit":
        return f"plain ViT of width {base.embed_dim} and depth {base.depth}"
    return f"the {base.backbone} preset"


__all__ = ["PAPER_IMAGENET", "ReferenceRow", "ReferenceSet", "is_reference_file", "load_references",
           "references_from_dict"]
