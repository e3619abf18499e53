"""The stage backbones (PVT, Swin, TNT, T2T): exact to the official code, the paper and fvcore."""
from __future__ import annotations

import copy
import random

import pytest
import timm
import torch
from timm.models.tnt import TNT

from localvit import ArchSpec, LayerSpec, build_model, optimize_for_inference
from localvit.backbones import (PROXY_IMG_SIZE, SEARCH_BACKBONES, STAGE_PAPER_SPECS, baseline_spec, block_dims,
                                localvit_spec, make_spec, proxy_spec)
from localvit.presets import PRESETS, StagePreset
from localvit.spec import ACTIVATIONS, CHANNEL_ATTENTIONS, FFN_TYPES, MAX_KERNEL
from space.cost import model_cost, target_cost
from space.stage_costs import FAMILY_COSTS
from tests.conftest import OFFICIAL, fvcore_cost

# The official registered name of each of our registered models (full_size.json keys).
OFFICIAL_NAME = {
    "pvt_v1_tiny": "pvt_tiny", "localvit_pvt_tiny": "localvit_pvt_tiny",
    "swin_v1_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224",
    "localvit_swin_tiny_patch4_window7_224": "localvit_swin_tiny_patch4_window7_224",
    "tnt_t_legacy_patch16_224": "tnt_t_patch16_224", "localvit_tnt_t_patch16_224": "localvit_tnt_t_patch16_224",
    "t2t_vit_7": "T2t_vit_7", "localvit_T2t_conv7": "localvit_T2t_conv7",
}
# Parameter counts the issue requires (the official implementation's).
OFFICIAL_PARAMS = {
    "pvt_v1_tiny": 13_229_288, "localvit_pvt_tiny": 13_456_152, "tnt_t_legacy_patch16_224": 6_069_784,
    "localvit_tnt_t_patch16_224": 6_261_064, "swin_v1_tiny_patch4_window7_224": 28_288_354,
    "localvit_swin_tiny_patch4_window7_224": 29_079_010, "localvit_T2t_conv7": 4_385_386,
}
# The paper's Swin-M / LocalViT-Swin-M, in millions as printed (one decimal).
PAPER_PARAMS_M = {"swin_v1_mini_patch4_window7_224": 21.2, "localvit_swin_mini_patch4_window7_224": 21.7}
# The official implementations timm ships of the stage baselines (TNT-T: its TNT at TNT-T's size).
TIMM_OFFICIAL = {
    "swin_v1_tiny_patch4_window7_224": lambda: timm.create_model("swin_tiny_patch4_window7_224"),
    "tnt_t_legacy_patch16_224": lambda: TNT(patch_size=16, embed_dim=192, inner_dim=12, depth=12, num_heads_outer=3,
                                            num_heads_inner=3, qkv_bias=False, legacy=True),
}
STAGE_BACKBONES = tuple(PRESETS)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_cost_equals_fvcore(spec: ArchSpec, cost_flops: int, cost_params: int) -> None:
    """Exact, but for T2T: fvcore reads generic einsums from numpy's report, rounded to 4 digits."""
    flops, params = fvcore_cost(build_model(spec), spec.img_size, spec.in_chans)
    assert cost_params == params, spec.to_json()
    if spec.preset.family == "t2t":
        assert cost_flops == pytest.approx(flops, rel=1e-5), spec.to_json()
    else:
        assert cost_flops == flops, spec.to_json()


# --- registered models: params, keys, FLOPs ----------------------------------------------------

