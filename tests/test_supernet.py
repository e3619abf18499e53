"""The weight-sharing supernet: subnets equal their stand-alone models, gradients stay in the
weights a subnet uses, BatchNorm recalibration, training with checkpoints and resume."""
from __future__ import annotations

import random

import pytest
import torch

from localvit import ArchSpec, LayerSpec, build_model
from localvit.supernet import Supernet, recalibrate_bn
from proxy.data import DEFAULT_FASHION_MNIST_DIR, ProxyData
from proxy.protocol import ProxyProtocol, proxy_of
from proxy.supernet import accumulate_gradients, fair_specs, sandwich_specs, score, space_supernet, train_supernet
from space.budget import bounds
from space.cost import target_cost
from space.space import ListSpace, make_space, space_from_dict

needs_fmnist = pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_subnets_of_the_default_space_equal_their_stand_alone_models() -> None:
    """Random specs and every paper design of the default space, at the proxy width (x0.5)."""
    torch.manual_seed(0)
    space, protocol = make_space("default"), ProxyProtocol()
    supernet = space_supernet(space, protocol, (1, 10))
    rng = random.Random(0)
    supernet.train()
    with torch.no_grad():  # give the shared BatchNorm statistics something to hold
        for spec in fair_specs(space, rng):
            supernet(torch.randn(4, 1, 28, 28), proxy_of(spec, protocol, (1, 10)))
    supernet.eval()
    paper = [spec for spec in ListSpace().points.values() if space.contains(spec)]
    assert len(paper) >= 10
    x = torch.randn(2, 1, 28, 28)
    for spec in [space.sample(rng) for _ in range(4)] + paper:
        proxy = proxy_of(spec, protocol, (1, 10))
        model = supernet.extract(proxy)
        reference = build_model(proxy)
        assert n_params(model) == n_params(reference)
        reference.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(model(x), supernet(x, proxy), rtol=0, atol=1e-5)


def test_the_paper_space_has_a_supernet_that_holds_every_row() -> None:
    space, protocol = ListSpace(), ProxyProtocol()
    supernet = space_supernet(space, protocol, (1, 10))
    assert all(supernet.why_not(proxy_of(spec, protocol, (1, 10))) is None for spec in space.points.values())


# A small supernet whose every cut is checked by hand.
BASE = ArchSpec.uniform(LayerSpec("mlp"), depth=2, embed_dim=32, num_heads=2, img_size=28, patch_size=4,
                        in_chans=1, num_classes=10)
HELD = [LayerSpec("mlp", gamma=2), LayerSpec("conv", "relu6", "eca", gamma=2),
        LayerSpec("local", "hswish", "se", se_ratio=4, gamma=2, kernel=5), LayerSpec("local", "relu6", "eca", gamma=1)]


def test_a_gradient_step_changes_only_what_the_subnet_uses() -> None:
    torch.manual_seed(0)
    supernet = Supernet(BASE, [HELD, HELD])
    spec = BASE.replace(num_heads=4, layers=(LayerSpec("local", "hswish", "se", se_ratio=8, gamma=1, kernel=3),
                                             LayerSpec("mlp", gamma=1)))
    before = {k: v.detach().clone() for k, v in supernet.named_parameters()}
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.5)
    supernet.train()
    supernet(torch.randn(8, 1, 28, 28), spec).logsumexp(-1).mean().backward()
    optimizer.step()
    # what this subnet uses, by hand: block 0 locality FFN at 32 hidden channels (of 64), the centre
    # 3x3 of the 5x5 depth-wise kernel, SE 32 -> 4 channels (of 16); block 1 the MLP at 32 (of 64).
    used = {
        "blocks.0.local.pw1.weight": (slice(0, 32),), "blocks.0.local.bn1.weight": (slice(0, 32),),
        "blocks.0.local.bn1.bias": (slice(0, 32),), "blocks.0.local.dw.weight": (slice(0, 32), 0, slice(1, 4),
                                                                                  slice(1, 4)),
        "blocks.0.local.bn2.weight": (slice(0, 32),), "blocks.0.local.bn2.bias": (slice(0, 32),),
        "blocks.0.local.se.fc.0.weight": (slice(0, 4), slice(0, 32)), "blocks.0.local.se.fc.0.bias": (slice(0, 4),),
        "blocks.0.local.se.fc.2.weight": (slice(0, 32), slice(0, 4)), "blocks.0.local.se.fc.2.bias": (slice(0, 32),),
        "blocks.0.local.pw2.weight": (slice(None), slice(0, 32)), "blocks.0.local.bn3.weight": (),
        "blocks.0.local.bn3.bias": (),
        "blocks.1.mlp.fc1.weight": (slice(0, 32),), "blocks.1.mlp.fc1.bias": (slice(0, 32),),
        "blocks.1.mlp.fc2.weight": (slice(None), slice(0, 32)), "blocks.1.mlp.fc2.bias": (),
        "blocks.1.norm2.weight": (), "blocks.1.norm2.bias": (),
    }
    shared = ("patch_embed.", "cls_token", "pos_embed", "norm.", "head.", "blocks.0.norm1.", "blocks.0.attn.",
              "blocks.1.norm1.", "blocks.1.attn.")
    for name, param in supernet.named_parameters():
        changed = param.detach() != before[name]
        if name.startswith(shared):
            assert changed.any(), name  # every subnet uses them
            continue
        inside = torch.zeros_like(changed)
        if name in used:
            inside[used[name]] = True
            assert changed[inside].any(), name
        assert not changed[~inside].any(), name  # unused branches, and the parts of a cut left out


