"""Data held on the device: the batched crop follows torchvision, and randomness is a function of counters."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from mae_from_scratch import data as D
from mae_from_scratch.device_data import (
    CROP_AREA, CROP_LEFT, CROP_RATIO, CROP_TOP, FLIP, NOISE, DeviceBatchLoader, DeviceImages, NotUniformError, _mix32,
    counter_hash, counter_uniform, crop_boxes, decode_images, mask_noise, resize_weights, resized_crops,
)
from mae_from_scratch.photos import PhotoCrops

# Resampling on the device goes through grid_sample's normalized coordinates or float32
# weight matrices; on 0-255 values that costs at most a few thousandths of a grey level.
PIXEL_ATOL = 2e-3


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b]).unique()
    fa = torch.searchsorted(a, grid, right=True) / len(a)
    fb = torch.searchsorted(b, grid, right=True) / len(b)
    return (fa - fb).abs().max().item()


def _ours(n, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), seed=0):
    idx = torch.arange(n)
    u = {s: counter_uniform(seed, 0, idx, s, 10) for s in (CROP_AREA, CROP_RATIO, CROP_TOP, CROP_LEFT)}
    return crop_boxes(u[CROP_AREA], u[CROP_RATIO], u[CROP_TOP], u[CROP_LEFT], height, width, scale, ratio)


def test_hash_matches_on_ints_and_tensors_and_looks_uniform():
    x = torch.tensor([0, 1, 2**31, 2**32 - 1, 123456789])
    assert _mix32(x).tolist() == [_mix32(int(v)) for v in x]
    u = counter_uniform(0, 0, torch.arange(200_000), stream=0)[:, 0]
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.003 and abs(u.var().item() - 1 / 12) < 0.002
    # neighbouring counters are not correlated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.01


def test_draws_depend_on_every_counter_and_only_on_them():
    idx = torch.tensor([5, 9, 5])
    a = counter_uniform(3, 2, idx, stream=1, count=4)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])  # the index, not the batch position
    for other in (counter_uniform(4, 2, idx, 1, 4), counter_uniform(3, 1, idx, 1, 4), counter_uniform(3, 2, idx, 2, 4)):
        assert not torch.equal(a, other)
    assert torch.equal(a[:1], counter_uniform(3, 2, torch.tensor([5]), 1, 4))


def test_mask_noise_has_no_ties():
    noise = mask_noise(0, 0, torch.arange(512), 64)
    assert noise.shape == (512, 64)
    assert all(len(row.unique()) == 64 for row in noise)


@pytest.mark.parametrize("height, width", [(32, 32), (32, 40), (96, 64)])
def test_crop_parameters_follow_torchvisions_distribution(height, width):
    n = 20_000
    torch.manual_seed(0)
    img = torch.zeros(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    ours = _ours(n, height, width)
    # Critical value of the two-sample test at the 0.1% level: 1.95 * sqrt(2 / n) = 0.0195.
    limit = 1.95 * (2 / n) ** 0.5
    for k, name in enumerate(("top", "left", "height", "width")):
        assert _ks(ref[:, k], ours[:, k]) < limit, name
    assert _ks(ref[:, 2] * ref[:, 3], ours[:, 2] * ours[:, 3]) < limit
    # The test notices a different recipe: scale (0.3, 1) instead of (0.2, 1).
    other = _ours(n, height, width, scale=(0.3, 1.0))
    assert _ks(ref[:, 2] * ref[:, 3], other[:, 2] * other[:, 3]) > 3 * limit


def test_crop_falls_back_to_torchvisions_central_crop():
    img = torch.zeros(3, 100, 10)  # no box of 90% or more of the area fits 3/4..4/3
    ref = T.RandomResizedCrop.get_params(img, [0.9, 1.0], [3 / 4, 4 / 3])
    assert _ours(50, 100, 10, scale=(0.9, 1.0)).tolist() == [list(ref)] * 50


@pytest.mark.parametrize("side, box, size", [(64, (3, 5, 17, 20), 32), (64, (0, 0, 32, 32), 32),
                                             (64, (5, 7, 50, 40), 32), (64, (10, 0, 6, 9), 24),
                                             (32, (3, 5, 17, 20), 32), (32, (0, 0, 32, 32), 32),
                                             (32, (10, 0, 6, 9), 32), (24, (1, 2, 23, 11), 24)])
def test_a_fixed_crop_equals_torchvisions_antialiased_bilinear_resized_crop(side, box, size):
    # side <= size: no crop can shrink, the grid_sample path; side > size: the antialiased one.
    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)
    top, left, h, w = box
    ref = TF.resized_crop(imgs[0].float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                          antialias=True)
    ours = resized_crops(imgs, torch.tensor([box]), size)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=PIXEL_ATOL)
    flipped = resized_crops(imgs, torch.tensor([box]), size, flip=torch.tensor([True]))[0]
    torch.testing.assert_close(flipped, TF.horizontal_flip(ref), rtol=0, atol=PIXEL_ATOL)


@pytest.mark.parametrize("shape, box, size", [((1, 8), (0, 0, 1, 8), 8), ((8, 1), (0, 0, 8, 1), 8),
                                             ((1, 6), (0, 1, 1, 4), 8), ((32, 96), (0, 0, 32, 96), 32),
                                             ((96, 32), (4, 2, 90, 20), 32), ((20, 40), (3, 5, 17, 30), 32)])
def test_crops_of_non_square_and_one_pixel_images_equal_torchvisions(shape, box, size):
    # One-pixel-high or -wide images (no division by zero), and images larger than the output
    # along one side only: a crop that shrinks along it must be antialiased.
    torch.manual_seed(1)
    imgs = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8)
    ref = TF.resized_crop(imgs[0].float(), *box, [size, size], InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(resized_crops(imgs, torch.tensor([box]), size)[0], ref, rtol=0, atol=PIXEL_ATOL)


def _checkerboard(side, cell=1):
    """A black-and-white checkerboard of ``cell x cell`` squares, ``(3, side, side)`` uint8."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return (((yy // cell + xx // cell) % 2) * 255).to(torch.uint8).expand(3, side, side).contiguous()


