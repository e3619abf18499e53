"""The design space: exact costs against fvcore, sampling round trips, presets, budgets."""
from __future__ import annotations

import itertools
import random
import subprocess
import sys

import optuna
import pytest

from localvit import ArchSpec, LayerSpec, build_model
from space import (Budget, LayerChoices, PAPER_NAMED_SPECS, PAPER_ROWS, SearchSpace, bounds, load_space,
                   make_space, model_cost, parse_budget, require_feasible, target_cost)
from space.bases import BASES
from tests.conftest import fvcore_cost

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = {
    "default": lambda: make_space("default", "deit_tiny"),
    "default-deit_small": lambda: make_space("default", "deit_small"),
    "paper": lambda: make_space("paper"),
}


def random_specs(space_name: str, count: int, seed: int) -> list[ArchSpec]:
    space = SPACES[space_name]()
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(count)]


def assert_cost_matches_fvcore(spec: ArchSpec) -> None:
    flops, params = fvcore_cost(build_model(spec), spec.img_size, spec.in_chans)
    cost = model_cost(spec)
    assert cost.params == params, spec.to_json()
    assert cost.flops == pytest.approx(flops, rel=1e-3), spec.to_json()


# fvcore traces each model (~0.5 s a spec here, whatever the resolution), so the default run
# checks 40 specs per preset (at a small resolution, and some at 224); the slow run checks 300 per
# preset at 224.
@pytest.mark.parametrize("space_name", ["default", "default-deit_small"])
def test_cost_model_equals_fvcore_on_random_specs_at_small_resolution(space_name: str) -> None:
    for spec in random_specs(space_name, 40, seed=1):
        assert_cost_matches_fvcore(spec.replace(img_size=48, num_classes=10))


def test_cost_model_equals_fvcore_at_224() -> None:
    for spec in random_specs("default", 10, seed=2):
        assert_cost_matches_fvcore(spec)


@pytest.mark.slow
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_cost_model_equals_fvcore_on_300_random_specs_at_224(space_name: str) -> None:
    for spec in random_specs(space_name, 300, seed=3):
        assert_cost_matches_fvcore(spec)


@pytest.mark.parametrize("name", sorted(PAPER_NAMED_SPECS))
def test_cost_model_equals_fvcore_on_every_paper_spec(name: str) -> None:
    assert_cost_matches_fvcore(PAPER_NAMED_SPECS[name])


def test_cost_at_proxy_resolution_and_target() -> None:
    spec = PAPER_NAMED_SPECS["V/LocalViT-T"]
    proxy = spec.replace(img_size=28, patch_size=4, in_chans=1, num_classes=10)
    assert target_cost(spec) == model_cost(spec)
    assert target_cost(spec.replace(img_size=32, in_chans=1, num_classes=10)) == model_cost(spec)
    assert model_cost(proxy).flops < model_cost(spec).flops / 3
    assert_cost_matches_fvcore(proxy)


# --- sampling and round trips --------------------------------------------------------------------

@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_optuna_define_by_run_round_trips(space_name: str) -> None:
    space = SPACES[space_name]()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        trial = study.ask()
        spec = space.suggest(trial)
        assert space.contains(spec)
        assert space.from_params(trial.params) == spec
        assert space.to_params(spec) == trial.params  # only the choices that apply were asked
        study.tell(trial, 0.0)


def test_conditional_choices_exist_only_where_they_apply() -> None:
    space = make_space("default")
    for spec in random_specs("default", 200, seed=4):
        params = space.to_params(spec)
        for i, layer in enumerate(spec.layers):
            prefix = f"l{i:02d}"
            assert (f"{prefix}.se_ratio" in params) == (layer.attn == "se")
            assert (f"{prefix}.kernel" in params) == (layer.ffn == "local")
            assert (f"{prefix}.act" in params) == (layer.ffn != "mlp")


def test_json_round_trip_and_ids_stable_across_processes() -> None:
    specs = [spec for name in SPACES for spec in random_specs(name, 10, seed=5)]
    for spec in specs:
        assert ArchSpec.from_json(spec.to_json()) == spec
    code = ("import sys; from localvit import ArchSpec; "
            "print(' '.join(ArchSpec.from_json(line).id for line in sys.stdin.read().splitlines()))")
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(s.to_json() for s in specs),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [spec.id for spec in specs]


