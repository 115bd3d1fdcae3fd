"""The book's photographs: held-out crops are disjoint from every training crop."""

from __future__ import annotations

import pytest
import torch

from mae_from_scratch import data as D
from mae_from_scratch.photos import (
    OFFLINE_PHOTOS, PHOTOS, PhotoCrops, _shrunk_photos, held_out_start, load_photo, photo_crops, split_columns,
)


@pytest.mark.parametrize("size", [32, 64])
def test_test_crops_never_overlap_training_crops(size):
    train = PhotoCrops(num_images=300, size=size, seed=0, split="train")
    test = PhotoCrops(num_images=300, size=size, seed=1, split="test")
    widths = [p.size[0] for p in _shrunk_photos(size)]
    for label, (left, top, right, bottom) in zip(train.targets, train.boxes):
        assert right <= held_out_start(widths[label]), (OFFLINE_PHOTOS[label], left, right)
    for label, (left, top, right, bottom) in zip(test.targets, test.boxes):
        assert left >= held_out_start(widths[label]), (OFFLINE_PHOTOS[label], left, right)
    # Both splits see every photograph, so the "which photo?" labels mean the same.
    assert set(train.targets) == set(test.targets) == set(range(len(OFFLINE_PHOTOS)))
    # Pixel-level: no test crop's box intersects any training crop's box on the same photo.
    for label in range(len(OFFLINE_PHOTOS)):
        tr = [b for t, b in zip(train.targets, train.boxes) if t == label]
        te = [b for t, b in zip(test.targets, test.boxes) if t == label]
        assert max(b[2] for b in tr) <= min(b[0] for b in te)


def test_split_columns_cover_the_photo_once():
    for w in (31, 100, 512, 1001):
        a, b = split_columns(w, "train")
        c, d = split_columns(w, "test")
        assert (a, b, d) == (0, c, w) and 0 < c < w
        assert abs((d - c) / w - 0.25) < 0.01
    with pytest.raises(ValueError, match="split"):
        split_columns(100, "val")


def test_photo_crops_match_photo_crop_dataset_and_seed():
    a = photo_crops(6, 32, seed=2, split="test")
    b = photo_crops(6, 32, seed=2, split="test")
    c = photo_crops(6, 32, seed=2, split="train")
    assert a.shape == (6, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_photos_dataset_test_split_is_held_out():
    test = D.build_dataset("photos", "test", None, num_photos=40, photo_size=32)
    assert test.base.split == "test" and len(test) == 10


def test_load_photo_names():
    assert load_photo(PHOTOS[0], 32).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo("nope")
