"""Data sets for pretraining and evaluation: layouts, archives, statistics and errors."""

from __future__ import annotations

import tarfile
from pathlib import Path
import urllib.error

import pytest
import torch

from _engine_helpers import cifar_tar_path, make_cifar_like_folder, make_image_folder, make_tar, write_unreadable_image
from mae_from_scratch import data as D
from mae_from_scratch.archives import extract_archive
from mae_from_scratch.data_error import DataError
from mae_from_scratch.photos import PhotoCrops


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))


def test_cifar10_folder_keeps_cifar_class_order_and_stats(tmp_path):
    root = make_cifar_like_folder(tmp_path / "cifar", per_class=1)
    ds = D.build_dataset("cifar10", "train", root)
    assert ds.base.class_to_idx == {c: i for i, c in enumerate(D.CIFAR10_CLASSES)}
    info = D.dataset_info("cifar10")
    assert info.mean == D.CIFAR10_MEAN and info.std == D.CIFAR10_STD
    assert D.dataset_info("imagefolder").mean == D.IMAGENET_MEAN
    # evaluation reads ROOT/test when there is no ROOT/val
    test = D.build_dataset("cifar10", "test", root)
    assert len(test) == 10 and "/test/" in test.base.samples[0][0]


def test_cifar10_folder_missing_a_class_is_named(tmp_path):
    root = make_image_folder(tmp_path / "c", classes=D.CIFAR10_CLASSES[:9], per_class=1)
    with pytest.raises(DataError, match="truck"):
        D.build_dataset("cifar10", "train", root)


def test_val_folder_preferred_over_test(tmp_path):
    root = make_image_folder(tmp_path / "r", per_class=1, splits=("train", "val", "test"))
    assert "/val/" in D.build_dataset("imagefolder", "test", root).base.samples[0][0]


def test_tar_archive_single_top_folder_is_root_and_extracted_once(tmp_path, monkeypatch):
    tree = make_cifar_like_folder(tmp_path / "tree", per_class=1)
    tar = make_tar(tree, tmp_path / "cifar10-jpeg.tar.gz", top="cifar10")
    ds = D.build_dataset("cifar10", "train", tar)
    assert len(ds) == 10 and ds.base.classes == list(D.CIFAR10_CLASSES)
    assert str(tmp_path / "cache") in ds.base.root

    def no_reopen(*a, **k):
        raise AssertionError("the archive was extracted a second time")

    monkeypatch.setattr(tarfile, "open", no_reopen)
    assert len(D.build_dataset("cifar10", "test", tar)) == 10