@pytest.mark.parametrize("name", sorted(OFFICIAL_NAME))
def test_registered_models_have_the_official_keys_shapes_and_param_count(name: str, official_full_size: dict) -> None:
    model = timm.create_model(name)
    official = official_full_size[OFFICIAL_NAME[name]]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == dict(official["keys"])
    assert n_params(model) == official["num_params"]
    if name in OFFICIAL_PARAMS:
        assert n_params(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_swin_mini_has_the_paper_param_count(name: str) -> None:
    assert round(n_params(timm.create_model(name)) / 1e6, 1) == PAPER_PARAMS_M[name]


@pytest.mark.parametrize("name", sorted(TIMM_OFFICIAL))
def test_fvcore_counts_equal_the_official_implementations(name: str) -> None:
    """The other stage models are counted against the cost model (the next test)."""
    assert fvcore_cost(timm.create_model(name), 224) == fvcore_cost(TIMM_OFFICIAL[name](), 224)


@pytest.mark.parametrize("name", sorted(STAGE_PAPER_SPECS))
def test_cost_model_of_the_paper_models_equals_fvcore(name: str) -> None:
    spec = STAGE_PAPER_SPECS[name]
    cost = model_cost(spec)
    assert_cost_equals_fvcore(spec, cost.flops, cost.params)


# --- official fixtures: weights load strictly and give the official outputs ------------------

LOCALITY_SE = "hswish", "se"


def _fixture_spec(fixture: dict) -> tuple[StagePreset, ArchSpec]:
    """Our preset and spec for the official constructor's arguments (tiny configurations)."""
    kw = fixture["kwargs"]
    local = "LocalViT" in fixture["factory"]
    if kw.get("embed_dims"):  # PVT
        preset = StagePreset("pvt", tuple(kw["depths"]), tuple(kw["embed_dims"]), tuple(kw["num_heads"]),
                             kw["patch_size"], sr_ratios=tuple(kw["sr_ratios"]), layer_norm_eps=1e-6)
        per_stage = [LayerSpec("local", *LOCALITY_SE, se_ratio=dim, gamma=ratio) if local
                     else LayerSpec("mlp", gamma=ratio) for dim, ratio in zip(kw["embed_dims"], kw["mlp_ratios"])]
        fields = {"patch_size": kw["patch_size"]}
    elif "window_size" in kw:  # Swin
        dims = tuple(kw["embed_dim"] * 2 ** i for i in range(len(kw["depths"])))
        preset = StagePreset("swin", tuple(kw["depths"]), dims, tuple(kw["num_heads"]), kw["patch_size"],
                             window_size=kw["window_size"])
        per_stage = [LayerSpec("local", *LOCALITY_SE, se_ratio=dim // 4, gamma=kw["mlp_ratio"]) if local
                     else LayerSpec("mlp", gamma=kw["mlp_ratio"]) for dim in dims]
        fields = {"patch_size": kw["patch_size"]}
    elif "in_dim" in kw:  # TNT
        preset = StagePreset("tnt", (kw["depth"],), (kw["embed_dim"],), (kw["num_heads"],), kw["patch_size"],
                             inner_dim=kw["in_dim"], inner_heads=kw["in_num_head"], first_stride=kw["first_stride"])
        per_stage = [LayerSpec("local", *LOCALITY_SE, se_ratio=kw["embed_dim"], gamma=kw["mlp_ratio"]) if local
                     else LayerSpec("mlp", gamma=kw["mlp_ratio"])]
        fields = {"patch_size": kw["patch_size"]}
    else:  # T2T
        token_dim = kw["token_dim"]
        preset = StagePreset("t2t", (1, 1, kw["depth"]), (token_dim, token_dim, kw["embed_dim"]),
                             (1, 1, kw["num_heads"]), None)
        token = LayerSpec("local", "hswish", gamma=1) if local else LayerSpec("mlp", gamma=1)
        encoder = (LayerSpec("local", *LOCALITY_SE, se_ratio=kw["reduction"], gamma=kw["mlp_ratio"]) if local
                   else LayerSpec("mlp", gamma=kw["mlp_ratio"]))
        per_stage = [token, token, encoder]
        fields = {}
    layers = tuple(per_stage[stage] for stage in preset.block_stages())
    return preset, layers, dict(img_size=kw["img_size"], in_chans=kw["in_chans"], num_classes=kw["num_classes"],
                                **fields)


STAGE_FIXTURES = ("pvt_tiny_small", "localvit_pvt_small", "swin_small", "localvit_swin_small", "tnt_small",
                  "localvit_tnt_small", "t2t_small", "localvit_t2t_small")


@pytest.mark.parametrize("name", STAGE_FIXTURES)
def test_official_weights_load_strictly_and_give_official_outputs(name: str, monkeypatch) -> None:
    fixture = torch.load(OFFICIAL / f"{name}.pt", weights_only=True)
    preset, layers, fields = _fixture_spec(fixture)
    backbone = f"fixture_{name}"
    monkeypatch.setitem(PRESETS, backbone, preset)
    spec = ArchSpec(layers=layers, backbone=backbone, **fields)
    model = build_model(spec)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: list(s) for k, s in fixture["keys"]}
    model.load_state_dict(fixture["state_dict"], strict=True)
    assert n_params(model) == fixture["num_params"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(fixture["input"]), fixture["output"], rtol=0, atol=1e-5)
        fast = optimize_for_inference(copy.deepcopy(model))
        torch.testing.assert_close(fast(fixture["input"]), fixture["output"], rtol=0, atol=1e-5)
    cost = FAMILY_COSTS[preset.family](spec)
    assert cost.params == fixture["num_params"]


# --- random specs: cost model vs fvcore and the built model ------------------------------------

def random_layer(rng: random.Random, dim: int) -> LayerSpec:
    """Any design of the space at width `dim` (SE ratio up to the hidden width)."""
    ffn = rng.choice(FFN_TYPES)
    gamma = rng.choice([0.5, 1, 1.5, 2, 3, 4, 6])
    if ffn == "mlp":
        return LayerSpec("mlp", gamma=gamma)
    attn = rng.choice(CHANNEL_ATTENTIONS)
    hidden = int(dim * gamma)
    return LayerSpec(ffn, rng.choice(ACTIVATIONS), attn, se_ratio=rng.randint(1, hidden) if attn == "se" else None,
                     gamma=gamma, kernel=rng.choice(range(1, MAX_KERNEL + 1, 2)) if ffn == "local" else None)


def random_spec(rng: random.Random, backbone: str, **fields) -> ArchSpec:
    return ArchSpec(layers=tuple(random_layer(rng, dim) for dim in block_dims(backbone)), backbone=backbone,
                    drop_path_rate=0.1, **fields)


@pytest.mark.parametrize("backbone", STAGE_BACKBONES)
def test_cost_model_equals_fvcore_and_params_on_random_specs_at_proxy_size(backbone: str) -> None:
    rng = random.Random(f"proxy-{backbone}")
    for _ in range(4):
        spec = proxy_spec(random_spec(rng, backbone), in_chans=1, num_classes=10)
        cost = model_cost(spec)
        assert_cost_equals_fvcore(spec, cost.flops, cost.params)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", STAGE_BACKBONES)
def test_cost_model_equals_fvcore_on_100_random_specs_at_224(backbone: str) -> None:
    rng = random.Random(f"target-{backbone}")
    for _ in range(100):
        spec = random_spec(rng, backbone)
        cost = target_cost(spec)
        assert_cost_equals_fvcore(spec, cost.flops, cost.params)


# --- folding, search API, proxy ----------------------------------------------------------------

@pytest.mark.parametrize("backbone", STAGE_BACKBONES)
def test_inference_mode_is_exact_on_random_specs_with_trained_statistics(backbone: str) -> None:
    torch.manual_seed(0)
    spec = proxy_spec(random_spec(random.Random(f"fold-{backbone}"), backbone))
    model = build_model(spec).train()
    with torch.no_grad():
        for _ in range(2):  # move the BN statistics off their initial values
            model(torch.randn(4, 3, PROXY_IMG_SIZE, PROXY_IMG_SIZE))
        x = torch.randn(2, 3, PROXY_IMG_SIZE, PROXY_IMG_SIZE)
        expected = model.eval()(x)
        fast = optimize_for_inference(copy.deepcopy(model))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", SEARCH_BACKBONES)
def test_search_api_gives_paper_specs_and_block_widths(backbone: str) -> None:
    base, local = baseline_spec(backbone), localvit_spec(backbone)
    assert all(layer.ffn == "mlp" for layer in base.layers)
    assert any(layer.ffn == "local" for layer in local.layers)
    assert base.block_dims == local.block_dims == block_dims(backbone)
    assert make_spec(backbone, local.layers) == local  # LocalViT's head count by default (4 for T, 8 for S)


@pytest.mark.parametrize("backbone", STAGE_BACKBONES)
def test_tiny_search_runs_on_each_backbone_at_proxy_size(backbone: str) -> None:
    """Sample, keep what fits the budget at 224, train each at 32x32 for a few steps: every kept
    design is within the budget, trains there (its loss on the batch falls) and is scored."""
    rng = random.Random(f"search-{backbone}")
    torch.manual_seed(0)
    budget = target_cost(localvit_spec(backbone)).flops * 1.2
    x, y = torch.randn(16, 1, PROXY_IMG_SIZE, PROXY_IMG_SIZE), torch.randint(0, 10, (16,))
    candidates = [localvit_spec(backbone), *(random_spec(rng, backbone) for _ in range(3))]
    kept = [c for c in candidates if target_cost(c).flops <= budget]
    assert kept[0] == localvit_spec(backbone)  # the paper's model fits 1.2x its own cost
    for candidate in kept:
        model = build_model(proxy_spec(candidate, in_chans=1, num_classes=10))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            logits = model(x)
            assert logits.shape == (16, 10)
            loss = torch.nn.functional.cross_entropy(logits, y)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert losses[-1] < losses[0], (candidate.id, losses)  # it learns the batch at the proxy size


# --- spec rules for stage backbones --------------------------------------------------------------

def test_vit_specs_serialise_without_the_stage_fields() -> None:
    data = ArchSpec.uniform(LayerSpec("mlp"), depth=2).to_dict()
    assert "window_size" not in data and data["embed_dim"] == 192 and data["patch_size"] == 16


@pytest.mark.parametrize("changes, field", [
    ({"embed_dim": 192}, "embed_dim"), ({"num_heads": 3}, "num_heads"), ({"window_size": 7}, "window_size"),
    ({"img_size": 200}, "img_size"), ({"layers": (LayerSpec(),) * 7}, "layers"),
    ({"layers": (LayerSpec("local", attn="se", se_ratio=300, gamma=4),) * 8}, "layers[0].se_ratio"),
])
def test_bad_stage_specs_raise_value_error_naming_field_value_and_accepted(changes: dict, field: str) -> None:
    fields = {"layers": (LayerSpec(),) * 8, "backbone": "pvt_tiny", **changes}
    with pytest.raises(ValueError, match=rf"^{field.replace('[', '.').replace(']', '.')}=.* is invalid; accepted: "):
        ArchSpec(**fields)


def test_swin_window_and_t2t_patch_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^window_size=7 is invalid; accepted: a divisor"):
        ArchSpec(layers=(LayerSpec(),) * 12, backbone="swin_tiny", img_size=32)
    with pytest.raises(ValueError, match=r"^patch_size=16 is invalid; accepted: None"):
        ArchSpec(layers=(LayerSpec(),) * 9, backbone="t2t_7", patch_size=16)
    stage_spec = ArchSpec(layers=(LayerSpec(),) * 12, backbone="swin_tiny", img_size=32, patch_size=2, window_size=4)
    assert ArchSpec.from_json(stage_spec.to_json()) == stage_spec
