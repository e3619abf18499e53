"""Image folders decoded once into a uint8 cache (proxy.image_cache, python -m proxy.prepare) and batched
from it (proxy.data)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from localvit.cli import run_cli
from proxy import image_cache as prepare
from proxy.data import ProxyData, image_cache_path
from proxy.image_cache import MANIFEST, ensure_cache, open_cache
from proxy.prepare import main
from proxy.protocol import ProxyProtocol


def _tree(root, train=7, val=2, classes=("cat", "dog", "owl"), size=(30, 22), seed=0):
    """A tiny ImageNet-layout tree of JPEGs (no DIR/val when val=0); image i of class c is one
    flat colour, so that decoded content can be checked by hand."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes if n else ()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.empty((size[1], size[0], 3), np.uint8)
                img[:] = (40 * c + 20, 10 * i % 200 + 30, int(rng.integers(50, 200)))
                Image.fromarray(img).save(root / split / name / f"{i}.JPEG", quality=95)
    return root


def test_prepare_decodes_once_with_a_manifest(tmp_path, capsys):
    root = _tree(tmp_path / "imgs")
    (root / "train" / "dog" / "broken.JPEG").write_bytes(b"not a jpeg")  # skipped and counted
    assert main([str(root), "--size", "16", "--out", str(tmp_path / "c"), "--workers", "0"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    cache = open_cache(tmp_path / "c", source=root, size=16)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["classes"] == ["cat", "dog", "owl"] and manifest["size"] == 16
    assert manifest["counts"] == {"train": 21, "test": 6} and manifest["per_class"]["train"] == [7, 7, 7]
    assert manifest["skipped"] == 1 and manifest["skipped_files"] == ["train/dog/broken.JPEG"]
    images, labels = cache.arrays("train")
    assert images.shape == (21, 3, 16, 16) and images.dtype == np.uint8
    assert labels.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    # the content, against the colours written (JPEG is lossy: a few levels)
    sources = sorted((root / "train").glob("*/[0-9].JPEG"))
    for image, path in zip(images, sources):
        colour = np.asarray(Image.open(path).convert("RGB"))[11, 15]
        assert np.abs(image[:, 8, 8].astype(int) - colour.astype(int)).max() <= 4
    import hashlib
    content = hashlib.sha256(np.asarray(images).tobytes() + np.asarray(labels).tobytes())
    test_images, test_labels = cache.arrays("test")
    content.update(np.asarray(test_images).tobytes() + np.asarray(test_labels).tobytes())
    assert manifest["content_sha256"] == content.hexdigest()


def test_decode_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high: the centre square is columns 20-59
    img[:, :20] = 255
    img[:, 60:] = 255
    img[:, 20:60, 0] = 200
    img[10:30, 30:50, 1] = 120
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = prepare.decode(tmp_path / "wide.png", 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    # independently: torch's antialiased bicubic resize of the whole image to 8 x 16, its centre 8 columns
    full = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(), size=(8, 16),
                                           mode="bicubic", antialias=True, align_corners=False)
    expected = full[0, :, :, 4:12].round().clamp(0, 255).numpy()
    assert np.abs(out.astype(int) - expected).max() <= 2
    assert prepare.decode(tmp_path / "missing.png", 8) is None


def test_search_data_builds_the_cache_on_first_use_and_never_decodes_again(tmp_path, monkeypatch):
    root = _tree(tmp_path / "imgs")
    config = {"dataset": "imagefolder", "data_dir": str(root), "train_size": 12, "val_size": 6, "img_size": 16,
              "num_workers": 0, "cache_dir": str(tmp_path / "cache")}
    first = ProxyData(**config)
    assert (image_cache_path(root, 16, tmp_path / "cache") / MANIFEST).is_file()

    def no_decoding(*args):
        raise AssertionError("decoded an image again")

    monkeypatch.setattr(prepare, "decode", no_decoding)
    data = ProxyData(**config)
    assert data.num_classes == 3 and data.in_chans == 3 and data.skipped == 0
    assert data.describe()["skipped"] == 0
    assert torch.equal(data.tensors("val")[0], first.tensors("val")[0])
    # split semantics as before: stratified train/val from DIR/train, test from DIR/val
    assert (np.bincount(data.tensors("val")[1].numpy()) == 2).all() and data.size("test") == 6
    assert not set(data.indices["train"].tolist()) & set(data.indices["val"].tolist())
    x, y = next(data.batches("train", 8, epoch=1, seed=0))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, next(data.batches("train", 8, epoch=1, seed=0))[0])
    assert sum(len(b[1]) for b in data.batches("val", 5)) == 6
    on_meta = next(data.to("meta").batches("train", 8, epoch=1, seed=0))  # made there: meta never copies to the host
    assert on_meta[0].device.type == "meta" and on_meta[0].shape == x.shape
    # evaluation batches are the cached images, normalised with timm's ImageNet constants
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    xv, _ = next(data.batches("test", 6))
    raw = data.tensors("test")[0][:6].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    expected = (raw - mean) / std
    assert torch.allclose(xv, expected)
    # a prepared cache may be named directly
    direct = ProxyData(**{**config, "data_dir": str(image_cache_path(root, 16, tmp_path / "cache"))})
    assert torch.equal(direct.tensors("train")[0], data.tensors("train")[0])


def test_one_builder_per_node(tmp_path, monkeypatch):
    root = _tree(tmp_path / "imgs", train=3, val=0)
    builds = []
    real_build = prepare.build

    def counted(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(prepare, "build", counted)
    out = tmp_path / "cache" / "c"
    caches = []
    threads = [threading.Thread(target=lambda: caches.append(ensure_cache(root, 8, out, workers=0))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(caches) == 3
    assert {c.manifest["content_sha256"] for c in caches} == {caches[0].manifest["content_sha256"]}
    assert sorted(p.name for p in out.parent.iterdir()) == ["c", "c.lock"]  # no temporary folder left
    # the folder changes: its cache is decoded again
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train" / "cat" / "new.JPEG")
    assert ensure_cache(root, 8, out, workers=0).manifest["counts"]["train"] == 10 and len(builds) == 2


def test_decoding_in_worker_processes_gives_the_same_cache(tmp_path):
    root = _tree(tmp_path / "imgs", train=25, val=0)
    one = prepare.build(root, 12, tmp_path / "one", workers=0)
    two = prepare.build(root, 12, tmp_path / "two", workers=2)
    assert one.manifest["content_sha256"] == two.manifest["content_sha256"]


@pytest.mark.parametrize("case", ["no images", "other folder", "other size", "missing", "too many classes"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    import subprocess
    import sys

    root = _tree(tmp_path / "imgs", train=2, val=0)
    other = _tree(tmp_path / "other", train=2, val=0)
    main([str(root), "--size", "8", "--out", str(tmp_path / "c"), "--workers", "0"])
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    args = {"no images": [str(tmp_path / "empty"), "--size", "8"],
            "other folder": [str(other), "--size", "8", "--out", str(tmp_path / "c")],
            "other size": [str(root), "--size", "16", "--out", str(tmp_path / "c")],
            "missing": [str(tmp_path / "nowhere"), "--size", "8"],
            "too many classes": [str(root), "--size", "8", "--classes", "4"]}[case]
    args += ["--cache-dir", str(tmp_path / "cache")]
    capsys.readouterr()
    if case == "no images":  # the command itself, once
        run = subprocess.run([sys.executable, "-m", "proxy.prepare", *args], capture_output=True, text=True,
                             check=False)
        status, out, err = run.returncode, run.stdout, run.stderr
    else:
        with pytest.raises(SystemExit) as exited:
            run_cli(main, args)
        (out, err), status = capsys.readouterr(), exited.value.code
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    expected = {"no images": "no images in", "other folder": "was made from", "other size": "made at size 8, not 16",
                "missing": "does not exist", "too many classes": "classes=4 is invalid"}[case]
    assert expected in err


def test_a_search_on_a_cache_of_another_size_is_a_clear_error(tmp_path):
    root = _tree(tmp_path / "imgs", train=2, val=0)
    prepare.build(root, 8, tmp_path / "c", workers=0)
    with pytest.raises(ValueError, match="made at size 8, not 16; accepted: --img-size 8"):
        ProxyData(dataset="imagefolder", data_dir=str(tmp_path / "c"), img_size=16, train_size=3, val_size=3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProxyData(dataset="imagefolder", data_dir=str(tmp_path / "none"), img_size=16, cache_dir=str(tmp_path))


def test_the_data_path_bench_runs_at_a_tiny_size(tmp_path):
    """bench/bench_data_path.py end to end on 16 JPEGs, so that it cannot rot (its figures mean nothing here)."""
    from bench import bench_data_path

    threads = torch.get_num_threads()
    try:
        bench_data_path.main(["--images", "16", "--classes", "2", "--size", "16", "--batch", "4", "--rounds", "1",
                              "--before-images", "8", "--model-steps", "1", "--results", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the bench measures one thread
    rows = json.loads((tmp_path / "data_path.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["before", "after", "model", "summary"]
    assert all(r["images_per_s"] > 0 for r in rows[:3]) and rows[3]["after_over_model"] > 0


def test_a_search_logs_and_summarises_the_images_it_skipped(tmp_path, capsys, monkeypatch):
    from search.driver import prepare as prepare_search
    from search.report import write_reports
    from search.settings import SearchSettings

    monkeypatch.setenv("LOCALVIT_NAS_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "imgs")
    (root / "train" / "owl" / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    settings = SearchSettings(study="s", results_dir=str(tmp_path / "r"), backbone="deit_tiny", confirm_seeds=0,
                              protocol=ProxyProtocol(dataset="imagefolder", data_dir=str(root), img_size=16,
                                                     patch_size=4, train_size=12, val_size=6))
    plan = prepare_search(settings)
    assert plan.study.user_attrs["proxy_data"]["skipped"] == 1
    assert "1 unreadable image(s) of" in capsys.readouterr().out
    summary = write_reports(plan.study, settings).read_text()
    assert "1 unreadable image(s) skipped" in summary
