"""Command-line options, built from the fields of `SearchSettings`, `Budget` and `ProxyProtocol`.

A field is an option when its metadata holds a `help` text and a `group`; it may also give a
`flag` (default: `--field-name`; a boolean that is on by default takes `--no-...`), a `parse`
function from the option's text to the field's value, a `metavar`, a `cli_default` (where the
default depends on other options, as the proxy resolution does on the backbone) and a
`default_text` for the help. Name, type, default, help and check are so written once, on the
field, and `run_search.py`, `python -m audit` and the benchmarks take the same options. Values
are converted and checked when the settings are built (`settings_from_args`), so that a bad
one is the dataclass's one-line error.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, Iterable, Union

from localvit.backbones import PROXY_IMG_SIZE, VIT_BACKBONES
from localvit.cli import option_flag
from proxy.protocol import PROXY_GROUP, ProxyProtocol
from space.budget import BUDGET_GROUP, Budget

from .settings import COMPUTE, ONESHOT_GROUP, SEARCH, TIME, WHERE, SearchSettings
from .storage import without_password

#: The groups of `run_search.py --help`, in this order.
GROUPS = (BUDGET_GROUP, SEARCH, ONESHOT_GROUP, WHERE, COMPUTE, TIME, PROXY_GROUP)
_CLASSES = (SearchSettings, Budget, ProxyProtocol)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _switch(f: dataclasses.Field) -> str:
    """The destination of a boolean option: `no_asha` for a field on by default, the field's name else."""
    return f"no_{f.name}" if _default(f) else f.name


def _default(f: dataclasses.Field) -> Any:
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _scalar_type(cls: type, f: dataclasses.Field) -> type:
    """`int` of `int | None`: what argparse converts the text to (the rest is the field's check)."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_options(parser: argparse.ArgumentParser, *, groups: Iterable[str] = GROUPS,
                names: Iterable[str] = ()) -> dict[str, argparse._ArgumentGroup]:
    """Add the options of the given `groups`, and the single options `names` (field names), to
    `parser`; returns its argument groups by title, for options of a command's own."""
    wanted_groups, wanted_names = set(groups), set(names)
    selected = [(cls, f) for cls in _CLASSES for f in option_fields(cls)
                if f.metadata["group"] in wanted_groups or f.name in wanted_names]
    titles = [g for g in GROUPS if any(f.metadata["group"] == g for _, f in selected)]
    made = {title: parser.add_argument_group(title) for title in titles}
    for cls, f in selected:
        default = _default(f)
        shown = f.metadata.get("default_text", "none" if default is None else default)
        kind = _scalar_type(cls, f)
        group = made[f.metadata["group"]]
        if kind is bool:  # a switch that turns the default around: --no-asha, --no-augment
            group.add_argument(option_flag(f), dest=_switch(f), action="store_true", help=f.metadata["help"])
            continue
        text = f"{f.metadata['help']} (default: {shown})"
        converter = str if "parse" in f.metadata or kind not in (int, float) else kind
        group.add_argument(option_flag(f), dest=f.name, type=converter, default=default,
                           metavar=f.metadata.get("metavar"), help=text.replace("%", "%%"))
    return made


def values_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The option fields of `cls` that `args` holds, their text parsed (`parse` in the metadata)."""
    values = {}
    for f in option_fields(cls):
        if hasattr(args, _switch(f)) and _scalar_type(cls, f) is bool:
            values[f.name] = (not _default(f)) if getattr(args, _switch(f)) else _default(f)
            continue
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        parse = f.metadata.get("parse")
        values[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return values


def protocol_from_args(args: argparse.Namespace, backbone: str, seed: int) -> ProxyProtocol:
    """The proxy protocol of the options; the resolution's default follows the backbone."""
    values = values_from_args(ProxyProtocol, args)
    if values.get("img_size") is None:
        values["img_size"] = ProxyProtocol.img_size if backbone in VIT_BACKBONES else PROXY_IMG_SIZE
    return ProxyProtocol(**values, seed=seed)


def compute_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The SearchSettings fields of the compute options."""
    return {f.name: getattr(args, f.name) for f in option_fields(SearchSettings)
            if f.metadata["group"] == COMPUTE}


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """The settings of `run_search.py`'s options; a bad value is a ValueError naming it."""
    values = values_from_args(SearchSettings, args)
    budget_text = args.max_flops or args.max_params or "nobudget"
    if values["study"] is None:
        values["study"] = "-".join([values["backbone"], os.path.splitext(os.path.basename(values["space"]))[0],
                                    budget_text])
    if values["storage"]:
        values["storage"] = without_password(values["storage"])
    return SearchSettings(**values, budget=Budget(**values_from_args(Budget, args)),
                          protocol=protocol_from_args(args, values["backbone"], values["seed"]))


__all__ = ["GROUPS", "add_options", "compute_from_args", "option_fields", "protocol_from_args",
           "settings_from_args", "values_from_args"]
