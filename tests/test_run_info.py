"""run.json (run_info.RunInfo), the pictures of --recon_every, and where the live cells find CIFAR-10."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mae_from_scratch import data as D
from mae_from_scratch.loss import NORM_PIX_EPS
from mae_from_scratch.model import create_model
from mae_from_scratch.patching import patchify, unpatchify
from mae_from_scratch.pretrain import pretrain
from mae_from_scratch.run_info import RUN_INFO, file_sha256, git_commit, hardware
from mae_from_scratch.snapshots import fixed_noise, heldout_images, mask_ratio_rows, reconstruction_rows

TINY = dict(preset="cpu_smoke", epochs=2, max_images=128, batch_size=32, no_progress=True)


@pytest.mark.slow
def test_run_json_and_pictures(tmp_path):
    out = tmp_path / "run"
    pretrain(output_dir=str(out), recon_every=1, recon_images=4, **TINY)
    rec = json.loads((out / RUN_INFO).read_text())
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


@pytest.mark.slow
def test_resume_adds_a_segment_and_overwrite_clears_pictures(tmp_path):
    out = tmp_path / "run"
    pretrain(output_dir=str(out), recon_every=1, recon_images=2, max_steps=5, **TINY)
    rec = json.loads((out / RUN_INFO).read_text())
    assert rec["finished"] is False and rec["epochs_run"] == 1
    pretrain(output_dir=str(out), recon_every=1, recon_images=2, auto_resume=True, **TINY)
    rec = json.loads((out / RUN_INFO).read_text())
    assert rec["finished"] is True and rec["epochs_run"] == 2 and len(rec["segments"]) == 2
    assert sum(s["images"] for s in rec["segments"]) == 8 * 32
    pretrain(output_dir=str(out), overwrite=True, **TINY)  # no pictures asked for this time
    assert not list((out / "recon").glob("*.png"))
    assert len(json.loads((out / RUN_INFO).read_text())["segments"]) == 1


def test_heldout_images_and_the_mask_ratio_rows():
    """The same held-out test images and the same pictures of them, every time."""
    torch.manual_seed(0)
    model = create_model("mae_vit_micro_patch4_32", norm_pix_loss=True).eval()
    imgs, labels, names = heldout_images("photos", None, 3, 32, D.IMAGENET_MEAN, D.IMAGENET_STD, num_photos=64)
    assert imgs.shape == (3, 3, 32, 32) and len(labels) == len(names) == 3
    again = heldout_images("photos", None, 3, 32, D.IMAGENET_MEAN, D.IMAGENET_STD, num_photos=64)
    assert torch.equal(imgs, again[0]) and (labels, names) == again[1:]
    noise = fixed_noise(3, 64)
    rows = reconstruction_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, 0.75, noise)
    assert rows.shape == (4, 3, 3, 32, 32) and rows.min() >= 0 and rows.max() <= 1
    assert torch.equal(rows, reconstruction_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, 0.75, noise))
    ratios = mask_ratio_rows(model, imgs, D.IMAGENET_MEAN, D.IMAGENET_STD, (0.5, 0.9))
    assert ratios.shape == (4, 3, 3, 32, 32)


def test_pictures_use_the_visible_statistics_only():
    """A norm_pix_loss model predicts normalized patches; the snapshot pictures give each hidden
    patch the mean and std of the image's *visible* patches.  Visible patches dark (about 0.225),
    hidden ones bright (about 0.725): the rows must match a hand computation with the visible
    patches' statistics, and the hidden patches of the reconstruction come out dark.  With the
    hidden patches' own statistics (``stats='true'``) they would come out bright; with every
    patch's, in between."""
    torch.manual_seed(0)
    model = create_model("mae_vit_micro_patch4_32", norm_pix_loss=True).eval()
    mean, std, p, n = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 4, 2
    noise = fixed_noise(n, 64, seed=3)
    with torch.no_grad():
        hidden = model(torch.zeros(n, 3, 32, 32), mask_ratio=0.75, noise=noise)[2].bool()  # (n, 64)
    assert hidden.sum(dim=1).tolist() == [48, 48]
    gen = torch.Generator().manual_seed(0)
    pixels = torch.where(hidden[..., None], 0.7 + 0.05 * torch.rand(n, 64, 48, generator=gen),
                         0.2 + 0.05 * torch.rand(n, 64, 48, generator=gen))  # (n, L, p*p*3) in [0, 1]
    imgs = (unpatchify(pixels, p, 3) - 0.5) / 0.25

    rows = reconstruction_rows(model, imgs, mean, std, 0.75, noise)

    # By hand: the model's prediction, de-normalized patch by patch.
    with torch.no_grad():
        _, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    assert torch.equal(mask.bool(), hidden)
    x = patchify(imgs, p)  # the normalized input's patches
    own_mean, own_std = x.mean(dim=-1), (x.var(dim=-1) + NORM_PIX_EPS).sqrt()  # (n, L), var unbiased
    stat_mean, stat_std = own_mean.clone(), own_std.clone()
    for i in range(n):  # a hidden patch: the average over the visible patches of the same image
        stat_mean[i, hidden[i]] = own_mean[i, ~hidden[i]].mean()
        stat_std[i, hidden[i]] = own_std[i, ~hidden[i]].mean()
    recon = pred * stat_std[..., None] + stat_mean[..., None]
    pasted = torch.where(hidden[..., None], recon, x)
    to_pixels = lambda t: (unpatchify(t, p, 3) * 0.25 + 0.5).clamp(0, 1)  # noqa: E731
    torch.testing.assert_close(rows[0], unpatchify(pixels, p, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(rows[2], to_pixels(recon), rtol=0, atol=1e-5)
    torch.testing.assert_close(rows[3], to_pixels(pasted), rtol=0, atol=1e-5)
    # The grey of the masked row, and the reconstruction's hidden patches dark like the visible ones.
    assert torch.equal(patchify(rows[1], p)[hidden], torch.full((n * 48, 48), 0.5))
    recon_hidden = patchify(rows[2], p)[hidden]
    assert abs(recon_hidden.mean().item() - 0.225) < 0.05, recon_hidden.mean()


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
