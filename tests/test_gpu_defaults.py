"""GPU defaults, checked on the CPU: what `--gpus-per-trial auto`, `--workers` and `--precision auto`
resolve to where CUDA devices are visible (torch.cuda's answers patched), and that nothing changes
where none is. No GPU has run these paths yet (docs/gpu.md)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import run_search
from proxy import runtime
from proxy.runtime import (
    CUDA_CONTEXT_BYTES,
    precision_record,
    prepare_device,
    resolve_precision,
    training_bytes,
)
from search import cluster
from search.cluster import (
    Node,
    gpu_plan,
    planned_device,
    trial_resources,
    trials_per_gpu,
)
from search.options import settings_from_args
from search.settings import SearchSettings

GIB = 1 << 30


def settings_of(*args: str) -> SearchSettings:
    return settings_from_args(run_search.build_parser().parse_args(["--budget-flops", "1.3G", *args]))


@pytest.fixture
def small_trials(monkeypatch):
    """Every GPU holds 80 GiB and a trial's step 1 GiB (no model is built or probed)."""
    monkeypatch.setattr(cluster, "gpu_memory", lambda: 80 * GIB)
    monkeypatch.setattr(cluster, "proxy_training_bytes", lambda *args: GIB)


def test_the_defaults_are_auto_and_the_options_take_auto_or_a_share() -> None:
    assert SearchSettings().gpus_per_trial == "auto" and SearchSettings().workers is None
    assert settings_of().gpus_per_trial == "auto" and settings_of().workers is None
    assert settings_of("--gpus-per-trial", "0.25").gpus_per_trial == 0.25
    assert settings_of("--gpus-per-trial", "AUTO").gpus_per_trial == "auto"
    assert SearchSettings(gpus_per_trial=1).gpus_per_trial == 1.0


@pytest.mark.parametrize("value", ["-0.5", "half", "nan", "inf"])
def test_a_bad_gpu_share_is_one_line_exit_2(capsys, value) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_search.main(["--budget-flops", "1.3G", "--gpus-per-trial", value])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.splitlines() == [err]
    assert f"gpus_per_trial='{value}' is invalid; accepted: auto or a number >= 0" in err, err


def test_without_gpus_auto_asks_for_none_and_two_workers_as_before(monkeypatch) -> None:
    monkeypatch.setattr(cluster, "proxy_training_bytes", lambda *args: pytest.fail("probed without a GPU"))
    nodes = [Node("a", "1", 8.0, 0.0), Node("b", "2", 4.0, 0.0)]
    assert gpu_plan(SearchSettings(), nodes) == (0.0, 2)
    assert trial_resources(SearchSettings(), nodes) == {"cpu": 6.0}  # 12 CPUs // 2 workers, as before
    assert gpu_plan(SearchSettings(workers=5), nodes) == (0.0, 5)


def test_auto_shares_each_gpu_among_up_to_eight_trials_and_sets_the_workers(small_trials) -> None:
    one = [Node("gpu", "1", 16.0, 1.0)]
    assert gpu_plan(SearchSettings(), one) == (0.125, 8)
    assert trial_resources(SearchSettings(), one) == {"cpu": 2.0, "gpu": 0.125}
    two = [Node("gpu", "1", 16.0, 2.0), Node("cpu", "2", 32.0, 0.0)]
    assert gpu_plan(SearchSettings(), two) == (0.125, 16)
    assert gpu_plan(SearchSettings(workers=3), two) == (0.125, 3)  # the user's --workers stays


def test_explicit_shares_set_the_workers_to_what_the_gpus_hold(small_trials) -> None:
    nodes = [Node("gpu", "1", 16.0, 2.0)]
    assert gpu_plan(SearchSettings(gpus_per_trial=0.5), nodes) == (0.5, 4)
    assert gpu_plan(SearchSettings(gpus_per_trial=1), nodes) == (1.0, 2)
    assert gpu_plan(SearchSettings(gpus_per_trial=0.3333), nodes) == (0.3333, 6)
    assert gpu_plan(SearchSettings(gpus_per_trial=0), nodes) == (0.0, 2)


