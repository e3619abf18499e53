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

A reference set can also be a folder (`load_references(DIR)`): every reference file under it,
the `result.yaml` that `python -m imagenet.train` writes beside its checkpoints among them. A
result row says in its `source` what it was trained on (dataset, image size, epochs) and
whether the run finished its epochs; rows of different targets are not mixed, unfinished runs
are left out unless asked for, and repeated runs of one design become one row with the mean of
their accuracies and their count (a seed ceiling on the target side).
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field, replace
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

    @property
    def key(self) -> str:
        """A short hash of the designs and their accuracies: an audit is of exactly these rows."""
        rows = sorted((row.spec.id, round(row.accuracy, 6)) for row in self.rows)
        return hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:10]


def is_reference_file(data: Any) -> bool:
    """A parsed YAML/JSON file is a reference set when it holds `rows` (a space file never does)."""
    return isinstance(data, Mapping) and "rows" in data


def load_references(path: str | Path = PAPER_IMAGENET, backbone: str = "deit_tiny",
                    include_unfinished: bool = False) -> ReferenceSet:
    """Read and check a reference file, or every reference file under a folder (see the module's
    docstring); every bad row is an error that names the row and its file."""
    if Path(path).is_dir():
        return references_from_folder(Path(path), backbone, include_unfinished)
    data = read_data_file(path, "reference file")
    return references_from_dict(data, path=path, backbone=backbone, include_unfinished=include_unfinished)


def target_of(row: ReferenceRow, file_target: str) -> str:
    """What a row's accuracy measures: a training run's dataset, image size and epochs (a
    `result.yaml` row says them), else the target its file names."""
    source = row.source
    if all(k in source for k in ("dataset", "img_size", "epochs")):
        return f"{source['dataset']} top-1 (%), {source['img_size']}x{source['img_size']}, {source['epochs']} epochs"
    return file_target


def references_from_folder(folder: Path, backbone: str = "deit_tiny", include_unfinished: bool = False
                           ) -> ReferenceSet:
    """Every reference file under `folder` (`result.yaml` files among them) as one set of one
    target; repeated designs averaged, unfinished runs left out unless `include_unfinished`."""
    found: list[tuple[ReferenceRow, str, Path]] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".yaml", ".yml", ".json")
                       and p.is_file()):
        try:
            data = read_data_file(path, "reference file")
        except ValueError:
            if path.name == "result.yaml":
                raise
            continue  # a file that is no reference file (a config, a log) has nothing to say here
        if not is_reference_file(data):
            continue
        refs = references_from_dict(data, path=path, backbone=backbone, include_unfinished=include_unfinished,
                                    unique=False)
        found += [(row, target_of(row, refs.target), path) for row in refs.rows]
    if not found:
        raise ValueError(f"reference folder {str(folder)!r} holds no finished result or reference row; accepted: a "
                         f"folder with result.yaml files (python -m imagenet.train writes them) or reference files"
                         + ("" if include_unfinished else " (unfinished runs are left out)"))
    target = found[0][1]
    for row, row_target, path in found:
        if row_target != target:
            raise ValueError(f"reference folder {str(folder)!r} mixes targets: row {row.name!r} of {str(path)!r} is "
                             f"{row_target}, where {str(found[0][2])!r} is {target}; accepted: rows of one dataset, "
                             f"image size and epoch count")
    by_design: dict[ArchSpec, list[tuple[ReferenceRow, Path]]] = {}
    for row, _, path in found:
        by_design.setdefault(row.spec, []).append((row, path))
    rows: list[ReferenceRow] = []
    names: dict[str, Path] = {}
    for runs in by_design.values():
        first, path = runs[0]
        if first.name in names:
            raise ValueError(f"reference folder {str(folder)!r}: name {first.name!r} of {str(path)!r} is taken by a "
                             f"row of {str(names[first.name])!r}; accepted: unique names")
        names[first.name] = path
        if len(runs) == 1:
            rows.append(first)
            continue
        accuracies = [row.accuracy for row, _ in runs]
        rows.append(replace(first, accuracy=statistics.fmean(accuracies), source={
            **first.source, "runs": len(runs), "accuracies": accuracies,
            "files": [str(p.relative_to(folder)) for _, p in runs]}))
    return ReferenceSet(name=folder.name, target=target, rows=tuple(rows), path=str(folder))


def references_from_dict(data: Any, path: str | Path = "", backbone: str = "deit_tiny",
                         include_unfinished: bool = False, unique: bool = True) -> ReferenceSet:
    """The rows of a parsed reference file, checked; a run that did not finish its epochs
    (`source.finished: false`) is left out unless `include_unfinished`. `unique=False` lets a
    design repeat (a folder averages them)."""
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
        if row.source.get("finished") is False and not include_unfinished:
            continue
        if row.name in names and unique:
            raise ValueError(f"{label}: name {row.name!r} is taken by row {names[row.name]}; accepted: unique names")
        if row.spec in designs and unique:
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
           "references_from_dict", "references_from_folder", "target_of"]