# (box, output size, shrink factors along rows and columns)
SHRINKS = [((0, 0, 64, 64), 32, (2, 2)), ((8, 4, 48, 48), 24, (2, 2)), ((0, 0, 96, 96), 32, (3, 3)),
           ((0, 0, 96, 96), 64, (1.5, 1.5)), ((3, 5, 50, 41), 32, (1.5625, 1.28125)),
           ((1, 2, 90, 20), 32, (2.8125, 0.625))]


@pytest.mark.parametrize("box, size, factors", SHRINKS, ids=[f"{b}->{s}" for b, s, _ in SHRINKS])
def test_a_shrunk_checkerboard_is_antialiased_as_torchvision_does(box, size, factors):
    top, left, h, w = box
    assert (h / size, w / size) == factors
    for cell in (1, 2):
        board = _checkerboard(96, cell)
        ref = TF.resized_crop(board.float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                              antialias=True)
        # Other crops in the same batch (a shrink and an enlargement, flipped or not) must not change this one.
        boxes = torch.tensor([box, (0, 0, 96, 96), (3, 5, 17, 20)])
        ours = resized_crops(board.expand(3, 3, 96, 96), boxes, size, flip=torch.tensor([False, True, False]))[0]
        torch.testing.assert_close(ours, ref, rtol=0, atol=PIXEL_ATOL)
        if cell == 1:
            # 1-px squares are finer than any shrunk output's pixels: close to flat grey
            # (without antialiasing the 96 -> 64 crop keeps a coarse pattern of std 32).
            assert ours.std() < 5 and abs(ours.mean() - 127.5) < 3
        else:
            # The comparison tells antialiasing from none: without it 2-px squares come out 50-125 grey levels off.
            aliased = TF.resized_crop(board.float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                                      antialias=False)
            assert (aliased - ours).abs().max() > 40


