"""Proxy training: projection onto the proxy task, the training loop, failures, determinism."""
from __future__ import annotations

import json
import os
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from localvit import PAPER_SPECS, ArchSpec, LayerSpec, build_model
from proxy.data import DEFAULT_FASHION_MNIST_DIR, ProxyData
from proxy.protocol import ProxyProtocol, project_to_proxy, scaled_width
from proxy.runtime import resolve_precision
from proxy.training import NonFiniteLossError, lr_at, train_proxy

needs_fmnist = pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")

TINY = ArchSpec.uniform(LayerSpec("local", "hswish", "se", se_ratio=4, gamma=2), depth=2, embed_dim=32, num_heads=2)
# a tiny protocol: 2 easy classes (trouser vs bag), 240 train / 100 val images, full width
FAST = ProxyProtocol(dataset="fashion-mnist", train_size=240, val_size=100, epochs=3, batch_size=32, width_mult=1.0,
                     lr=3e-3, warmup_epochs=0.5, precision="fp32", threads=1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    return ProxyData(FAST.data_config(), classes=(1, 8), cache_dir=str(tmp_path_factory.mktemp("cache")))


def random_spec(rng: random.Random) -> ArchSpec:
    dim, heads = rng.choice([(192, 3), (192, 4), (384, 6), (384, 8), (96, 2), (64, 1), (320, 5)])
    layers = []
    for _ in range(rng.randint(1, 14)):
        ffn = rng.choice(["mlp", "conv", "local"])
        gamma = rng.choice([0.5, 1, 2, 3, 4, 6])
        if ffn == "mlp":
            layers.append(LayerSpec("mlp", gamma=gamma))
            continue
        attn = rng.choice(["none", "se", "eca"])
        ratio = rng.choice([1, 4, 48, 96, 192, 384]) if attn == "se" else None
        if ratio is not None:
            ratio = min(ratio, int(dim * gamma))
        layers.append(LayerSpec(ffn, rng.choice(["relu6", "hswish", "gelu"]), attn, se_ratio=ratio, gamma=gamma,
                                kernel=rng.choice([1, 3, 5, 7]) if ffn == "local" else None))
    return ArchSpec(layers=tuple(layers), embed_dim=dim, num_heads=heads, drop_path_rate=0.1)


def test_projection_of_paper_models():
    p = ProxyProtocol()
    for name in ("localvit_tiny", "localvit_deit_tiny"):
        proxy = project_to_proxy(PAPER_SPECS[name], p)
        assert (proxy.embed_dim, proxy.num_heads, proxy.img_size, proxy.patch_size) == (96, 2, 28, 4)
        assert (proxy.in_chans, proxy.num_classes, proxy.depth) == (1, 10, 12)
    lt = project_to_proxy(PAPER_SPECS["localvit_tiny"], p)
    assert lt.layers == PAPER_SPECS["localvit_tiny"].layers  # r=192 kept: 2 SE channels of 384
    assert scaled_width(384, 6, 0.5) == (192, 3)
    assert project_to_proxy(PAPER_SPECS["localvit_tiny"], p.replace(width_mult=1.0)).embed_dim == 192


def test_projection_property_many_random_specs():
    rng = random.Random(0)
    for width_mult in (0.5, 0.25, 1.0, 0.75):
        protocol = ProxyProtocol(width_mult=width_mult, img_size=32, patch_size=8, in_chans=3, num_classes=7)
        for _ in range(150):
            spec = random_spec(rng)
            proxy = project_to_proxy(spec, protocol)
            assert project_to_proxy(spec, protocol) == proxy  # pure
            assert proxy.depth == spec.depth and proxy.embed_dim % proxy.num_heads == 0
            assert (proxy.img_size, proxy.patch_size, proxy.in_chans, proxy.num_classes) == (32, 8, 3, 7)
            assert proxy.drop_path_rate == 0.0
            assert abs(proxy.embed_dim - spec.embed_dim * width_mult) <= proxy.num_heads
            for a, b in zip(spec.layers, proxy.layers):
                assert (a.ffn, a.act, a.attn, a.gamma, a.kernel) == (b.ffn, b.act, b.attn, b.gamma, b.kernel)
                if a.attn == "se":
                    hidden = b.hidden_dim(proxy.embed_dim)
                    assert b.se_ratio == min(a.se_ratio, hidden) and hidden // b.se_ratio >= 1
            ArchSpec.from_json(proxy.to_json())  # valid and serialisable


def test_projected_specs_build():
    rng = random.Random(1)
    for _ in range(5):
        proxy = project_to_proxy(random_spec(rng), ProxyProtocol())
        model = build_model(proxy)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_protocol_json_roundtrip_and_validation():
    p = ProxyProtocol(seed=3, lr=1e-3)
    assert ProxyProtocol.from_dict(json.loads(p.to_json())) == p
    with pytest.raises(ValueError, match="precision='fp16'.*auto, fp32, bf16"):
        ProxyProtocol(precision="fp16")
    with pytest.raises(ValueError, match="img_size=30.*multiple of patch_size=4"):
        ProxyProtocol(img_size=30)
    with pytest.raises(ValueError, match="protocol field 'lrate'"):
        ProxyProtocol.from_dict({"lrate": 1})


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_bf16_natively():
    """Read from the kernel's CPU flags, not from torch: AVX512-BF16 or AMX-BF16 (docs/proxy.md)."""
    flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), set())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


