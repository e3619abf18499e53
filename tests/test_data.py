"""Proxy data: the real Fashion-MNIST files, the split, errors that say how to get the data."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from proxy.data import (DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_FILES, DataConfig, ProxyData, load_fashion_mnist,
                        random_crop_flip, random_resized_crop, read_idx, stratified_split)

needs_fmnist = pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ProxyData(DataConfig(dataset="fashion-mnist", train_size=3000, val_size=1000,
                                cache_dir=str(tmp_path_factory.mktemp("cache"))))


@needs_fmnist
def test_real_files_read_and_checked(tmp_path):
    arrays = load_fashion_mnist(cache_dir=tmp_path)
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (10000, 28, 28)
    for split in ("train", "test"):
        labels = np.asarray(arrays[f"{split}_labels"])
        assert labels.min() == 0 and labels.max() == 9
        assert (np.bincount(labels) == len(labels) // 10).all()
    # the decoded cache is reused (memory-mapped) and identical
    again = load_fashion_mnist(cache_dir=tmp_path)
    assert isinstance(again["train_images"], np.memmap)
    assert np.array_equal(again["train_images"][:100], arrays["train_images"][:100])


@needs_fmnist
def test_split_balanced_disjoint_and_from_train_only(data):
    train, val = data.indices["train"], data.indices["val"]
    assert len(train) == 3000 and len(val) == 1000
    assert not set(train.tolist()) & set(val.tolist())
    assert train.max() < 60000 and val.max() < 60000
    for split, n in (("train", 300), ("val", 100)):
        images, labels = data.tensors(split)
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        assert (torch.bincount(labels, minlength=10) == n).all()
    test_images, test_labels = data.tensors("test")
    assert len(test_labels) == 10000  # the whole t10k file, untouched by the split
    x, y = next(data.batches("train", 64))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3


@needs_fmnist
def test_split_deterministic_and_val_independent_of_train_size(tmp_path):
    a = ProxyData(train_size=1000, val_size=500, cache_dir=str(tmp_path))
    b = ProxyData(train_size=2000, val_size=500, cache_dir=str(tmp_path))
    c = ProxyData(train_size=1000, val_size=500, split_seed=1, cache_dir=str(tmp_path))
    assert np.array_equal(a.indices["val"], b.indices["val"])
    assert not np.array_equal(a.indices["val"], c.indices["val"])
    xa = next(a.batches("train", 32, epoch=1, seed=3))[0]
    xb = next(a.batches("train", 32, epoch=1, seed=3))[0]
    xc = next(a.batches("train", 32, epoch=2, seed=3))[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)


@needs_fmnist
def test_batches_cover_splits(data):
    n_train = sum(len(y) for _, y in data.batches("train", 128))
    assert n_train == (3000 // 128) * 128  # last partial batch dropped
    assert sum(len(y) for _, y in data.batches("val", 300)) == 1000  # evaluation sees every image


@needs_fmnist
def test_resolution_and_class_subset(tmp_path):
    d = ProxyData(dataset="fashion-mnist", train_size=200, val_size=100, img_size=32, classes=(1, 8),
                  cache_dir=str(tmp_path))
    images, labels = d.tensors("train")
    assert images.shape == (200, 1, 32, 32) and d.num_classes == 2
    assert sorted(labels.unique().tolist()) == [0, 1]
    assert set(d.tensors("test")[1].unique().tolist()) == {0, 1} and len(d.tensors("test")[1]) == 2000


def test_stratified_split_properties():
    labels = np.repeat(np.arange(7), [50, 40, 30, 30, 30, 20, 5])
    train, val = stratified_split(labels, 100, 35, seed=4)
    assert len(train) == 100 and len(val) == 35 and not set(train) & set(val)
    counts = np.bincount(labels[val], minlength=7)
    assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="at most the 205 images"):
        stratified_split(labels, 200, 10)


def _mix(seed: int, epoch: int) -> int:
    """The batches' seed as cd57394 (the audited code) derives it from (seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