def test_in_place_distillation_trains_the_others_on_the_largest_subnets_predictions() -> None:
    """The gradients a sandwich step accumulates equal those of the loss written out by hand:
    label-smoothed cross-entropy for the first subnet, cross-entropy against its detached
    softmax for the others, each divided by their number."""
    torch.manual_seed(0)
    supernet = Supernet(BASE, [HELD, HELD]).train()
    specs = [BASE.replace(layers=(HELD[2], HELD[2])), BASE.replace(num_heads=4, layers=(HELD[0], HELD[3])),
             BASE.replace(layers=(HELD[1], HELD[0]))]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    params = [p for p in supernet.parameters()]
    for distill in (True, False):
        teacher = supernet(x, specs[0])
        targets = torch.softmax(teacher.detach(), -1)
        by_hand = [criterion(teacher, y)]
        for spec in specs[1:]:
            logits = supernet(x, spec)
            by_hand.append(-(targets * torch.log_softmax(logits, -1)).sum(-1).mean() if distill
                           else torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))
        expected = torch.autograd.grad(sum(by_hand) / len(specs), params, allow_unused=True)
        supernet.zero_grad(set_to_none=True)
        losses = accumulate_gradients(supernet, specs, x, y, criterion, distill)
        assert losses == pytest.approx([loss.item() for loss in by_hand], rel=1e-5)
        for param, grad in zip(params, expected):
            if grad is None:
                assert param.grad is None
            else:
                torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)


def test_the_sandwich_is_the_largest_the_smallest_and_random_subnets() -> None:
    space, rng = make_space("default"), random.Random(0)
    extremes = bounds(space)
    largest, smallest = extremes.costliest_params[0], extremes.cheapest_params[0]
    sampled = [target_cost(space.sample(rng)).params for _ in range(300)]
    assert target_cost(largest).params > max(sampled) and target_cost(smallest).params < min(sampled)
    steps = [sandwich_specs(space, rng, (largest, smallest)) for _ in range(20)]
    assert all(len(step) == 4 for step in steps)
    for k, extreme in ((0, largest), (1, smallest)):
        # the same weights every step; the weight-free choices (activation, heads) drawn anew
        assert {target_cost(step[k]).params for step in steps} == {target_cost(extreme).params}
        assert {step[k].layers[0].act for step in steps} == {"relu6", "hswish"}
        assert {step[k].num_heads for step in steps} == {3, 4}
        assert all(space.contains(step[k]) for step in steps)
    assert len({spec for step in steps for spec in step[2:]}) == 40  # random ones


def test_the_supernet_says_which_specs_it_cannot_hold() -> None:
    supernet = Supernet(BASE, [HELD, HELD[:2]])
    local = LayerSpec("local", "hswish", gamma=2, kernel=3)
    assert supernet.why_not(BASE.replace(layers=(local, local))).startswith("layers[1].ffn='local' is not held")
    too_wide = BASE.replace(layers=(LayerSpec("mlp", gamma=3), LayerSpec("mlp")))
    assert "gamma=3.0 needs 96 hidden channels" in supernet.why_not(too_wide)
    with pytest.raises(ValueError, match=r"kernel=7 is larger than the supernet's 5"):
        supernet.check(BASE.replace(layers=(LayerSpec("local", kernel=7, gamma=1), LayerSpec("mlp"))))
    with pytest.raises(ValueError, match=r"embed_dim=64 differs from the supernet's 32"):
        supernet.extract(BASE.replace(embed_dim=64))
    with pytest.raises(ValueError, match=r"backbone='pvt_tiny' is invalid for --strategy oneshot"):
        space_supernet(make_space("default", "pvt_tiny"), ProxyProtocol(), (1, 10))
    with pytest.raises(ValueError, match=r"gives heads \[3, 4\] the proxy widths \[76, 77\]"):
        space_supernet(make_space("default"), ProxyProtocol(width_mult=0.4), (1, 10))


