"""Data-loader workers started by ``spawn`` (the default on macOS and Windows).

Such workers receive the data set and its transforms by pickling, so every one
of them must be a module-level class: a class defined inside a function, a
lambda or a closure fails with "Can't pickle local object".
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from _engine_helpers import cifar_tar_path, make_cifar_like_folder, make_image_folder, make_tar
from mae_from_scratch import data as D
from mae_from_scratch.photos import PhotoCrops


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))


def _dataset(kind: str, tmp_path):
    """A small labelled data set of ``kind``, items ``(tensor (3, 32, 32), label)``."""
    info = D.dataset_info("cifar10" if kind == "cifar10" else "imagefolder")
    t = D.eval_transform(32, info.mean, info.std)
    if kind == "imagefolder":
        return D.build_dataset("imagefolder", "train", make_image_folder(tmp_path / "f", per_class=2), t)
    if kind == "tar":
        tree = make_image_folder(tmp_path / "tree", per_class=2)
        return D.build_dataset("imagefolder", "train", make_tar(tree, tmp_path / "f.tar.gz", top="f"), t)
    if kind == "cifar10":
        return D.build_dataset("cifar10", "train", make_cifar_like_folder(tmp_path / "c", per_class=1), t)
    raise ValueError(kind)


KINDS = ("imagefolder", "tar", "cifar10")


@pytest.mark.parametrize("kind", KINDS)
def test_data_sets_and_transforms_survive_pickling(kind, tmp_path):
    ds = _dataset(kind, tmp_path)
    pretrain = D.MAEPretrainDataset(ds.base, D.pretrain_transform(32), num_patches=64, seed=1)  # PIL items
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[3][0], ds[3][0]) and copy[3][1] == ds[3][1]
    copy = pickle.loads(pickle.dumps(pretrain))
    assert all(torch.equal(a, b) for a, b in zip(copy[(1, 3)], pretrain[(1, 3)]))


def _spawn_loader(ds):
    return DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_spawned_workers_read_every_kind_of_data_set(kind, tmp_path):
    ds = _dataset(kind, tmp_path)
    batches = list(_spawn_loader(ds))
    imgs = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert imgs.shape == (len(ds), 3, 32, 32)
    assert torch.equal(imgs[3], ds[3][0]) and labels.tolist() == [ds[i][1] for i in range(len(ds))]


@pytest.mark.slow
@pytest.mark.skipif(not cifar_tar_path().is_file(),
                    reason=f"shared CIFAR-10 archive not found at {cifar_tar_path()} (set MAE_CIFAR10_TAR)")
def test_spawned_workers_read_the_shared_cifar10_archive(monkeypatch):
    monkeypatch.delenv("MAE_DATA_CACHE")  # extract once into the user cache, not per test
    info = D.dataset_info("cifar10")
    ds = D.build_dataset("cifar10", "test", cifar_tar_path(), D.eval_transform(32, info.mean, info.std))
    part = Subset(ds, range(16))
    batches = list(_spawn_loader(part))
    assert torch.cat([b[0] for b in batches]).shape == (16, 3, 32, 32)
    assert torch.cat([b[1] for b in batches]).tolist() == [ds[i][1] for i in range(16)]


@pytest.mark.slow
def test_spawned_workers_feed_the_pretraining_sampler():
    base = PhotoCrops(num_images=8, size=48, seed=0)
    ds = D.MAEPretrainDataset(base, D.pretrain_transform(32), num_patches=64, seed=3)
    sampler = D.ResumableSampler(ds, seed=3)
    sampler.set_position(2, start=2)
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2, multiprocessing_context="spawn")
    got = torch.cat([noise for _, noise in loader])
    # what the main process computes for the same keys: per-sample randomness crosses processes intact
    expected = torch.stack([ds[key][1] for key in sampler])
    assert got.shape == (6, 64) and torch.equal(got, expected)


_SPAWN_PRETRAIN = textwrap.dedent("""
    import multiprocessing, sys
    from mae_from_scratch.pretrain import pretrain

    if __name__ == "__main__":
        multiprocessing.set_start_method("spawn")
        out, extra = sys.argv[1], sys.argv[2:]
        result = pretrain(argv=["--preset", "cpu_smoke", "--num_photos", "16", "--max_images", "16",
                                "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "1", "--max_steps", "2",
                                "--num_workers", "2", "--no_progress", "--output_dir", out, *extra])
        print("finished at checkpoint", result.checkpoint, flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("data", ["photos", "imagefolder tar"])
def test_pretrain_with_spawned_loader_workers(data, tmp_path):
    script = tmp_path / "spawn_pretrain.py"
    script.write_text(_SPAWN_PRETRAIN)
    extra = []
    if data == "imagefolder tar":
        tree = make_image_folder(tmp_path / "tree", per_class=6)
        extra = ["--dataset", "imagefolder", "--data_path", str(make_tar(tree, tmp_path / "d.tar.gz", top="d"))]
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(script), str(out), *extra], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "stopped at --max_steps" in r.stdout and "finished at checkpoint" in r.stdout
    assert (out / "checkpoint-last.pth").is_file()