def _crop_flip_by_hand(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """cd57394's draws (all row offsets, all column offsets, then all flips), applied one image
    at a time with numpy slicing."""
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).tolist()
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen).tolist()
    flip = (torch.rand(b, generator=gen) < 0.5).tolist() if hflip else [False] * b
    out = []
    for i in range(b):
        padded = np.pad(x[i].numpy(), ((0, 0), (padding, padding), (padding, padding)))
        crop = padded[:, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        out.append(crop[:, :, ::-1] if flip[i] else crop)
    return torch.from_numpy(np.stack(out).copy())


def _reference_batches(images, labels, mean, std, split, batch_size, epoch, seed, padding, hflip):
    """The batches of cd57394's in-memory path, re-implemented plainly (no device, per image)."""
    n = len(labels)
    gen = torch.Generator().manual_seed(_mix(seed, epoch))
    train = split == "train"
    order = torch.randperm(n, generator=gen) if train else torch.arange(n)
    stop = (n // batch_size) * batch_size if train and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = images[idx]
        if train:
            x = _crop_flip_by_hand(x, padding, hflip, gen)
        x = (x.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        yield x, labels[idx]


def test_random_crop_flip_content_matches_a_crop_by_hand():
    x = torch.arange(8 * 2 * 6 * 5, dtype=torch.int32).reshape(8, 2, 6, 5).to(torch.uint8)
    for padding, hflip in ((2, True), (2, False), (1, True)):
        y = random_crop_flip(x, padding, hflip, torch.Generator().manual_seed(7))
        assert y.dtype == torch.uint8 and y.shape == x.shape
        assert torch.equal(y, _crop_flip_by_hand(x, padding, hflip, torch.Generator().manual_seed(7)))
    # without padding only the flip is left: each image is either itself or its mirror, both seen
    y = random_crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    mirrored = [bool(torch.equal(a, b.flip(-1))) for a, b in zip(y, x)]
    assert all(torch.equal(a, b) or m for a, b, m in zip(y, x, mirrored)) and 0 < sum(mirrored) < len(x)
    assert random_crop_flip(x, 0, False, torch.Generator()).equal(x)


def test_random_resized_crop_matches_bilinear_sampling_by_hand():
    from scipy.ndimage import map_coordinates

    x = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    scale, ratio = (0.2, 0.9), (0.5, 2.0)
    y = random_resized_crop(x, True, torch.Generator().manual_seed(3), scale, ratio)
    gen = torch.Generator().manual_seed(3)  # the same draws, in the documented order
    area = torch.empty(6).uniform_(*scale, generator=gen)
    aspect = torch.empty(6).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=gen).exp()
    cx, cy = torch.rand(6, generator=gen), torch.rand(6, generator=gen)
    flips = torch.rand(6, generator=gen) < 0.5
    assert 0 < int(flips.sum()) < 6
    for i in range(6):
        w = min(1.0, float((area[i] * aspect[i]).sqrt())) * 16  # the crop in pixels
        h = min(1.0, float((area[i] / aspect[i]).sqrt())) * 16
        left, top = float(cx[i]) * (16 - w), float(cy[i]) * (16 - h)
        out = np.arange(16) + 0.5
        cols = left + out * w / 16 - 0.5
        rows = top + out * h / 16 - 0.5
        if flips[i]:
            cols = cols[::-1]
        grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
        for c in range(3):
            expected = map_coordinates(x[i, c].double().numpy(), grid, order=1, mode="nearest")
            np.testing.assert_allclose(y[i, c].numpy(), expected, atol=1e-3)
    whole = random_resized_crop(x, False, torch.Generator(), (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_allclose(whole.numpy(), x.float().numpy(), atol=1e-3)  # a crop of all is the image


@pytest.mark.parametrize("dataset", ["fashion-mnist", "fashion-rotations"])
def test_seeded_batches_are_those_of_the_audited_code(tmp_path, dataset):
    data = ProxyData(dataset=dataset, data_dir=str(_fake_dir(tmp_path)), train_size=70, val_size=20,
                     cache_dir=str(tmp_path / "cache"))
    hflip = dataset == "fashion-mnist"
    for split, epoch in (("train", 1), ("train", 2), ("val", 0), ("test", 0)):
        images, labels = data.tensors(split)
        ours = list(data.batches(split, 16, epoch=epoch, seed=5))
        theirs = list(_reference_batches(images, labels, data.mean, data.std, split, 16, epoch, 5, 2, hflip))
        assert len(ours) == len(theirs) == (4 if split == "train" else -(-len(labels) // 16))
        for (xa, ya), (xb, yb) in zip(ours, theirs):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeded_training_is_that_of_the_audited_batches(tmp_path):
    from localvit.spec import ArchSpec, LayerSpec
    from proxy import ProxyProtocol, train_proxy

    protocol = ProxyProtocol(dataset="fashion-mnist", train_size=64, val_size=20, epochs=2, batch_size=16,
                             width_mult=1.0, precision="fp32", threads=1)
    data = ProxyData(protocol.data_config(), data_dir=str(_fake_dir(tmp_path)), cache_dir=str(tmp_path / "c"))

    class Reference(ProxyData):
        def batches(self, split, batch_size, epoch=0, seed=0):
            images, labels = self.tensors(split)
            return _reference_batches(images, labels, self.mean, self.std, split, batch_size, epoch, seed, 2, True)

    reference = Reference.__new__(Reference)
    reference.__dict__.update(data.__dict__)
    spec = ArchSpec.uniform(LayerSpec("local", "hswish", "se", se_ratio=4, gamma=2), depth=1, embed_dim=32,
                            num_heads=2)
    ours, theirs = (train_proxy(spec, protocol, d, eval_test=True) for d in (data, reference))
    assert ours.train_loss_curve == theirs.train_loss_curve  # exact: the same weights at every step
    assert ours.val_curve == theirs.val_curve and ours.test_acc == theirs.test_acc


def test_batches_are_made_on_the_data_device_without_host_copies(tmp_path):
    """On "meta" nothing can be copied back to the host (it would raise): batches made there were
    made on the device; the CPU data and its draws are untouched."""
    data = ProxyData(dataset="fashion-mnist", data_dir=str(_fake_dir(tmp_path)), train_size=70, val_size=20,
                     cache_dir=str(tmp_path / "cache"))
    on_meta = data.to("meta")
    assert data.to("cpu") is data and data.device.type == "cpu" and on_meta.device.type == "meta"
    images, _ = on_meta.tensors("train")
    assert images.device.type == "meta" and images.dtype == torch.uint8 and on_meta.tensors("train")[0] is images
    for split in ("train", "val"):
        for x, y in on_meta.batches(split, 16, epoch=1, seed=2):
            assert x.device.type == "meta" and y.device.type == "meta" and x.dtype == torch.float32
            assert x.shape[1:] == (1, 28, 28)
    assert data.tensors("train")[0].device.type == "cpu"
    assert on_meta.steps_per_epoch(16) == data.steps_per_epoch(16) == 4
    host = data.tensors("train")[0]
    data.release("meta")  # every view's device copies go; the host's stay
    assert on_meta.tensors("train")[0] is not images and data.tensors("train")[0] is host


def _write_idx(path, array, magic_ndim=None):
    header = bytes([0, 0, 8, magic_ndim or array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_dir(tmp_path, **breaks):
    d = tmp_path / "fm"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, stem in FASHION_MNIST_FILES.items():
        n = 100 if name.startswith("train") else 20
        arr = rng.integers(0, 256, (n, 28, 28)) if name.endswith("images") else np.arange(n) % 10
        _write_idx(d / (stem + ".gz"), arr, breaks.get(name))
    return d


def test_fake_files_load(tmp_path):
    arrays = load_fashion_mnist(_fake_dir(tmp_path), cache_dir=tmp_path / "cache")
    assert arrays["train_images"].shape == (100, 28, 28)


def test_missing_dir_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        ProxyData(data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    assert "\n" not in str(err.value) and "--data-dir" in str(err.value)


def test_missing_file_is_one_line_error(tmp_path):
    d = _fake_dir(tmp_path)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(d, cache_dir=tmp_path / "cache")


def test_bad_magic_is_clear_error(tmp_path):
    d = _fake_dir(tmp_path, train_images=1)
    with pytest.raises(ValueError, match="magic number.*apt-get install dataset-fashion-mnist") as err:
        load_fashion_mnist(d, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_truncated_and_not_gzip_are_clear_errors(tmp_path):
    d = _fake_dir(tmp_path)
    raw = gzip.open(d / "train-labels-idx1-ubyte.gz").read()
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(raw[:-5])
    with pytest.raises(ValueError, match="header says"):
        read_idx(d / "train-labels-idx1-ubyte.gz", 1)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(ValueError, match="not a readable idx file"):
        load_fashion_mnist(d, cache_dir=tmp_path / "cache")


def test_label_count_mismatch(tmp_path):
    d = _fake_dir(tmp_path)
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(99) % 10)
    with pytest.raises(ValueError, match="disagree: 100 images, 99 labels"):
        load_fashion_mnist(d, cache_dir=tmp_path / "cache")


def test_plain_files_accepted(tmp_path):
    d = _fake_dir(tmp_path)
    for p in list(d.iterdir()):
        with gzip.open(p) as src, open(p.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst)
        p.unlink()
    assert load_fashion_mnist(d, cache_dir=tmp_path / "cache")["test_labels"].shape == (20,)


def test_bad_config_values():
    with pytest.raises(ValueError,
                       match="dataset=.cifar.*fashion-mnist, fashion-pairs, fashion-rotations, imagefolder"):
        DataConfig(dataset="cifar")
    with pytest.raises(ValueError, match="--data-dir"):
        DataConfig(dataset="imagefolder")
    with pytest.raises(ValueError, match="train_size=-1"):
        DataConfig(train_size=-1)


@needs_fmnist
def test_fashion_pairs_mosaics_are_named_by_their_top_left_and_bottom_right_items(tmp_path):
    data = ProxyData(dataset="fashion-pairs", img_size=56, train_size=300, val_size=200, cache_dir=str(tmp_path))
    assert data.num_classes == 100 and data.img_size == 56 and data.classes[12] == "Trouser | Pullover"
    raw = load_fashion_mnist(cache_dir=tmp_path)
    # an independent look-up: each source item by its pixels, in the files the split may use
    train_items = {bytes(img): int(lab) for img, lab in zip(raw["train_images"], raw["train_labels"])}
    test_items = {bytes(img): int(lab) for img, lab in zip(raw["test_images"], raw["test_labels"])}
    for split, items in (("train", train_items), ("val", train_items), ("test", test_items)):
        images, labels = data.tensors(split)
        for image, label in list(zip(images[:, 0].numpy(), labels.tolist()))[:50]:
            top_left, bottom_right = bytes(image[:28, :28].copy()), bytes(image[28:, 28:].copy())
            assert 10 * items[top_left] + items[bottom_right] == label
            assert bytes(image[:28, 28:].copy()) in items and bytes(image[28:, :28].copy()) in items
    counts = np.bincount(data.tensors("train")[1].numpy(), minlength=100)
    assert counts.min() == 3 and counts.max() == 3  # balanced pair classes
    train = {bytes(m.numpy()) for m in data.tensors("train")[0]}
    assert not train & {bytes(m.numpy()) for m in data.tensors("val")[0]}
    again = ProxyData(dataset="fashion-pairs", img_size=56, train_size=300, val_size=200, cache_dir=str(tmp_path))
    assert torch.equal(again.tensors("val")[0], data.tensors("val")[0])  # deterministic in split_seed
    x, y = next(data.batches("train", 100, epoch=1))
    assert x.shape == (100, 1, 56, 56) and y.shape == (100,)


@needs_fmnist
def test_fashion_rotations_name_each_item_and_its_quarter_turn(tmp_path):
    data = ProxyData(dataset="fashion-rotations", train_size=800, val_size=400, cache_dir=str(tmp_path))
    assert data.num_classes == 40 and data.classes[5] == "Trouser turned 90"
    raw = load_fashion_mnist(cache_dir=tmp_path)
    # an independent look-up: every upright item by its pixels, then which turn of it each image is
    upright = {bytes(img): int(lab) for img, lab in zip(raw["train_images"], raw["train_labels"])}
    images, labels = data.tensors("train")
    turns_seen = set()
    for image, label in list(zip(images[:, 0].numpy(), labels.tolist()))[:200]:
        found = [(upright[key], t) for t in range(4)
                 if (key := bytes(np.ascontiguousarray(np.rot90(image, k=-t)))) in upright]
        assert (label // 4, label % 4) in found
        turns_seen.add(label % 4)
    assert turns_seen == {0, 1, 2, 3}
    counts = np.bincount(labels.numpy(), minlength=40)
    assert counts.min() >= 15  # every item-and-turn class is in the stratified split
    again = ProxyData(dataset="fashion-rotations", train_size=800, val_size=400, cache_dir=str(tmp_path))
    assert torch.equal(again.tensors("val")[1], data.tensors("val")[1])  # deterministic in split_seed
    x, _ = next(data.batches("train", 64, epoch=1))
    assert x.shape == (64, 1, 28, 28)