# --- training and recalibration on a tiny real proxy ---------------------------------------------

TINY_SPACE = space_from_dict({
    "base": {"embed_dim": 32, "num_heads": 2, "depth": 2},
    "heads": [2, 4],
    "layers": {"ffn": ["mlp", "conv", "local"], "act": ["relu6", "hswish"], "attn": ["none", "se", "eca"],
               "se_ratio": [4, 16], "gamma": [1, 2], "kernel": [3, 5]}}, name="tiny")
TINY_PROTOCOL = ProxyProtocol(dataset="fashion-mnist", train_size=256, val_size=200, batch_size=64, width_mult=1.0,
                              lr=3e-3, precision="fp32", threads=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> ProxyData:
    return ProxyData(TINY_PROTOCOL.data_config(), cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    return path, *train_supernet(TINY_SPACE, TINY_PROTOCOL, tiny_data, epochs=2, checkpoint=path)


class Stop(Exception):
    pass


def stop_after_epoch_1(epoch: int, _: dict) -> None:
    if epoch == 1:
        raise Stop  # the epoch's checkpoint is written before it is reported


@needs_fmnist
def test_training_checkpoints_every_epoch_and_resumes_where_it_stopped(trained, tiny_data, tmp_path) -> None:
    path, supernet, history = trained
    assert [h["epoch"] for h in history] == [1, 2] and all(h["subnets"] == 4 * 4 for h in history)  # sandwich: 4 a step
    stopped = tmp_path / "stopped.pt"
    with pytest.raises(Stop):
        train_supernet(TINY_SPACE, TINY_PROTOCOL, tiny_data, epochs=2, checkpoint=stopped, report=stop_after_epoch_1)
    epochs: list[int] = []
    resumed, resumed_history = train_supernet(TINY_SPACE, TINY_PROTOCOL, tiny_data, epochs=2, checkpoint=stopped,
                                              report=lambda epoch, _: epochs.append(epoch))
    assert epochs == [2]  # epoch 1 came from the checkpoint
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in history]
    for (name, a), b in zip(supernet.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # the same weights as in one go
    _, again = train_supernet(TINY_SPACE, TINY_PROTOCOL, tiny_data, epochs=2, checkpoint=stopped,
                              report=lambda epoch, _: epochs.append(epoch))
    assert epochs == [2] and again == resumed_history  # finished: reused, nothing trained again


@needs_fmnist
def test_recalibration_changes_accuracy_and_is_deterministic(trained, tiny_data) -> None:
    _, supernet, _ = trained
    spec = TINY_SPACE.sample(3)
    own = score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=0)
    first = score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=128, seed=5)
    assert first != own
    assert score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=128, seed=5) == first
    proxy = proxy_of(spec, TINY_PROTOCOL, (1, 10))
    batches = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    a, b = recalibrate_bn(supernet.extract(proxy), batches), recalibrate_bn(supernet.extract(proxy), batches)
    assert not a.training
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@needs_fmnist
def test_a_candidate_scored_on_fewer_images_is_scored_on_the_first_ones(trained, tiny_data) -> None:
    _, supernet, _ = trained
    spec = TINY_SPACE.sample(4)
    scored = score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=0, score_images=70)
    model = supernet.extract(proxy_of(spec, TINY_PROTOCOL, (1, 10)))
    images, labels = tiny_data.tensors("val")
    with torch.no_grad():  # by hand: the first 70 validation images, normalised as the batches are
        predicted = model(tiny_data.normalize(images[:70])).argmax(-1)
    assert scored == int((predicted == labels[:70]).sum()) / 70
    whole = score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=0)
    assert whole == score(supernet, spec, tiny_data, TINY_PROTOCOL, recalibration_images=0, score_images=10_000)


@needs_fmnist
def test_a_checkpoint_of_another_space_is_refused(trained, tiny_data) -> None:
    path, _, _ = trained
    other = space_from_dict({"base": {"embed_dim": 32, "num_heads": 2, "depth": 2},
                             "layers": {"ffn": ["mlp", "local"], "gamma": [1, 2]}}, name="other")
    with pytest.raises(ValueError, match=r"was made with another space, choices, supernet"):
        train_supernet(other, TINY_PROTOCOL, tiny_data, epochs=2, checkpoint=path)

