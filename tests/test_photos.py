"""The book's photographs: held-out crops are disjoint from every training crop, down to the
pixels that resampling reads past a crop's box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mae_from_scratch import data as D
from mae_from_scratch import photos as P
from mae_from_scratch.photos import (
    OFFLINE_PHOTOS, PHOTOS, PhotoCrops, _shrunk_photos, held_out_start, load_photo, photo_crops, split_columns,
)


def _widths(size):
    """The shrunk photos' widths: the two splits' regions side by side."""
    regions = _shrunk_photos(size)
    return [tr.width + te.width for (tr, _), (te, _) in zip(regions["train"], regions["test"])]


@pytest.mark.parametrize("size", [32, 64])
def test_test_crops_never_overlap_training_crops(size):
    train = PhotoCrops(num_images=300, size=size, seed=0, split="train")
    test = PhotoCrops(num_images=300, size=size, seed=1, split="test")
    widths = _widths(size)
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


@pytest.fixture
def painted(monkeypatch):
    """``painted(side, size)``: from now on the photographs come with one side of their cut
    (``"train"`` or ``"test"``) inverted, every pixel changed; the cache of shrunk photos is
    emptied before and after, so no other test sees them."""
    real, originals = P.offline_photo, {n: P.offline_photo(n) for n in OFFLINE_PHOTOS}

    def paint(side, size):
        cuts = {n: P._cut(originals[n].shape[1], w) for n, w in zip(OFFLINE_PHOTOS, _widths(size))}

        def photo(name):
            a = real(name).copy()
            cols = slice(None, cuts[name]) if side == "train" else slice(cuts[name], None)
            a[:, cols] = 255 - a[:, cols]
            return a

        monkeypatch.setattr(P, "offline_photo", photo)
        _shrunk_photos.cache_clear()

    yield paint
    _shrunk_photos.cache_clear()


@pytest.mark.parametrize("size", [32, 64])
def test_no_crop_reads_a_pixel_of_the_other_side(painted, size):
    """A bicubic resize reads past its box (12 pixels for a crop shrunk 8 times), and so does
    shrinking the photo: cut from the whole photo, a training crop that ends at the held-out
    strip carries up to 30 of 255 of it.  Here every pixel on the other side of the cut is
    changed, and every crop of a split must stay the same to the bit."""
    def crops(split, min_scale):
        made = PhotoCrops(num_images=200, size=size, seed=0, split=split, min_scale=min_scale)
        return made, np.stack([np.asarray(img) for img in made.images])

    # min_scale 1: the largest crops, shrunk up to 8 times, which reach furthest
    before = {(split, m): crops(split, m) for split in ("train", "test") for m in (0.1, 1.0)}
    widths = _widths(size)
    for (split, m), (made, _) in before.items():
        # Crops whose filter, on the whole photo, would read across the cut: without them the
        # test could not fail.
        near = 0
        for t, (left, _, right, _) in zip(made.targets, made.boxes):
            gap = right - held_out_start(widths[t]) if split == "train" else left - held_out_start(widths[t])
            near += abs(gap) < 1.5 * (right - left) / size
        assert near >= 5, (split, m, near)
    for split, other in (("train", "test"), ("test", "train")):
        painted(other, size)
        for m in (0.1, 1.0):
            made, images = crops(split, m)
            assert made.boxes == before[split, m][0].boxes
            changed = np.abs(images.astype(int) - before[split, m][1]).max()
            assert changed == 0, f"{split} crops changed by up to {changed} when the {other} side was painted"


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