@needs_fmnist
def test_tiny_training_learns_and_reports_every_epoch(easy_data):
    reports = []
    result = train_proxy(TINY, FAST, easy_data, report=lambda e, acc, extra: reports.append((e, acc, extra)))
    assert [r[0] for r in reports] == [1, 2, 3]
    assert result.val_curve == [r[1] for r in reports] and result.epochs_done == 3
    assert result.val_acc > 0.85, result.val_curve  # chance is 0.5
    assert {"train_loss", "lr", "images_per_s"} <= set(reports[0][2])
    assert math.isfinite(result.train_loss_curve[-1]) and result.train_loss_curve[-1] < result.train_loss_curve[0]
    d = result.to_dict()
    json.dumps(d)
    assert d["proxy_spec"]["num_classes"] == 2 and d["spec_id"] == TINY.id and d["images_per_s"] > 0


@needs_fmnist
def test_same_seed_same_result_other_seed_differs(easy_data):
    p = FAST.replace(epochs=1)
    a, b = train_proxy(TINY, p, easy_data), train_proxy(TINY, p, easy_data)
    c = train_proxy(TINY, p.replace(seed=1), easy_data)
    assert a.val_curve == b.val_curve and a.train_loss_curve == b.train_loss_curve
    assert c.train_loss_curve != a.train_loss_curve


@needs_fmnist
def test_report_can_stop_early(easy_data):
    result = train_proxy(TINY, FAST, easy_data, report=lambda e, acc, extra: e >= 1)
    assert result.epochs_done == 1 and result.stopped_early


@needs_fmnist
def test_huge_lr_raises_non_finite(easy_data):
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at epoch 1, step") as err:
        train_proxy(TINY, FAST.replace(lr=1e9, warmup_epochs=0), easy_data)
    assert err.value.epoch == 1 and not math.isfinite(err.value.value)


@needs_fmnist
def test_poisoned_input_raises_non_finite(easy_data):
    class Poisoned(ProxyData):
        def normalize(self, x):
            return torch.full(x.shape, float("nan"))

    poisoned = Poisoned.__new__(Poisoned)
    poisoned.__dict__.update(easy_data.__dict__)
    with pytest.raises(NonFiniteLossError) as err:
        train_proxy(TINY, FAST, poisoned)
    assert (err.value.epoch, err.value.step) == (1, 0)


@needs_fmnist
def test_eval_test_scores_test_split(easy_data):
    class TestIsVal(ProxyData):  # the validation images served as the test split
        def batches(self, split, *args, **kwargs):
            return super().batches("val" if split == "test" else split, *args, **kwargs)

    on_val = TestIsVal.__new__(TestIsVal)
    on_val.__dict__.update(easy_data.__dict__)
    check = train_proxy(TINY, FAST.replace(epochs=1), on_val, eval_test=True)
    assert check.test_acc == check.val_acc  # the same model on the same images: the test score is computed alike
    result = train_proxy(TINY, FAST.replace(epochs=1), easy_data, eval_test=True)
    assert result.val_acc == check.val_acc  # seeded: the same model as above
    n = easy_data.size("test")  # trouser vs bag in the t10k files: 2000 images
    assert n == 2000 and round(result.test_acc * n) == pytest.approx(result.test_acc * n, abs=1e-6)
    assert result.test_acc > 0.6  # an epoch separates trousers from bags well above chance


@needs_fmnist
@pytest.mark.slow
def test_default_protocol_localvit_beats_deit():
    """The default proxy ranks LocalViT-T above DeiT-T (minutes)."""
    lt = train_proxy(PAPER_SPECS["localvit_tiny"], ProxyProtocol())
    dt = train_proxy(PAPER_SPECS["localvit_deit_tiny"], ProxyProtocol())
    assert lt.val_acc > dt.val_acc + 0.02


def test_jemalloc_env_preloads_when_installed(tmp_path):
    from proxy.allocator import JEMALLOC_CONF, jemalloc_env, jemalloc_path

    env, path = jemalloc_env({"PATH": "/bin"}), jemalloc_path()
    if path:
        assert env["LD_PRELOAD"] == path and env["MALLOC_CONF"] == JEMALLOC_CONF
        assert jemalloc_env(env)["LD_PRELOAD"] == path  # not added twice
    else:
        assert "LD_PRELOAD" not in env


def test_the_allocators_shell_words_preload_jemalloc_in_the_command_they_run() -> None:
    """`make` and bench/device_check.sh run their commands with what `python proxy/allocator.py`
    prints (as a file: without torch): the child's own memory map and environment say whether they
    took."""
    from proxy.allocator import JEMALLOC_CONF, jemalloc_path

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    words = subprocess.run([sys.executable, "-c", "import runpy, sys; runpy.run_path('proxy/allocator.py', "
                            "run_name='__main__'); assert 'torch' not in sys.modules, 'it imports torch'"],
                           env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    child = subprocess.run(["env", *words, sys.executable, "-c", "import os; print(os.environ.get('MALLOC_CONF')); "
                            "print(open('/proc/self/maps').read())"], env=env, capture_output=True, text=True,
                           check=True).stdout
    path = jemalloc_path()
    if path:
        assert child.splitlines()[0] == JEMALLOC_CONF and path in child
    else:
        assert words == [] and "libjemalloc" not in child


def test_get_proxy_data_is_memoised(tmp_path):
    from proxy.data import DataConfig, get_proxy_data

    if not (DEFAULT_FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    cfg = DataConfig(train_size=100, val_size=50, cache_dir=str(tmp_path))
    assert get_proxy_data(cfg) is get_proxy_data(DataConfig(train_size=100, val_size=50, cache_dir=str(tmp_path)))