def test_an_enlarged_crop_of_a_large_image_is_plain_bilinear():
    board = _checkerboard(96)[None]  # 96 px images take the antialiased path, even for this crop
    box = (3, 5, 17, 20)
    ref = TF.resized_crop(board[0].float(), *box, [32, 32], InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(resized_crops(board, torch.tensor([box]), 32)[0], ref, rtol=0, atol=PIXEL_ATOL)
    assert ref.std() > 40  # enlarged, the checkerboard keeps its contrast


def test_resize_weights_rows_sum_to_one_and_stay_inside_the_crop():
    start, length = torch.tensor([0, 7, 30]), torch.tensor([96, 41, 17])
    w = resize_weights(start, length, 32, 96)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(3, 32))
    inside = (torch.arange(96) >= start[:, None]) & (torch.arange(96) < (start + length)[:, None])
    assert (w[~inside[:, None, :].expand_as(w)] == 0).all()
    # A shrink by 3: output pixel 10 is centred on input pixel 31, the triangle 3 pixels wide each side.
    torch.testing.assert_close(w[0, 10, 28:35], torch.tensor([0, 1, 2, 3, 2, 1, 0]) / 9.0)
    # A shrink by 2: output pixel 5 is centred between input pixels 10 and 11.
    torch.testing.assert_close(resize_weights(start[:1], torch.tensor([64]), 32, 64)[0, 5, 8:14],
                               torch.tensor([0, 1, 3, 3, 1, 0]) / 8.0)


def test_resampling_stays_float32_inside_autocast():
    imgs = _checkerboard(64)[None]
    box = torch.tensor([(3, 5, 50, 41)])
    plain = resized_crops(imgs, box, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = resized_crops(imgs, box, 32)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)


def _photo_images(n=64, size=32):
    return decode_images(PhotoCrops(num_images=n, size=size, seed=0))


def test_decode_images_once_and_refuse_mixed_sizes():
    data = _photo_images(16)
    assert data.images.shape == (16, 3, 32, 32) and data.images.dtype == torch.uint8
    crops = PhotoCrops(num_images=2, size=32, seed=0)
    crops.images[1] = crops.images[1].resize((40, 32))
    with pytest.raises(NotUniformError, match="image 1"):
        decode_images(crops)


