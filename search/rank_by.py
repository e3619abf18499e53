"""What a search ranks its candidates by (`--rank-by`): the best trial, the one-shot finalists,
the order of the exports and the accuracy axis of the Pareto front.

The default (`auto`) is the signal the audit of the search's protocol names
(`ranking.signals.choose_default`: parameter count, unless a signal that costs more matches it
out of sample on every figure and beats it where counting cannot decide); with no audit of the
protocol, parameter count, since nothing says the proxy ranks better than counting.

What Optuna's sampler optimises stays the measured signal (the proxy's top-1, or the supernet's
score): it is the only one the sampler must learn, since the cost model prices every other
before a candidate is trained, and the budget already pushes the sampler to the cost edge.
The ranking is applied to what was measured, so a study can be ranked again by another signal
without training (run the same command with another `--rank-by`).

The fidelity ladder (`ranking.ladder`): where the audit of a higher rung of the protocol beats
counting and the search took its finalists up to that rung (`--max-rung`, `promote` in
`search.driver`), `auto` ranks the finalists by what that rung's audit names, on their values
at that rung; the other candidates rank after them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial

from ranking.audits import audit_for, protocol_key, supernet_audit
from ranking.ladder import ladder_for, trusted_rung
from ranking.signals import FREE, combine, describe_choice, evaluate
from space.cost import target_cost
from space.references import PAPER_IMAGENET, ReferenceSet, load_references

from .settings import SUPERNET, SearchSettings, measured_by

AUTO = "auto"
#: The study attribute that records the ranking a search resolved, read by its reports and exports.
STUDY_ATTR = "rank_by"


@dataclass(frozen=True)
class RankBy:
    """The signal trials are ranked by; `measured` is what the study's values measure."""

    signal: str
    measured: str = "proxy"
    weight: float | None = None  # `M+params`'s weight, fitted on every row of the audit
    why: str = ""  # which audit the choice rests on, in plain words
    weights: Mapping[str, float] = field(default_factory=dict)  # the audit's fitted weight of each `M+params`
    rung: int = 1  # the rung the measured values are read at (`ranking.ladder`)
    promoted: Mapping[str, float] = field(default_factory=dict)  # trial number -> its value at `rung` > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def by(self, signal: str) -> RankBy:
        """The same search ranked by `signal` instead, with the weight its audit fitted (1 if none)."""
        return RankBy(signal, self.measured, self.weights.get(signal, 1.0) if signal.endswith("+params") else None,
                      self.why, self.weights, self.rung, self.promoted)

    @property
    def label(self) -> str:
        """How the signal reads on a plot's axis."""
        return {"proxy": "proxy validation top-1 (%)", "supernet": "supernet score (%)", "params": "parameters",
                "flops": "GFLOPs (224x224)"}.get(self.signal, f"{self.signal} (higher ranks first)")


def reference_set(settings: SearchSettings) -> ReferenceSet | None:
    """The designs the search's ranking is audited on: `--references`, else the paper's designs
    (of the DeiT-T base; None for the other backbones)."""
    if settings.references:
        return load_references(settings.references, settings.backbone, settings.include_unfinished)
    return load_references(PAPER_IMAGENET) if settings.backbone == "deit_tiny" else None


def ladder_of(settings: SearchSettings) -> dict[int, dict[str, Any]]:
    """The audited rungs of the search's proxy protocol on its reference set (`ranking.ladder`)."""
    references = reference_set(settings)
    if references is None or measured_by(settings.strategy) != "proxy":
        return {}
    return ladder_for(protocol_key(settings.protocol), settings.study_dir.parent, references.key)


def promotion_rung(settings: SearchSettings) -> int:
    """The rung a search takes its finalists up to: `--max-rung`, or (auto) the lowest rung whose
    audit beats counting; 1 (no promotion) when none does."""
    if settings.max_rung != AUTO:
        return int(settings.max_rung)
    return trusted_rung(ladder_of(settings)) or 1


