"""The LocalViT family on timm: exact to the official code and to the paper."""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

import localvit
from localvit import ArchSpec, LayerSpec, build_model, optimize_for_inference
from localvit.layers import ConvActivation
from localvit.vision_transformer import PAPER_SPECS
from space.cost import model_cost
from space.paper import PAPER_ROWS
from tests.conftest import OFFICIAL, fvcore_cost
from tests.paper_counter import paper_flops

# Official parameter counts (the issue; checked again against the official code's fixture below).
OFFICIAL_PARAMS = {
    "localvit_deit_tiny": 5_717_416,
    "localvit_tiny": 5_908_696,
    "localvit_tiny_se4": 9_376_168,
    "localvit_tiny_relu6_mlp6": 7_655_080,
    "localvit_deit_small": 22_050_664,
    "localvit_small": 22_433_176,
}
# The official registered name each of our models corresponds to (full_size.json keys).
OFFICIAL_NAME = {
    "localvit_deit_tiny": "deit_tiny_patch16_224",
    "localvit_tiny": "localvit_tiny_mlp4_act3_r192",
    "localvit_tiny_se4": "localvit_tiny_mlp4_act3_r4",
    "localvit_tiny_relu6_mlp6": "localvit_tiny_mlp6_act1",
    "localvit_deit_small": "deit_small_patch16_224",
    "localvit_small": "localvit_small_mlp4_act3_r384",
}
# timm's DeiT is the official implementation: the builder's DeiT must count as it does.
TIMM_OFFICIAL = {"localvit_deit_tiny": "deit_tiny_patch16_224", "localvit_deit_small": "deit_small_patch16_224"}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_registered_models_have_the_official_param_count(name: str, official_full_size: dict) -> None:
    model = timm.create_model(name)
    assert n_params(model) == OFFICIAL_PARAMS[name]
    assert official_full_size[OFFICIAL_NAME[name]]["num_params"] == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_state_dict_keys_and_shapes_equal_the_official_ones(name: str, official_full_size: dict) -> None:
    ours = [[k, list(v.shape)] for k, v in timm.create_model(name).state_dict().items()]
    assert ours == official_full_size[OFFICIAL_NAME[name]]["keys"]


@pytest.mark.parametrize("official, ours", [
    ("localvit_tiny_mlp4_act3_r192", "localvit_tiny"), ("localvit_tiny_mlp4_act3_r4", "localvit_tiny_se4"),
    ("localvit_tiny_mlp6_act1", "localvit_tiny_relu6_mlp6"), ("localvit_small_mlp4_act3_r384", "localvit_small"),
])
def test_official_names_are_registered_aliases(official: str, ours: str) -> None:
    assert timm.create_model(official).spec == timm.create_model(ours).spec


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_fvcore_counts_equal_the_cost_model_and_the_official_deit(name: str) -> None:
    """fvcore's count of every registered model at 224 equals the analytic count the budgets use
    (`space.cost`), and, for the builder's DeiT, fvcore's count of timm's official DeiT."""
    counted = fvcore_cost(timm.create_model(name), 224)
    cost = model_cost(PAPER_SPECS[name])
    assert (cost.flops, cost.params) == counted
    if name in TIMM_OFFICIAL:
        assert fvcore_cost(timm.create_model(TIMM_OFFICIAL[name]), 224) == counted


@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r.table}/{r.name}")
def test_paper_rows_reproduce_the_printed_params_and_flops(row) -> None:
    model = build_model(row.spec)
    params_places, flops_places = row.decimals
    assert round(n_params(model) / 1e6, params_places) == row.params_m
    if row.flops_g is not None:
        # The paper counted with its own (ptflops-style) counter; its rules are re-done in paper_counter.
        assert round(paper_flops(model) / 1e9, flops_places) == row.flops_g
        # fvcore's convention (our budgets) stays within 0.5% of it.
        assert fvcore_cost(model, 224)[0] / 1e9 == pytest.approx(row.flops_g, abs=0.005 + 10 ** -flops_places / 2)


# --- official fixtures: weights load strictly and give the official outputs ------------------

_OFFICIAL_ACT = {1: ("relu6", "none"), 2: ("hswish", "none"), 3: ("hswish", "se"), 4: ("hswish", "eca")}


def spec_of_official_fixture(fixture: dict) -> ArchSpec:
    """Translate the official constructor's arguments into our spec."""
    kw = fixture["kwargs"]
    if fixture["factory"].endswith("LocalVisionTransformer"):
        act, attn = _OFFICIAL_ACT[kw["act"]]
        layer = LayerSpec("conv" if kw.get("wo_dp_conv") else "local", act, attn,
                          se_ratio=kw.get("reduction") if attn == "se" else None, gamma=kw["mlp_ratio"])
    else:
        layer = LayerSpec("mlp", gamma=kw["mlp_ratio"])
    return ArchSpec.uniform(layer, depth=kw["depth"], embed_dim=kw["embed_dim"], num_heads=kw["num_heads"],
                            img_size=kw["img_size"], patch_size=kw["patch_size"], in_chans=kw["in_chans"],
                            num_classes=kw["num_classes"])


VIT_FIXTURES = sorted(p.stem for p in OFFICIAL.glob("*.pt") if p.stem.startswith(("localvit_act", "deit_")))


def test_every_vit_fixture_is_present() -> None:
    assert len(VIT_FIXTURES) == 9, VIT_FIXTURES