def test_loader_normalizes_each_channel_with_its_own_statistics():
    # A constant colour survives any crop and flip, so every pixel of channel c must be
    # (v_c / 255 - mean_c) / std_c with ImageNet's statistics in R, G, B order.
    colour = torch.tensor([200, 100, 30], dtype=torch.uint8)
    for side in (32, 64):  # the grid_sample path and the antialiased one
        data = DeviceImages(colour.view(1, 3, 1, 1).expand(8, 3, side, side).contiguous())
        loader = DeviceBatchLoader(data, D.ResumableSampler(data, seed=0), batch_size=8, input_size=32,
                                   mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD, num_patches=64, seed=0)
        imgs, _ = loader.batch(0, torch.arange(8))
        expected = torch.tensor([(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224,
                                 (30 / 255 - 0.406) / 0.225])
        torch.testing.assert_close(imgs, expected.view(1, 3, 1, 1).expand_as(imgs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", [32, 64])
def test_loader_batches_resume_inside_an_epoch(side):
    data = _photo_images(64, side)
    sampler = D.ResumableSampler(data, seed=0)
    loader = DeviceBatchLoader(data, sampler, batch_size=16, input_size=32, mean=D.IMAGENET_MEAN,
                               std=D.IMAGENET_STD, num_patches=64, seed=0)
    sampler.set_position(3, 0)
    full = list(loader)
    assert len(full) == len(loader) == 4
    imgs, noise = full[0]
    assert imgs.shape == (16, 3, 32, 32) and imgs.dtype == torch.float32 and noise.shape == (16, 64)
    sampler.set_position(3, 32)  # a run stopped after two batches continues with the third
    rest = list(loader)
    assert len(rest) == 2
    for (a, na), (b, nb) in zip(full[2:], rest):
        assert torch.equal(a, b) and torch.equal(na, nb)
    sampler.set_position(4, 0)  # another epoch, other crops
    assert not torch.equal(next(iter(loader))[0], full[0][0])


def test_raw_cifar_arrays_are_used_as_they_are():
    class FakeCIFAR(torch.utils.data.Dataset):
        import numpy as np
        data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        targets = [3, 7]

        def __len__(self):
            return 2

    data = decode_images(FakeCIFAR())
    assert data.images.shape == (2, 3, 4, 4) and data.targets.tolist() == [3, 7]
    assert data.images[1, 2, 0, 1].item() == FakeCIFAR.data[1, 0, 1, 2]
    assert isinstance(data, DeviceImages)


# ---------------------------------------------------------------------------------- the generator, value by value
def _lowbias32(x: int) -> int:
    """C. Wellons' lowbias32 hash, written from its published definition on Python ints."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_mix32_is_lowbias32_on_ints_and_on_int64_tensors():
    g = torch.Generator().manual_seed(0)
    values = [0, 1, 2, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1] + torch.randint(
        0, 2**32, (200,), generator=g, dtype=torch.long).tolist()
    expected = [_lowbias32(v) for v in values]
    assert [_mix32(v) for v in values] == expected
    assert _mix32(torch.tensor(values)).tolist() == expected


def test_counter_draws_are_pinned():
    # The draws are part of every run made with the device loader: a run resumed with a later
    # version of the package repeats its crops, flips and masks only if they stay the same.
    # A change to the generator must be deliberate: then write the new numbers here.
    h = counter_hash(1, 2, torch.tensor([3, 7, 2**33 + 5]), 3, 3)
    assert h.dtype == torch.long
    assert h.tolist() == [[1605392262, 433998088, 3174051384], [2174457665, 3639222247, 10062007],
                          [571517693, 1436501406, 2035582482]]
    # An epoch and a stream with many bits set: each counter is mixed in, not just or-ed.
    assert counter_hash(7, 123456789, torch.tensor([11, 2**20 + 3]), 5, 2).tolist() == [
        [1306930545, 3661742071], [3308825259, 3372720133]]
    # Seeds, epochs and indices are taken modulo 2**32.
    assert torch.equal(counter_hash(2**32 + 1, 2, torch.tensor([3, 2**32 + 7]), 3, 2), h[:2, :2])
    assert torch.equal(counter_hash(1, 2**32 + 2, torch.tensor([3]), 3, 2), h[:1, :2])
    # Uniform numbers are the hashes over 2**32, exactly; one draw by default.
    u = counter_uniform(1, 2, torch.tensor([3, 7, 2**33 + 5]), 3, 3)
    assert u.dtype == torch.float64 and torch.equal(u * 2.0**32, h.double())
    assert counter_uniform(1, 2, torch.tensor([3, 7]), 3).shape == (2, 1)


def test_mask_noise_orders_patches_by_hash_and_breaks_ties_by_patch_number():
    idx = torch.tensor([4, 9])
    noise = mask_noise(5, 1, idx, 64)
    h = counter_hash(5, 1, idx, NOISE, 64)
    # noise = (hash * L + patch) / (2**32 * L): exact in float64 for L = 64, a power of two.
    assert torch.equal(noise * (2.0**32 * 64), (h * 64 + torch.arange(64)).double())
    assert noise.min() >= 0 and noise.max() < 1


# ---------------------------------------------------------------------------------- the crop, try by try
def _reference_boxes(u_area, u_ratio, u_top, u_left, height, width, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, written out with the given uniform numbers:
    try after try, the first box that fits at a uniform position; else the central fallback."""
    boxes = []
    for b in range(u_area.shape[0]):
        for k in range(u_area.shape[1]):
            target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area[b, k].item())
            log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
            aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio[b, k].item())
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                boxes.append([math.floor(u_top[b, k].item() * (height - h + 1)),
                              math.floor(u_left[b, k].item() * (width - w + 1)), h, w])
                break
        else:  # torchvision's fallback: the whole image, cut to the nearest allowed ratio, centred
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                w, h = int(round(height * max(ratio))), height
            else:
                w, h = width, height
            boxes.append([(height - h) // 2, (width - w) // 2, h, w])
    return boxes


@pytest.mark.parametrize("height, width", [(32, 32), (32, 40), (40, 32), (64, 16), (16, 64), (100, 10), (10, 100)])
@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.9, 1.0), (0.28, 0.3)])
def test_crop_boxes_follow_get_params_try_for_try(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(height * 1000 + width)
    for tries in (1, 3, 10):
        u = [torch.rand(300, tries, generator=g, dtype=torch.float64) for _ in range(4)]
        ours = crop_boxes(*u, height, width, scale, ratio)
        assert ours.dtype == torch.int64 and ours.shape == (300, 4)
        assert ours.tolist() == _reference_boxes(*u, height, width, scale, ratio)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (3, 2), (4, 4)])