def resolve(settings: SearchSettings, supernet: Mapping[str, Any] | None = None,
            promotion: Mapping[str, Any] | None = None) -> RankBy:
    """The ranking of a search: `settings.rank_by`, or the default of the audit its protocol (or
    supernet) rests on, on its reference set: at the lowest rung whose audit beats counting when
    the search's finalists were trained there (`promotion`, what `search.driver.promote` records).
    `supernet` is the one-shot search's {"path", "key"}. A bad reference set is a ValueError in one line."""
    measured = measured_by(settings.strategy)
    references = reference_set(settings)
    key = references.key if references is not None else None
    ladder = ladder_of(settings)
    trusted = trusted_rung(ladder)
    rung, promoted = 1, {}
    if promotion and (settings.rank_by != AUTO or promotion["rung"] == trusted):
        rung, promoted = int(promotion["rung"]), dict(promotion["values"])
    if measured == "supernet":
        audit, source = supernet_audit(supernet, "imagenet")
        audit = audit if audit is not None and key in (None, audit["references"].get("key")) else None
        where = f"the ImageNet audit of supernet {supernet.get('key') if supernet else '?'}{source}"
    elif rung > 1 and rung in ladder:
        audit = ladder[rung]
        where = (f"the audit `{audit['study']}` of rung {rung} of this proxy protocol ({audit['created']}), the "
                 f"rung its {len(promoted)} finalists were trained to again")
    else:
        audit = audit_for(settings.protocol, settings.study_dir.parent, key) if references is not None else None
        where = f"the audit `{audit['study']}` of this proxy protocol ({audit['created']})" if audit else ""
    signals = (audit or {}).get("signals") or {}
    on = (f" on {references.name} ({len(references.rows)} designs, {references.target or 'target not stated'})"
          if references is not None else "")
    if settings.rank_by != AUTO:
        signal = settings.rank_by
        why = f"{signal}, as asked (--rank-by)"
    elif audit is not None and signals:
        signal = audit["default_signal"]
        why = f"{signal}, the default of {where}{on}: {describe_choice(signals, signal, measured)}"
    elif references is not None:
        signal = "params"
        why = (f"params: the {measured} of this search has no audit{on} (`python -m audit` with the same proxy "
               f"options and --references makes one), and parameter count costs nothing: "
               f"{free_baseline(references)}")
    else:
        signal = "params"
        why = (f"params: there are no reference designs of backbone {settings.backbone} to audit a ranking on "
               f"(--references), and parameter count costs nothing")
    weights = {name: float(s["weights"]["all"]) for name, s in signals.items()
               if name.endswith("+params") and (s.get("weights") or {}).get("all") is not None}
    if signal.endswith("+params") and signal not in weights:
        why += "; no audit fitted its weight, so z-scores count equally (weight 1)"
    if settings.rank_by == AUTO and trusted is not None and trusted > 1 and rung != trusted:
        why += (f"; the audit of rung {trusted} beats counting, but this search took no finalists there "
                f"(--max-rung {settings.max_rung}" + (f", resolved to {trusted}" if settings.max_rung == AUTO else "")
                + ")")
    return RankBy(signal, measured, why=why, weights=weights, rung=rung, promoted=promoted).by(signal)


def record(study: optuna.Study, rank_by: RankBy) -> None:
    study.set_user_attr(STUDY_ATTR, rank_by.to_dict())


def of_study(study: optuna.Study) -> RankBy:
    """The ranking a study's search resolved; the measured values for a study made before rankings."""
    recorded = study.user_attrs.get(STUDY_ATTR)
    if recorded:
        return RankBy(**recorded)
    measured = measured_by((study.user_attrs.get("settings") or {}).get("strategy", ""))
    return RankBy(measured, measured, None, "the measured values (the study predates rankings)")


def measured_value(trial: FrozenTrial, measured: str, rank_by: RankBy | None = None) -> float | None:
    """A trial's proxy top-1 (its value when trained; at a higher rung, its value there, None when
    it was not a finalist) or supernet score (its value when scored, the `supernet_accuracy` of a
    finalist trained from scratch)."""
    if rank_by is not None and rank_by.rung > 1:
        value = rank_by.promoted.get(str(trial.number))
        return None if value is None else float(value)
    if measured == "supernet":
        if trial.user_attrs.get("status") == SUPERNET:
            return trial.values[0]
        return trial.user_attrs.get("supernet_accuracy")
    return trial.values[0] if trial.values else None


def values(trials: Sequence[FrozenTrial], rank_by: RankBy) -> list[float]:
    """The ranking signal of each trial (higher ranks first). Combined signals are computed over
    the trials given, which are the candidates being ranked against each other; a trial without
    the measured value gets -inf."""
    if rank_by.signal in FREE:
        return [float(t.user_attrs[rank_by.signal]) for t in trials]
    measured = [measured_value(t, rank_by.measured, rank_by) for t in trials]
    if rank_by.signal == rank_by.measured:
        return [-math.inf if m is None else float(m) for m in measured]
    known_values = {i: m for i, m in enumerate(measured) if m is not None}
    known = list(known_values)
    out = [-math.inf] * len(trials)
    if known:
        combined = combine(rank_by.signal, {rank_by.measured: list(known_values.values()),
                                            "params": [trials[i].user_attrs["params"] for i in known]}, rank_by.weight)
        for k, i in enumerate(known):
            out[i] = float(combined[k])
    return out


def ranked(trials: Sequence[FrozenTrial], rank_by: RankBy) -> list[FrozenTrial]:
    """`trials` best first by the ranking; ties go to fewer FLOPs, then to the earlier trial."""
    scores = values(trials, rank_by)
    order = sorted(range(len(trials)), key=lambda i: (-scores[i], trials[i].user_attrs.get("flops", math.inf),
                                                       trials[i].number))
    return [trials[i] for i in order]


def free_baseline(references: ReferenceSet) -> str:
    """Parameter count's agreement with a reference set, in words (it needs no training)."""
    costs = [target_cost(row.spec) for row in references.rows]
    e = evaluate("params", [c.params for c in costs], [row.accuracy for row in references.rows],
                 [c.params for c in costs], [c.flops for c in costs], n_resamples=1000)
    return (f"parameter count ranks the {e.n} designs of {references.name} as the target does at tau-b "
            f"{e.tau_b:.2f} [{e.tau_b_interval[0]:.2f}, {e.tau_b_interval[1]:.2f}]")


__all__ = ["AUTO", "RankBy", "free_baseline", "ladder_of", "measured_value", "of_study", "promotion_rung", "ranked",
           "record", "resolve", "values"]
