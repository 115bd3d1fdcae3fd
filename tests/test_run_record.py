"""run.json, the reconstruction pictures of --recon_every, and where the live cells find CIFAR-10."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mae_from_scratch import data as D
from mae_from_scratch.model import create_model
from mae_from_scratch.pretrain import pretrain
from mae_from_scratch.run_record import RUN_RECORD, file_sha256, git_commit, hardware
from mae_from_scratch.snapshots import fixed_noise, heldout_images, mask_ratio_rows, reconstruction_rows

TINY = dict(preset="cpu_smoke", epochs=2, max_images=128, batch_size=32, no_progress=True)


def test_run_json_and_pictures(tmp_path):
    out = tmp_path / "run"
    pretrain(output_dir=str(out), recon_every=1, recon_images=4, **TINY)
    rec = json.loads((out / RUN_RECORD).read_text())
    assert rec["finished"] is True and rec["epochs_run"] == rec["epochs_scheduled"] == 2
    assert rec["command"].startswith("pretrain(") and "recon_every=1" in rec["command"]
    assert rec["hardware"]["torch"] == torch.__version__ and rec["hardware"]["cpu_cores"] >= 1
    assert rec["segments"][0]["images"] == 2 * (128 // 32) * 32
    assert rec["wall_s"] > 0 and rec["images_per_s"] > 0
    pngs = sorted(p.name for p in (out / "recon").glob("*.png"))
    assert pngs == ["epoch-0000.png", "epoch-0001.png", "epoch-0002.png"]
    img = np.asarray(Image.open(out / "recon" / "epoch-0002.png"))
    # 4 rows x 4 pictures of 32 px with 1-pixel gaps around each
    assert img.shape[:2] == (4 * 33 + 1, 4 * 33 + 1)
    # The untrained and the trained model draw different reconstructions of the same images.
    first = np.asarray(Image.open(out / "recon" / "epoch-0000.png"))
    assert not np.array_equal(first[2 * 33:], img[2 * 33:])
    assert np.array_equal(first[:33], img[:33])  # the originals are the same images


def test_resume_adds_a_segment_and_overwrite_clears_pictures(tmp_path):
    out = tmp_path / "run"
    pretrain(output_dir=str(out), recon_every=1, recon_images=2, max_steps=5, **TINY)
    rec = json.loads((out / RUN_RECORD).read_text())
    assert rec["finished"] is False and rec["epochs_run"] == 1
    pretrain(output_dir=str(out), recon_every=1, recon_images=2, auto_resume=True, **TINY)
    rec = json.loads((out / RUN_RECORD).read_text())
    assert rec["finished"] is True and rec["epochs_run"] == 2 and len(rec["segments"]) == 2
    assert sum(s["images"] for s in rec["segments"]) == 8 * 32
    pretrain(output_dir=str(out), overwrite=True, **TINY)  # no pictures asked for this time
    assert not list((out / "recon").glob("*.png"))
    assert len(json.loads((out / RUN_RECORD).read_text())["segments"]) == 1


def test_pictures_use_the_visible_statistics_only():
    """The reconstruction row does not depend on the pixels of the hidden patches' own stats."""
    torch.manual_seed(0)
    model = create_model("mae_vit_micro_patch4_32", norm_pix_loss=True).eval()
    imgs, labels, names = heldout_images("photos", None, 3, 32, D.IMAGENET_MEAN, D.IMAGENET_STD, num_photos=64)
    assert imgs.shape == (3, 3, 32, 32) and len(labels) == len(names) == 3
    noise = fixed_noise(3, 64)
    rows = reconstruction_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, 0.75, noise)
    assert rows.shape == (4, 3, 3, 32, 32) and rows.min() >= 0 and rows.max() <= 1
    assert torch.equal(rows, reconstruction_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, 0.75, noise))
    ratios = mask_ratio_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, (0.5, 0.9))
    assert ratios.shape == (4, 3, 3, 32, 32)


def test_hardware_commit_and_hash(tmp_path):
    hw = hardware("cpu")
    assert hw["summary"].startswith("CPU only (") and "gpu" not in hw
    commit = git_commit()
    assert commit is None or len(commit.split("+")[0]) == 40
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_locate_cifar10_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MAE_CIFAR10_TAR", raising=False)
    # Nothing here, no download: the photo crops, and it says so.
    choice = D.locate_cifar10(download=False, search_from=tmp_path)
    assert choice.dataset == "photos" and "no CIFAR-10" in choice.source
    # A shared archive in a parent folder is found.
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "cifar10-jpeg.tar.gz").write_bytes(b"x")
    deep = tmp_path / "repo" / "notebooks"
    deep.mkdir(parents=True)
    choice = D.locate_cifar10(download=False, search_from=deep)
    assert choice.dataset == "cifar10" and choice.data_path == str(shared / "cifar10-jpeg.tar.gz")
    # The environment variable wins.
    other = tmp_path / "mine.tar.gz"
    other.write_bytes(b"x")
    monkeypatch.setenv("MAE_CIFAR10_TAR", str(other))
    choice = D.locate_cifar10(download=False, search_from=deep)
    assert choice.data_path == str(other) and "MAE_CIFAR10_TAR" in choice.source


def test_recon_flags_are_checked(tmp_path):
    from mae_from_scratch.cli_checks import InputError

    with pytest.raises(InputError, match="recon_every"):
        pretrain(output_dir=str(tmp_path / "a"), recon_every=-1, **TINY)
    with pytest.raises(InputError, match="recon_images"):
        pretrain(output_dir=str(tmp_path / "b"), recon_images=0, **TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