def test_crop_boxes_of_tiny_images_refuse_empty_boxes_as_get_params_does(height, width):
    # A box of under half a pixel rounds to width or height 0: such a try does not fit.
    g = torch.Generator().manual_seed(height * 10 + width)
    u = [torch.rand(400, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    ours = crop_boxes(*u, height, width, (0.01, 0.3))
    assert ours.tolist() == _reference_boxes(*u, height, width, (0.01, 0.3), (3 / 4, 4 / 3))
    assert (ours[:, 2:] > 0).all()


def test_crop_boxes_cover_their_edge_cases():
    # The comparison above meets boxes as wide or as tall as the image, boxes at the far edges,
    # and central fallbacks (which a test drawing few of them could miss).
    g = torch.Generator().manual_seed(0)
    u = [torch.rand(2000, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    square = crop_boxes(*u, 32, 32, (0.9, 1.0))
    assert (square[:, 3] == 32).any() and (square[:, 2] == 32).any()
    assert ((square[:, 0] + square[:, 2] == 32) & (square[:, 0] > 0)).any()
    tall = crop_boxes(*u, 64, 16, (0.28, 0.3))
    assert (tall == torch.tensor([21, 0, 21, 16])).all(1).any()  # the fallback for a tall image
    wide = crop_boxes(*u, 16, 64, (0.28, 0.3))
    assert (wide == torch.tensor([0, 21, 16, 21])).all(1).any()  # and for a wide one


def test_crop_boxes_default_to_the_recipes_scale_and_ratio():
    g = torch.Generator().manual_seed(1)
    u = [torch.rand(500, 10, generator=g, dtype=torch.float64) for _ in range(4)]
    assert torch.equal(crop_boxes(*u, 40, 32), crop_boxes(*u, 40, 32, (0.2, 1.0), (3 / 4, 4 / 3)))


def _fit_probability(height, width, scale, ratio):
    """The chance that one try fits a tall image when only its width can be too large.

    A try fits when ``round(sqrt(A s r)) <= width``, i.e. ``s r < c = (width + 1/2)**2 / A``, with
    ``s`` uniform in ``scale`` and ``log r`` uniform in ``log(ratio)``: integrate over ``t = log r``
    the share of ``s`` below ``c exp(-t)``.
    """
    s0, s1 = scale
    assert height * width * s1 / ratio[0] < (height - 0.5) ** 2  # the height never limits
    c = (width + 0.5) ** 2 / (height * width)
    a, b = math.log(ratio[0]), math.log(ratio[1])
    t1, t2 = math.log(c / s1), math.log(c / s0)  # below t1 every s fits, above t2 none
    always = max(0.0, min(b, t1) - a)
    lo, hi = max(a, t1), min(b, t2)
    partial = (c * (math.exp(-lo) - math.exp(-hi)) - s0 * (hi - lo)) / (s1 - s0) if hi > lo else 0.0
    return (always + partial) / (b - a)


def test_loader_tries_ten_times_before_taking_the_central_crop(monkeypatch):
    # A tall 64 x 16 image and crops of 28-30% of its area: a try fits only if the crop is narrow
    # enough, which happens with probability p = 0.349, so all 10 tries fail with probability
    # (1 - p)**10 = 0.0136 (3 tries: 0.275, 9: 0.021, 11: 0.0088).  No crop that fits can be the
    # central fallback box (21, 0, 21, 16): a 16-wide, 21-high crop needs more than 31% of the area.
    import mae_from_scratch.device_data as DD

    height, width, scale, ratio = 64, 16, (0.28, 0.3), (3 / 4, 4 / 3)
    p = _fit_probability(height, width, scale, ratio)
    expected = (1 - p) ** 10
    assert p == pytest.approx(0.3494, abs=1e-4)
    # torchvision's own sampler falls back at that rate too (a looser check: it is slow to draw).
    torch.manual_seed(0)
    img = torch.zeros(1, height, width)
    n_tv = 6000
    tv = sum(T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) == (21, 0, 21, 16)
             for _ in range(n_tv)) / n_tv
    assert abs(tv - expected) < 4 * (expected * (1 - expected) / n_tv) ** 0.5

    boxes = []
    real = DD.crop_boxes
    monkeypatch.setattr(DD, "crop_boxes", lambda *a, **k: boxes.append(real(*a, **k)) or boxes[-1])
    # Only the crop boxes matter here: skip the resampling.
    monkeypatch.setattr(DD, "resized_crops", lambda imgs, b, size, flip=None: torch.zeros(len(b), 1, size, size))
    n, chunk = 100_000, 20_000
    images = DeviceImages(torch.zeros(1, 1, height, width, dtype=torch.uint8).expand(n, 1, height, width))
    loader = DeviceBatchLoader(images, None, batch_size=chunk, input_size=8, mean=[0.5], std=[0.5],
                               num_patches=4, scale=scale, ratio=ratio)  # tries: the default
    for start in range(0, n, chunk):
        loader.batch(0, torch.arange(start, start + chunk))
    fell_back = (torch.cat(boxes) == torch.tensor([21, 0, 21, 16])).all(1).double().mean().item()
    assert abs(fell_back - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, (fell_back, expected)


def test_loader_defaults_are_the_recipes_crop(monkeypatch):
    import mae_from_scratch.device_data as DD

    seen = []
    real = DD.crop_boxes
    monkeypatch.setattr(DD, "crop_boxes", lambda *a, **k: seen.append(a) or real(*a, **k))
    images = DeviceImages(torch.zeros(4, 1, 40, 32, dtype=torch.uint8))
    loader = DeviceBatchLoader(images, None, batch_size=4, input_size=8, mean=[0.5], std=[0.5], num_patches=4)
    loader.batch(5, torch.arange(4))
    u_area, u_ratio, u_top, u_left, height, width, scale, ratio = seen[0]
    assert (height, width, scale, ratio) == (40, 32, (0.2, 1.0), (3 / 4, 4 / 3))
    idx = torch.arange(4)
    for stream, u in ((CROP_AREA, u_area), (CROP_RATIO, u_ratio), (CROP_TOP, u_top), (CROP_LEFT, u_left)):
        assert torch.equal(u, counter_uniform(0, 5, idx, stream, 10))  # seed 0 and 10 tries by default


def test_loader_noise_is_the_samples_mask_noise():
    images = DeviceImages(torch.zeros(6, 3, 32, 32, dtype=torch.uint8))
    loader = DeviceBatchLoader(images, None, batch_size=3, input_size=32, mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD,
                               num_patches=16, seed=2)
    idx = torch.tensor([5, 1, 3])
    _, noise = loader.batch(7, idx)
    assert torch.equal(noise, mask_noise(2, 7, idx, 16))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_loader_iterates_the_samplers_epoch_and_indices_in_whole_batches(batch_size):
    data = _photo_images(10, 32)
    sampler = D.ResumableSampler(data, seed=0)
    sampler.set_position(3, 0)
    keys = list(sampler)
    assert {e for e, _ in keys} == {3}
    loader = DeviceBatchLoader(data, sampler, batch_size=batch_size, input_size=32, mean=D.IMAGENET_MEAN,
                               std=D.IMAGENET_STD, num_patches=64, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 10 // batch_size  # the last partial batch is dropped
    for b, (imgs, noise) in enumerate(batches):
        idx = torch.tensor([i for _, i in keys[b * batch_size:(b + 1) * batch_size]])
        want_imgs, want_noise = loader.batch(3, idx)
        assert torch.equal(imgs, want_imgs) and torch.equal(noise, want_noise)


def test_loader_flips_half_the_samples_by_their_own_draw():
    # A left-to-right ramp image: a flipped sample has its brightest column first.
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(1, 1, 32, 32)
    images = DeviceImages(ramp.expand(2000, 1, 32, 32))
    loader = DeviceBatchLoader(images, None, batch_size=2000, input_size=32, mean=[0.0], std=[1.0],
                               num_patches=4, seed=3)
    imgs, _ = loader.batch(1, torch.arange(2000))
    flipped = imgs[:, 0, 0, 0] > imgs[:, 0, 0, -1]
    expected = counter_uniform(3, 1, torch.arange(2000), FLIP)[:, 0] < 0.5
    assert torch.equal(flipped, expected)
    assert 900 < int(flipped.sum()) < 1100


# ---------------------------------------------------------------------------------- holding and decoding images
def test_device_images_hold_uint8_batches_only():
    for bad in (torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(2, 3, 4, 4).int()):
        with pytest.raises(ValueError, match="uint8"):
            DeviceImages(bad)
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    held = DeviceImages(images, torch.tensor([7, 9]))
    assert len(held) == 2 and held.nbytes == 120
    moved = held.to("cpu")
    assert torch.equal(moved.images, images) and torch.equal(moved.targets, torch.tensor([7, 9]))
    assert DeviceImages(images).to("cpu").targets is None


class _Pictures(torch.utils.data.Dataset):
    """``(PIL image, label)`` items of ``size``; the items in ``broken`` raise DataError (with a
    path and a reason, as the image folders do, or a bare message); records the process of each read."""

    def __init__(self, labels, size=(5, 4), broken=None):
        self.labels, self.size, self.broken, self.pids = labels, size, broken or {}, []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import os

        from PIL import Image

        self.pids.append(os.getpid())
        if i >= len(self.labels):
            raise IndexError(i)
        if i in self.broken:
            path, why = self.broken[i]
            err = D.DataError(f"cannot read image {path}: {why}" if path else why)
            if path:
                err.path, err.why = path, why
            raise err
        value = 20 * i
        return Image.new("RGB", self.size, (value, value + 1, value + 2)), self.labels[i]


def test_decode_images_keeps_order_and_labels_in_this_process(capfd):
    import os

    ds = _Pictures([3, 1, 4, 1, 5])
    data = decode_images(ds)  # by default: no progress bar, no worker processes
    assert data.images.shape == (5, 3, 4, 5) and data.targets.tolist() == [3, 1, 4, 1, 5]
    assert data.images[:, :, 0, 0].tolist() == [[20 * i, 20 * i + 1, 20 * i + 2] for i in range(5)]
    assert ds.pids == [os.getpid()] * 5
    assert capfd.readouterr().err == ""
    decode_images(ds, progress=True)
    err = capfd.readouterr().err
    assert "decoding images once" in err and err.isascii()  # an ASCII bar, for logs and notebooks


def test_decode_images_names_every_unreadable_image():
    ds = _Pictures(list(range(6)), broken={1: ("a/broken.png", "OSError: truncated"),
                                           4: (None, "no such image")})
    with pytest.raises(D.DataError) as caught:
        decode_images(ds)
    message = str(caught.value)
    assert message.startswith("2 image files cannot be read: ")
    assert "a/broken.png (OSError: truncated); no such image (no such image)" in message


def test_raw_arrays_of_stl10_style_data_sets_are_used_as_they_are():
    class FakeSTL10(torch.utils.data.Dataset):  # (N, C, H, W) arrays and `labels`, as STL-10
        import numpy as np
        data = np.arange(3 * 3 * 4 * 6, dtype=np.uint8).reshape(3, 3, 4, 6)
        labels = np.array([2, 0, 1])

        def __len__(self):
            return 3

    data = decode_images(torch.utils.data.Subset(FakeSTL10(), [2, 0]))
    assert torch.equal(data.images, torch.from_numpy(FakeSTL10.data[[2, 0]]))
    assert data.targets.tolist() == [1, 2]


def test_first_image_nbytes_reads_as_little_as_it_can():
    from mae_from_scratch.device_data import first_image_nbytes

    class OneRaw(torch.utils.data.Dataset):
        import numpy as np
        data = np.zeros((1, 4, 5, 3), dtype=np.uint8)
        targets = [0]

        def __len__(self):
            return 1

    assert first_image_nbytes(OneRaw()) == 60  # from the array, nothing decoded
    # The first readable image, as uint8 (C, H, W): 3 x 4 x 5.
    assert first_image_nbytes(_Pictures([0, 1], broken={0: ("x.png", "bad")})) == 60
    assert first_image_nbytes(_Pictures([0, 1, 2], broken={i: ("x.png", "bad") for i in range(3)})) == 0
    # It gives up after 64 unreadable images: decode_images will name them all anyway.
    many = _Pictures(list(range(70)), broken={i: ("x.png", "bad") for i in range(64)})
    assert first_image_nbytes(many) == 0 and len(many.pids) == 64


def test_fits_on_device_allows_a_quarter_of_the_memory(monkeypatch):
    import os

    from mae_from_scratch.device_data import fits_on_device

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}[name])
    assert fits_on_device(1_024_000, "cpu") and not fits_on_device(1_024_001, torch.device("cpu"))

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", unknown)  # no page counts: assume 8 GiB of RAM
    assert fits_on_device(2 * 2**30, "cpu") and not fits_on_device(2 * 2**30 + 1, "cpu")

    class Properties:
        total_memory = 4000

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    assert fits_on_device(1000, "cuda") and not fits_on_device(1001, "cuda:0")
