"""NNI interop (optional extra `pip install localvit-nas[nni]`): the space as `nni.mutable`
objects and frozen NNI samples back to specs. Nothing else in the project imports NNI.

Every parameter of the space becomes a `Categorical` with its Optuna name as label; a frozen
sample carries all of them, and the ones that do not apply (an SE ratio without SE) are
ignored when it is turned back into a spec, exactly as `SearchSpace.from_params` does.
"""
from __future__ import annotations

from typing import Any, Mapping

from localvit.spec import ArchSpec

from .space import Space


def to_nni(space: Space) -> Any:
    """`nni.mutable.MutableDict` of one `Categorical` per parameter of `space`."""
    from nni.mutable import Categorical, MutableDict

    return MutableDict({name: Categorical(choices, label=name) for name, choices in space.distributions().items()})


def from_nni_sample(space: Space, sample: Mapping[str, Any]) -> ArchSpec:
    """The spec a frozen NNI sample (label -> value) describes."""
    return space.from_params(sample)


def to_nni_sample(space: Space, spec: ArchSpec) -> dict[str, Any]:
    """A complete NNI sample for `spec`: its own choices, and the first choice where none applies."""
    sample = {name: choices[0] for name, choices in space.distributions().items()}
    sample.update(space.to_params(spec))
    return sample