def test_nni_sample_round_trip() -> None:
    pytest.importorskip("nni", reason="NNI 3.0 (the nni extra) did not install beside the pinned stack; "
                        "`make venv` tries it and says why")
    from space.nni_adapter import from_nni_sample, to_nni, to_nni_sample

    for space_name in SPACES:
        space = SPACES[space_name]()
        mutable = to_nni(space)
        for spec in random_specs(space_name, 10, seed=6):
            assert from_nni_sample(space, to_nni_sample(space, spec)) == spec
        sample = mutable.random(random_state=__import__("numpy").random.RandomState(0))
        assert space.contains(from_nni_sample(space, sample))


def test_seeded_sampling_is_reproducible() -> None:
    assert random_specs("default", 5, seed=7) == random_specs("default", 5, seed=7)
    assert random_specs("default", 5, seed=7) != random_specs("default", 5, seed=8)


def test_paper_grid_reproduces_the_table_rows_no_more_no_fewer() -> None:
    grid = list(make_space("paper").grid())
    assert len(grid) == len(set(grid))
    assert set(grid) == {row.spec for row in PAPER_ROWS}


def test_grid_enumerates_a_small_space_exactly() -> None:
    space = SearchSpace("tiny", BASES["deit_tiny"].replace(layers=(LayerSpec("local"),) * 2),
                        LayerChoices(ffn=("mlp", "local"), act=("relu6",), attn=("none", "se"), se_ratio=(4, 192),
                                     gamma=(1, 2)))
    # per block: mlp x 2 gammas + local x (none + se x 2 ratios) x 2 gammas = 2 + 6 = 8 designs
    grid = list(space.grid())
    assert space.size() == len(grid) == len(set(grid)) == 8 ** 2
    assert all(space.contains(spec) for spec in grid)
    with pytest.raises(ValueError, match="at most 10"):
        list(space.grid(limit=10))


def test_bounds_are_exact_against_brute_force() -> None:
    space = SearchSpace("small", BASES["deit_tiny"].replace(layers=(LayerSpec("local"),) * 3),
                        LayerChoices(ffn=("mlp", "conv", "local"), act=("hswish",), attn=("none", "eca", "se"),
                                     se_ratio=(4, 192), gamma=(1, 6), kernel=(3, 5)), heads=(3, 4))
    per_block = 2 + 2 * 4 + 2 * 2 * 4  # mlp x gamma; conv x gamma x (none, eca, se x 2); local x kernel too
    assert space.size() == 2 * per_block ** 3  # two head choices
    costs = [target_cost(spec) for spec in space.grid()]
    b = bounds(space)
    assert b.cheapest_flops[1].flops == min(c.flops for c in costs)
    assert b.costliest_flops[1].flops == max(c.flops for c in costs)
    assert b.cheapest_params[1].params == min(c.params for c in costs)
    assert b.costliest_params[1].params == max(c.params for c in costs)


# --- budgets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("1.3G", 1_300_000_000), ("1300M", 1_300_000_000), ("1.3e9", 1_300_000_000), ("1.3GFLOPs", 1_300_000_000),
    ("5.9M", 5_900_000), ("900M", 900_000_000), ("1300000000", 1_300_000_000), (" 1.3 g ", 1_300_000_000),
    ("5.9Mparams", 5_900_000), (2e9, 2_000_000_000),
])
def test_budget_strings_parse(text, value: int) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["abc", "-1G", "0", "1.3X", "", "G", "1.3GG", "nan", "inf", "1,3G"])
def test_bad_budget_strings_raise_naming_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_budget(text)
    assert repr(text) in str(err.value) and "1.3G" in str(err.value)


def test_infeasible_budget_names_the_cheapest_spec_cost() -> None:
    space = make_space("default")
    cheapest = bounds(space).cheapest_flops[1].flops
    with pytest.raises(ValueError, match=r"infeasible budget.*cheapest architecture.*MFLOPs"):
        require_feasible(space, Budget(max_flops=cheapest - 1))
    require_feasible(space, Budget(max_flops=cheapest))
    with pytest.raises(ValueError, match="smallest architecture"):
        require_feasible(space, Budget(max_params=bounds(space).cheapest_params[1].params - 1))


def test_sampling_under_an_impossible_constraint_stops_and_says_so() -> None:
    space = make_space("default")
    budget = Budget(max_flops=parse_budget("100M"))
    with pytest.raises(ValueError, match="no spec of space 'default' met the constraint in 50"):
        space.sample(0, accept=budget.admits, max_tries=50)
    spec = space.sample(0, accept=Budget(max_flops=parse_budget("1.3G")).admits)
    assert target_cost(spec).flops <= 1.3e9