def test_trials_per_gpu_is_bounded_by_memory_cpus_and_the_cap() -> None:
    node = [Node("gpu", "1", 64.0, 1.0)]
    assert CUDA_CONTEXT_BYTES == GIB  # the figures below count it as 1 GiB
    # 16 GiB, a trial 3 GiB + the context: floor(0.9 * 16 / (1 + 2 * 3)) = floor(2.06) = 2
    assert trials_per_gpu(node, 16 * GIB, 3 * GIB) == 2
    assert trials_per_gpu(node, 40 * GIB, 3 * GIB) == 5  # floor(36 / 7)
    assert trials_per_gpu(node, 80 * GIB, 3 * GIB) == 8  # floor(72 / 7) = 10, over the cap
    assert trials_per_gpu(node, 80 * GIB, GIB // 4) == 8  # the cap
    assert trials_per_gpu([Node("gpu", "1", 6.0, 2.0)], 80 * GIB, GIB // 4) == 3  # one CPU a trial at least
    assert trials_per_gpu(node, None, GIB) == 1  # memory unknown: one a GPU
    assert trials_per_gpu(node, 2 * GIB, 8 * GIB) == 1  # too big for a share: one a GPU
    shares = [cluster.gpu_share(k) for k in range(1, 9)]
    assert all(k * s <= 1 and k * s > 0.999 for k, s in zip(range(1, 9), shares)), shares


def test_the_training_probe_counts_activations_kept_for_backward_and_the_optimizer_state() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    params = 64 * 256 + 256 + 256 * 10 + 10
    # Saved: the flattened input (for the first weight's gradient) and ReLU's output (ReLU's and the
    # second layer's, one tensor): (64 + 256) fp32 values an image; the weights are counted as state.
    assert training_bytes(model, 32, 8, 1) == 32 * (64 + 256) * 4 + 16 * params
    assert training_bytes(model, 64, 8, 1) - 16 * params == 2 * (training_bytes(model, 32, 8, 1) - 16 * params)


def test_the_costliest_designs_probe_is_cached_and_plausible() -> None:
    settings = SearchSettings()
    args = (settings.space, settings.backbone, settings.include_unfinished, settings.protocol)
    first = cluster.proxy_training_bytes(*args)
    assert cluster.proxy_training_bytes(*args) == first
    # The default proxy (width x0.5, 50 tokens, batch 128): hundreds of MiB to a few GiB, not a model's kB.
    assert 100 * 2**20 < first < 8 * GIB, first


def test_precision_auto_resolves_per_device(monkeypatch) -> None:
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    assert resolve_precision("auto") == resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == resolve_precision("auto", "cuda:1") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cuda") == "fp32"


def test_tf32_is_switched_on_for_cuda_only(monkeypatch) -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # flags, not attributes
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        assert prepare_device("fp32", "cpu") == "fp32"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        monkeypatch.setattr(runtime, "cuda_bf16", lambda: True)
        assert prepare_device("auto", "cuda") == "bf16"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_precision_record_names_the_device(monkeypatch) -> None:
    cpu = precision_record("auto")
    assert cpu["device"] == "cpu" and cpu["resolved"] == resolve_precision("auto") and "tf32" not in cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    gpu = precision_record("auto", "cuda")
    assert gpu == {"requested": "auto", "resolved": "bf16", "cpu": cpu["cpu"], "device": "cuda: NVIDIA H100 80GB HBM3",
                   "tf32": True}


def test_the_planned_device_follows_the_gpus_this_machine_sees(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert planned_device(SearchSettings()) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert planned_device(SearchSettings()) == "cuda"
    assert planned_device(SearchSettings(gpus_per_trial=0)) == "cpu"


def test_gpu_memory_is_the_smallest_visible_gpus(monkeypatch) -> None:
    class Props:
        def __init__(self, total: int) -> None:
            self.total_memory = total

    sizes = [80 * GIB, 40 * GIB]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(sizes))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props(sizes[i]))
    assert cluster.gpu_memory() == 40 * GIB
    sizes.clear()
    assert cluster.gpu_memory() is None


def test_a_trial_given_a_gpu_trains_on_cuda_and_one_without_hides_them(monkeypatch) -> None:
    import ray

    from search.tune import trial_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["0"])
    assert trial_device() == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(ray, "get_gpu_ids", list)
    assert trial_device() == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_one_shot_scoring_loads_the_supernet_on_the_gpu_ray_gives_its_actor(monkeypatch) -> None:
    import ray

    from proxy.protocol import ProxyProtocol
    from search import oneshot

    loaded: dict[str, str] = {}
    monkeypatch.setattr(oneshot, "get_proxy_data", lambda config: type("Data", (), {"in_chans": 1, "num_classes": 10}))
    monkeypatch.setattr(oneshot, "load_supernet", lambda *args: loaded.setdefault("device", args[-1]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["0"])
    actor = oneshot.SupernetEvaluator("paper", "deit_tiny", ProxyProtocol().to_dict(), "s.pt", 4, "sandwich", 0, 0)
    assert actor.where() == loaded["device"] == "cuda"
    assert planned_device(SearchSettings(strategy="oneshot")) == "cuda"  # where the driver trains the supernet
