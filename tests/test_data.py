"""Data: sources, splits, batch-wise augmentation with co-augmented maps, synthetic set."""

import pickle

import numpy as np
import pytest
import torch

from toolkit import ToolkitError
from toolkit.data import (epoch_generator, index_batches, load_cifar10, load_imagenet_aligned, make_synthetic,
                          random_crop_flip, stratified_sample, train_val_split)
from toolkit.data.augment import apply_crop_flip
from toolkit.data.imagenet_aligned import SHARED_ALIGNED_DIR


@pytest.mark.integration
def test_shared_copy_is_uint8_nchw_and_labelled_as_jpeg(cifar10):
    assert cifar10.train.images.shape == (50000, 3, 32, 32) and cifar10.train.images.dtype == torch.uint8
    assert cifar10.test.images.shape == (10000, 3, 32, 32)
    assert cifar10.train.labels[:4].tolist() == [6, 9, 9, 4]
    assert "JPEG q75" in cifar10.description
    assert int(cifar10.test.exact.sum()) == 1000


def test_torchvision_batches_folder_is_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    data = load_cifar10(tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and data.test.labels.tolist() == [0, 1, 2, 3]
    assert "pristine" in data.description


def test_missing_data_dir_is_one_line_error(tmp_path):
    with pytest.raises(ToolkitError, match="no CIFAR-10 in"):
        load_cifar10(tmp_path / "nowhere")


def test_env_var_names_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_DISTILL_DATA", str(tmp_path))
    with pytest.raises(ToolkitError, match=str(tmp_path)):
        load_cifar10()


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = torch.arange(10).repeat_interleave(100)
    tr, va = train_val_split(labels, 200, seed=1)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
    assert torch.bincount(labels[va]).tolist() == [20] * 10
    tr2, va2 = train_val_split(labels, 200, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(labels, 200, seed=2)[1])
    sub = stratified_sample(labels, 800, seed=3)
    assert torch.bincount(labels[sub]).tolist() == [80] * 10 and len(set(sub.tolist())) == 800


def test_crop_flip_matches_a_direct_per_sample_implementation():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    top, left = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.tensor([True, False, True, False, True, False])
    out = apply_crop_flip(x, top, left, flip, 4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        ref = padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32]
        ref = ref.flip(-1) if flip[i] else ref
        assert torch.equal(out[i], ref)


def test_maps_get_the_same_crop_and_flip_as_images():
    x = torch.zeros(8, 3, 32, 32)
    maps = torch.zeros(8, 32, 32)
    x[:, :, 5, 7] = 1.0  # a marker pixel in image and map at the same place
    maps[:, 5, 7] = 1.0
    out, (mout,) = random_crop_flip(x, torch.Generator().manual_seed(3), 4, extra=[maps])
    for i in range(8):
        assert torch.equal(out[i, 0] > 0, mout[i] > 0)
    assert (out[:, 0].flatten(1).argmax(1) != 5 * 32 + 7).any()  # the marker did move for some sample


def test_augmentation_reproducible_from_seed():
    x = torch.rand(4, 3, 32, 32)
    a, _ = random_crop_flip(x, epoch_generator(7, 2, 1))
    b, _ = random_crop_flip(x, epoch_generator(7, 2, 1))
    c, _ = random_crop_flip(x, epoch_generator(7, 3, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_index_batches_cover_everything_once():
    seen = torch.cat(list(index_batches(103, 10, torch.Generator().manual_seed(0))))
    assert sorted(seen.tolist()) == list(range(103))
    assert sum(len(b) for b in index_batches(103, 10, None, drop_last=True)) == 100


def test_synthetic_dataset_shapes_and_determinism():
    a, b = make_synthetic(5, 2, seed=1), make_synthetic(5, 2, seed=1)
    assert a.train.images.shape == (50, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.images.shape == (20, 3, 32, 32)
    assert a.train.labels.tolist() == [c for c in range(10) for _ in range(5)]
    assert a.test.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, make_synthetic(5, 2, seed=2).test.images)


@pytest.mark.skipif(not SHARED_ALIGNED_DIR.is_dir(), reason="shared ImageNet-aligned set not present")
def test_imagenet_aligned_has_eight_classes_and_strict_subset():
    full = load_imagenet_aligned("val")
    strict = load_imagenet_aligned("val", strict=True)
    assert len(full) == 1450 and len(strict) == 1100
    assert sorted(torch.unique(full.labels).tolist()) == [1, 2, 3, 4, 5, 6, 8, 9]


def test_subset_size_reads_one_as_all_and_whole_numbers_above_one_as_counts():
    from toolkit import ToolkitError
    from toolkit.data.splits import subset_size

    assert subset_size(1000, 1) == 1000 and subset_size(1000, 1.0) == 1000  # "fraction: 1" is everything, not one image
    assert subset_size(1000, 0.25) == 250 and subset_size(1000, 300) == 300 and subset_size(1000, 300.0) == 300
    assert subset_size(1000, None) == 1000
    for bad in (0, -0.5, 1.5, 1001, "half", True):
        with pytest.raises(ToolkitError, match="subset size"):
            subset_size(1000, bad)