def test_budget_violations_follow_optunas_sign_convention() -> None:
    cost = target_cost(PAPER_NAMED_SPECS["V/LocalViT-T"])  # 1.279 GFLOPs, 5.91M params
    ok = Budget(max_flops=parse_budget("1.3G"), max_params=parse_budget("6M")).violations(cost)
    assert all(v <= 0 for v in ok.values()) and set(ok) == {"max_flops", "max_params"}
    bad = Budget(max_flops=parse_budget("1.2G"), min_params=parse_budget("6M")).violations(cost)
    assert bad["max_flops"] > 0 and bad["min_params"] > 0
    with pytest.raises(ValueError, match="min_flops"):
        Budget(max_flops=10, min_flops=20)


# --- space files ---------------------------------------------------------------------------------

def test_space_file_describes_choices(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: deit_tiny\nheads: [3, 4]\nlayers:\n  ffn: [mlp, local]\n  act: [hswish]\n"
                    "  attn: [none, se]\n  se_ratio: [192]\n  gamma: [2, 4]\n  kernel: [3, 5, 7]\n")
    space = load_space(path)
    assert space.name == "mine" and space.heads == (3, 4) and space.layer.kernel == (3, 5, 7)
    spec = space.sample(0)
    assert all(layer.ffn in ("mlp", "local") and layer.gamma in (2.0, 4.0) for layer in spec.layers)
    json_path = tmp_path / "mine.json"
    json_path.write_text('{"base": {"embed_dim": 96, "num_heads": 3, "depth": 6, "patch_size": 4, "img_size": 28,'
                         ' "in_chans": 1, "num_classes": 10}, "shared": true}')
    shared = make_space(str(json_path))
    spec = shared.sample(1)
    assert spec.depth == 6 and spec.embed_dim == 96 and len(set(spec.layers)) == 1


@pytest.mark.parametrize("content, offending", [
    ("layers:\n  ffn: [mlp, transformer]\n", "'transformer'"),
    ("layers:\n  gamma: [0]\n", "0"),
    ("layers:\n  kernel: [4]\n", "4"),
    ("layers:\n  colour: [red]\n", "'colour'"),
    ("heads: [5]\n", "5"),
    ("widths: [1]\n", "'widths'"),
    ("base: resnet50\n", "'resnet50'"),
    ("layers:\n  act: []\n", "[]"),
    ("layers: [1, 2]\n", "[1, 2]"),
    ("shared: maybe\n", "'maybe'"),
    ("[unclosed\n", "mine.yaml"),
    ("- just a list\n", "mine.yaml"),
])
def test_bad_space_files_raise_value_error_with_the_offending_value(tmp_path, content: str, offending: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_space(path)
    assert offending in str(err.value)


def test_missing_space_file_and_unknown_preset() -> None:
    with pytest.raises(ValueError, match="nope.yaml"):
        make_space("nope.yaml")
    with pytest.raises(ValueError, match="'everything'"):
        make_space("everything")


def test_paper_space_points_are_the_distinct_rows() -> None:
    points = make_space("paper").points
    assert len(points) == len(set(points.values())) == len({row.spec for row in PAPER_ROWS})
    assert list(itertools.islice(points, 1)) == ["I/deit-mlp-g4"]


# --- throughput -------------------------------------------------------------------------------

def test_throughput_is_timed_in_eval_mode_without_autograd() -> None:
    import torch

    from space.throughput import measure_model

    class Probe(torch.nn.Module):
        seen: list[tuple[bool, bool]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append((torch.is_grad_enabled(), self.training))
            return x.mean()

    result = measure_model(Probe().train(), batch=2, img_size=8, warmup=1, repeats=2)
    assert Probe.seen == [(False, False)] * 3 and result.repeats == 2 and result.batch == 2


def test_throughput_is_cached_per_condition(tmp_path) -> None:
    from space.throughput import measure

    spec = ArchSpec.uniform(LayerSpec("local", "hswish", "se", se_ratio=8), depth=2, embed_dim=32, num_heads=2,
                            img_size=28, patch_size=4, in_chans=1, num_classes=10)
    cache = tmp_path / "throughput.jsonl"
    first = measure(spec, batch=4, img_size=28, warmup=0, repeats=2, cache=cache)
    assert first.images_per_s > 0 and first.threads == 1 and first.img_size == 28
    assert measure(spec, batch=4, img_size=28, warmup=0, repeats=2, cache=cache) == first  # read back, not re-run
    assert len(cache.read_text().splitlines()) == 1
    measure(spec, batch=2, img_size=28, warmup=0, repeats=2, cache=cache)  # another condition: measured
    assert len(cache.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="dtype='fp8' is invalid; accepted: float32, bfloat16, float16"):
        measure(spec, dtype="fp8", cache=False)