def test_tar_path_traversal_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w") as t:
        t.add(payload, arcname="../escaped.txt")
    with pytest.raises(DataError, match="outside"):
        extract_archive(evil, tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        D.build_dataset("imagefolder", "train", tmp_path / "nowhere")


def test_empty_folder_and_missing_split_are_named(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        D.build_dataset("imagefolder", "train", tmp_path / "empty")
    (tmp_path / "noimg" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in"):
        D.build_dataset("imagefolder", "train", tmp_path / "noimg")
    (tmp_path / "flat" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no train folder"):
        D.build_dataset("imagefolder", "train", tmp_path / "flat")


def test_unreadable_image_names_the_file(tmp_path):
    root = make_image_folder(tmp_path / "r", per_class=1)
    bad = write_unreadable_image(root / "train" / "a" / "broken.jpg")
    ds = D.build_dataset("imagefolder", "train", root)
    i = [p for p, _ in ds.base.samples].index(str(bad))
    with pytest.raises(DataError, match="broken.jpg"):
        ds[i]


def test_failed_download_says_which_dataset_and_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError) as e:
        D.build_dataset("cifar10", "train", None)
    msg = str(e.value)
    assert "cifar10" in msg and "internet" in msg and "--data_path" in msg


def test_pretrain_samples_depend_only_on_seed_epoch_index():
    base = PhotoCrops(num_images=8, size=48, seed=0)
    ds = D.MAEPretrainDataset(base, D.pretrain_transform(32), num_patches=64, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a_img, a_noise = ds[(2, 5)]
    ds[(2, 6)]  # other samples in between change nothing
    b_img, b_noise = ds[(2, 5)]
    assert torch.equal(a_img, b_img) and torch.equal(a_noise, b_noise)
    assert a_img.shape == (3, 32, 32) and a_noise.shape == (64,)
    # another epoch: another crop and another mask
    c_img, c_noise = ds[(3, 5)]
    assert not torch.equal(a_img, c_img) and not torch.equal(a_noise, c_noise)
    # the global generator is left as it was
    assert torch.equal(torch.get_rng_state(), before)


def test_offline_photos_need_no_files():
    train = D.build_dataset("photos", "train", None, transform=D.eval_transform(32), num_photos=16)
    crops = PhotoCrops(16, size=64, seed=0, split="train")
    img, label = train[5]
    assert img.shape == (3, 32, 32) and label == crops.targets[5]
    assert torch.equal(img, D.eval_transform(32)(crops.images[5]))
    again = D.build_dataset("photos", "train", None, transform=D.eval_transform(32), num_photos=16)
    assert torch.equal(again[3][0], train[3][0])
    test = D.build_dataset("photos", "test", None, num_photos=16)
    assert len(test) == 4 and test.base.split == "test"  # the held-out strip, a quarter as many


def test_resumable_sampler_yields_epoch_keys_and_resumes_mid_epoch():
    ds = list(range(20))
    whole = D.ResumableSampler(ds, seed=7)
    whole.set_position(3)
    keys = list(whole)
    assert len(whole) == 20 and {e for e, _ in keys} == {3} and sorted(i for _, i in keys) == list(range(20))
    resumed = D.ResumableSampler(ds, seed=7)
    resumed.set_position(3, start=8)
    assert list(resumed) == keys[8:] and len(resumed) == 12
    other = D.ResumableSampler(ds, seed=7)
    other.set_position(4)
    assert [i for _, i in other] != [i for _, i in keys]  # a fresh shuffle every epoch
    # two ranks split an epoch into disjoint halves that together are the one-process order
    ranks = [D.ResumableSampler(ds, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for r in ranks:
        r.set_position(3)
    r0, r1 = ([i for _, i in r] for r in ranks)
    assert len(r0) == len(r1) == 10 and [i for pair in zip(r0, r1) for i in pair] == [i for _, i in keys]


@pytest.mark.skipif(not cifar_tar_path().is_file(),
                    reason=f"shared CIFAR-10 archive not found at {cifar_tar_path()} (set MAE_CIFAR10_TAR)")
def test_shared_cifar10_archive(monkeypatch):
    monkeypatch.delenv("MAE_DATA_CACHE")  # extract once into the user cache, not per test
    ds = D.build_dataset("cifar10", "test", cifar_tar_path())
    assert len(ds) == 10_000 and ds.base.classes == list(D.CIFAR10_CLASSES)
    img, label = ds[0]
    assert img.size == (32, 32) and label == 0


def _extract_in_a_child(args):
    return str(extract_archive(*args))


@pytest.mark.slow
def test_two_processes_extracting_one_archive_both_get_it_whole(tmp_path):
    import multiprocessing
    root = make_image_folder(tmp_path / "src", per_class=20, size=32)
    tar = make_tar(root, tmp_path / "data.tar.gz", "top")
    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_extract_in_a_child, [(tar, cache), (tar, cache)])
    assert a == b
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    got = sorted(p.relative_to(Path(a) / "top").as_posix() for p in Path(a).rglob("*.png"))
    assert got == expected and len(got) == 2 * 3 * 20
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")], "a private folder was left behind"


def test_a_half_extracted_folder_is_extracted_again(tmp_path):
    root = make_image_folder(tmp_path / "src", per_class=2, size=32)
    tar = make_tar(root, tmp_path / "data.tar.gz", "top")
    dest = extract_archive(tar, tmp_path / "cache")
    (dest / ".extracted").unlink()  # as if the extraction had been cut short
    for p in list(dest.rglob("*.png"))[:2]:
        p.unlink()
    again = extract_archive(tar, tmp_path / "cache")
    assert again == dest and (dest / ".extracted").is_file()
    assert len(list(dest.rglob("*.png"))) == len(list(root.rglob("*.png")))
