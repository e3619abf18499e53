"""Aging evolution as an Optuna sampler: children are mutations of feasible tournament winners,
on a define-by-run space whose parameters depend on earlier choices."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.evolution import PARENT_ATTR, RegularizedEvolutionSampler
from search.optuna_adapter import admits, set_system_attr

LAYERS = 8


def _suggest(trial: optuna.Trial) -> dict:
    """A conditional space like ours: a layer's width and kernel exist only for some types."""
    design = {}
    for i in range(LAYERS):
        kind = trial.suggest_categorical(f"l{i}.ffn", ["mlp", "conv", "local"])
        design[f"l{i}.ffn"] = kind
        if kind != "mlp":
            design[f"l{i}.gamma"] = trial.suggest_categorical(f"l{i}.gamma", [1, 2, 3, 4, 6])
        if kind == "local":
            design[f"l{i}.kernel"] = trial.suggest_categorical(f"l{i}.kernel", [3, 5])
    return design


def _score(design: dict) -> float:
    """Best: every layer local, gamma 4, kernel 3 (a single optimum the search has to assemble)."""
    return sum((design[f"l{i}.ffn"] == "local") + (design.get(f"l{i}.gamma") == 4) + (design.get(f"l{i}.kernel") == 3)
               for i in range(LAYERS))


def _run(sampler: optuna.samplers.BaseSampler, n: int, constraint=None, legacy: bool = False) -> optuna.Study:
    """`legacy`: the constraint as the list optuna-dashboard reads, else by Optuna 5's `set_constraint`."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        design = _suggest(trial)
        if constraint is not None and legacy:
            set_system_attr(trial.storage, trial, "constraints", [constraint(design)])
        elif constraint is not None:
            trial.set_constraint("c", constraint(design))
        study.tell(trial, _score(design))
    return study


def test_evolution_finds_better_designs_than_random_search_at_equal_trials() -> None:
    for seed in (0, 1, 2):
        evolved = _run(RegularizedEvolutionSampler(population=20, tournament=5, seed=seed), 300)
        drawn = _run(optuna.samplers.RandomSampler(seed=seed), 300)
        late = [t.value for t in evolved.trials[-100:]]
        assert sum(late) / len(late) > max(t.value for t in drawn.trials)  # its typical child beats random's best
        assert evolved.best_value >= drawn.best_value + 4


@pytest.mark.parametrize("legacy", [False, True])
def test_a_child_is_a_small_mutation_of_a_feasible_parent(legacy) -> None:
    # designs with a conv layer first are infeasible: they must never be parents
    study = _run(RegularizedEvolutionSampler(population=10, tournament=3, mutation_prob=0.05, seed=0), 120,
                 constraint=lambda d: 1.0 if d["l0.ffn"] == "conv" else -1.0, legacy=legacy)
    children = [t for t in study.trials if PARENT_ATTR in t.system_attrs]
    assert len(children) >= 100
    changes = []
    for child in children:
        parent = study.trials[child.system_attrs[PARENT_ATTR]]
        assert parent.state == TrialState.COMPLETE and all(c <= 0 for c in parent.constraints.values())
        assert any(t.constraints and max(t.constraints.values()) > 0 for t in study.trials)
        assert parent.number < child.number
        changed = {k for k in set(child.params) | set(parent.params) if child.params.get(k) != parent.params.get(k)}
        assert changed  # one parameter is always mutated
        changes.append(len(changed))
    assert sorted(changes)[len(changes) // 2] <= 3  # the median child keeps almost all of its parent


def test_trials_are_random_until_the_population_is_feasible_and_finished() -> None:
    study = _run(RegularizedEvolutionSampler(population=15, tournament=3, seed=0), 30)
    assert not any(PARENT_ATTR in t.system_attrs for t in study.trials[:15])
    assert all(PARENT_ATTR in t.system_attrs for t in study.trials[15:])


def test_several_objectives_take_a_non_dominated_parent() -> None:
    sampler = RegularizedEvolutionSampler(population=10, tournament=10, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(40):
        trial = study.ask()
        design = _suggest(trial)
        study.tell(trial, [_score(design), sum(v == "local" for v in design.values())])
    for child in study.trials[10:]:
        parent = study.trials[child.system_attrs[PARENT_ATTR]]
        window = [t for t in study.trials[:child.number] if t.state == TrialState.COMPLETE][-10:]
        assert parent in window and not any(
            t.values[0] >= parent.values[0] and t.values[1] <= parent.values[1] and t.values != parent.values
            for t in window)


@pytest.mark.parametrize("kwargs, words", [
    ({"population": 5, "tournament": 6}, "1 <= tournament <= population"),
    ({"mutation_prob": 1.5}, "mutation_prob=1.5 is invalid"),
])
def test_bad_settings_are_one_clear_error(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        RegularizedEvolutionSampler(**kwargs)


def test_admits_says_whether_a_parents_value_lies_in_a_changed_distribution() -> None:
    assert admits(CategoricalDistribution(["local", "mlp"]), "mlp")
    assert not admits(CategoricalDistribution(["local", "mlp"]), "conv")
    assert admits(IntDistribution(2, 8, step=2), 6) and not admits(IntDistribution(2, 8, step=2), 5)
    assert admits(FloatDistribution(0.0, 1.0), 0.5) and not admits(FloatDistribution(0.0, 1.0), 1.5)