@pytest.mark.parametrize("name", VIT_FIXTURES)
def test_official_weights_load_strictly_and_give_official_outputs(name: str) -> None:
    fixture = torch.load(OFFICIAL / f"{name}.pt", weights_only=True)
    model = build_model(spec_of_official_fixture(fixture))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, list(s)) for k, s in fixture["keys"]]
    model.load_state_dict(fixture["state_dict"], strict=True)
    assert n_params(model) == fixture["num_params"]
    with torch.no_grad():
        out = model.eval()(fixture["input"])
        torch.testing.assert_close(out, fixture["output"], rtol=0, atol=1e-5)
        fast = optimize_for_inference(copy.deepcopy(model))
        torch.testing.assert_close(fast(fixture["input"]), fixture["output"], rtol=0, atol=1e-5)


# --- builder, folding, registration -----------------------------------------------------------

MIXED = ArchSpec(
    layers=(LayerSpec("local", "relu6", "eca", kernel=5, gamma=2.5), LayerSpec("conv", "gelu", "se", se_ratio=3),
            LayerSpec("mlp", gamma=3), LayerSpec("local", "hswish", "se", se_ratio=16, kernel=7, gamma=1)),
    embed_dim=48, num_heads=3, img_size=28, patch_size=4, in_chans=1, num_classes=10, drop_path_rate=0.1)


def test_inference_mode_equals_eval_model_with_and_without_autograd() -> None:
    torch.manual_seed(0)
    model = build_model(MIXED)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randn(8, 1, 28, 28))
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    expected = model(x).detach()  # autograd on: the out-of-place path with the class-token concatenation
    fast = optimize_for_inference(copy.deepcopy(model))
    with torch.no_grad():  # in place, residual written into the output, fused conv + activation
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast(x).detach(), expected, rtol=0, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    fused = [type(m.act) for m in fast.modules() if isinstance(m, ConvActivation)]
    assert fused == [localvit.layers.ReLU6, localvit.layers.ReLU6, torch.nn.GELU, localvit.layers.Hardswish,
                     localvit.layers.Hardswish]
    assert build_model(MIXED, inference=True).training is False


def test_any_grid_and_channel_count_trains() -> None:
    model = build_model(MIXED)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_class_token_bypasses_the_locality_ffn_and_drop_path_is_on_attention_only() -> None:
    block = build_model(MIXED.replace(drop_path_rate=0.5)).blocks[0]
    assert isinstance(block, localvit.LocalityBlock)
    assert not hasattr(block, "norm2") and not hasattr(block, "mlp")
    x = torch.randn(2, 1 + 49, 48)
    attn_out = x + block.attn(block.norm1(x))
    block.eval()
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y[:, :1], attn_out[:, :1])  # class token: attention only
    assert not torch.allclose(y[:, 1:], attn_out[:, 1:])


def test_custom_model_takes_a_spec_a_dict_or_a_json_path(tmp_path) -> None:
    path = tmp_path / "spec.json"
    MIXED.save(path)
    for spec in (MIXED, MIXED.to_dict(), str(path), path):
        model = timm.create_model("localvit_custom", spec=spec)
        assert model.spec == MIXED
    assert timm.create_model("localvit_custom", spec=MIXED, num_classes=3).spec.num_classes == 3


def test_spec_json_round_trip_and_stable_id() -> None:
    assert ArchSpec.from_json(MIXED.to_json()) == MIXED
    assert ArchSpec.from_json(MIXED.to_json()).id == MIXED.id
    assert json.loads(MIXED.to_json())["layers"][2] == {"ffn": "mlp", "act": "gelu", "attn": "none", "gamma": 3.0}
    assert MIXED.replace(drop_path_rate=0.2).id != MIXED.id


# --- bad specs: ValueError naming the field, the value and what is accepted --------------------

BASE = dict(embed_dim=192, num_heads=4, img_size=224, patch_size=16)


@pytest.mark.parametrize("make, field, value", [
    (lambda: LayerSpec("local", act="swish"), "act", "'swish'"),
    (lambda: LayerSpec("local", gamma=0), "gamma", "0"),
    (lambda: LayerSpec("local", gamma=-2), "gamma", "-2"),
    (lambda: LayerSpec("local", gamma=1.3), "gamma", "1.3"),
    (lambda: LayerSpec("local", kernel=4), "kernel", "4"),
    (lambda: LayerSpec("local", kernel=9), "kernel", "9"),
    (lambda: LayerSpec("conv", kernel=3), "kernel", "3"),
    (lambda: LayerSpec("attention"), "ffn", "'attention'"),
    (lambda: LayerSpec("local", attn="cbam"), "attn", "'cbam'"),
    (lambda: LayerSpec("local", attn="se"), "se_ratio", "None"),
    (lambda: LayerSpec("local", attn="eca", se_ratio=4), "se_ratio", "4"),
    (lambda: LayerSpec("mlp", attn="se", se_ratio=4), "attn", "'se'"),
    (lambda: ArchSpec.uniform(LayerSpec("local"), **{**BASE, "num_heads": 5}), "num_heads", "5"),
    (lambda: ArchSpec.uniform(LayerSpec("local"), **{**BASE, "img_size": 225}), "img_size", "225"),
    (lambda: ArchSpec.uniform(LayerSpec("local", attn="se", se_ratio=1024), **BASE), "se_ratio", "1024"),
    (lambda: ArchSpec.from_dict({"layers": [{"ffn": "local", "colour": 1}]}), "layer field", "'colour'"),
])
def test_bad_specs_raise_value_error_naming_field_value_and_accepted(make, field: str, value: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    message = str(err.value)
    assert field in message and value in message and "accepted" in message
