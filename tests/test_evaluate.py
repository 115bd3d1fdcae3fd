"""kNN, linear probe and the evaluation command on small real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _engine_helpers import cifar_tar_path, make_image_folder
from mae_from_scratch import evaluate as E
from mae_from_scratch.checkpoint import save_atomic
from mae_from_scratch.model import mae_vit_micro_patch4_32


def _clusters(n_per_class=30, dim=16, classes=4, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_knn_votes_are_similarity_weighted():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # The query is closest to the class-1 point; k=3 with two class-0 points:
    # a sharp temperature lets the single nearest neighbour win, a flat one lets the majority win.
    q = torch.tensor([[0.2, 1.0]])
    assert E.knn_predict(train, labels, q, k=3, temperature=0.01).item() == 1
    assert E.knn_predict(train, labels, q, k=3, temperature=100.0).item() == 0


def test_knn_and_linear_probe_separate_clusters():
    xtr, ytr = _clusters(seed=0)
    xte, yte = _clusters(seed=0, n_per_class=10)  # same centres, fresh noise below
    xte = xte + 0.3 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(1))
    assert E.knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    acc, probe = E.linear_probe(xtr, ytr, xte, yte, epochs=30, batch_size=32, return_probe=True)
    assert acc == 1.0
    assert isinstance(probe.bn, torch.nn.BatchNorm1d) and not probe.bn.affine  # the paper's probe
    # and on shuffled labels neither can do better than chance by much
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(2))
    assert E.knn_accuracy(xtr, ytr[perm], xte, yte, k=5) < 0.6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return make_image_folder(root / "data", classes=("a", "b", "c"), per_class=8)


def _run(*argv):
    r = subprocess.run([sys.executable, "-m", "mae_from_scratch.evaluate", *argv, "--no_progress",
                        "--num_workers", "0", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_evaluate_in_process_on_our_and_official_checkpoints(tmp_path, folder):
    torch.manual_seed(0)
    model = mae_vit_micro_patch4_32()
    # an official-style encoder-only file: {'model': encoder state dict}, no config
    enc = {k: v for k, v in model.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    torch.save({"model": enc}, tmp_path / "official.pth")
    args = E.get_args_parser().parse_args(
        ["knn", "--checkpoint", str(tmp_path / "official.pth"), "--data_path", str(folder), "--dataset",
         "imagefolder", "--num_workers", "0", "--device", "cpu", "--no_progress", "--k", "3"])
    res = E.evaluate(args)
    assert res["source"] == "official" and res["train_images"] == 24 and res["test_images"] == 24
    assert 0.0 <= res["accuracy"] <= 1.0
    loaded = E.load_encoder(str(tmp_path / "official.pth")).model  # the architecture is inferred from shapes
    assert loaded.config == model.config and torch.equal(loaded.blocks[0].attn.qkv.weight,
                                                         model.blocks[0].attn.qkv.weight)

    args.mode, args.epochs, args.checkpoint = "finetune", 1, "random"
    args.model, args.batch_size = "mae_vit_micro_patch4_32", 8
    tuned = E.evaluate(args)
    assert tuned["source"] == "random" and tuned["epochs"] == 1 and 0.0 <= tuned["accuracy"] <= 1.0

    for pool in ("cls", "mean"):
        f, y = E.extract_features(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], pool=pool)
        assert f.shape == (2, 96) and y.tolist() == [0, 1]


def test_evaluate_cli_knn_and_linprobe_on_a_pretrained_checkpoint(tmp_path, folder):
    from mae_from_scratch.pretrain import pretrain

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = pretrain(preset="cpu_smoke", num_photos=64, max_images=64, batch_size=16, epochs=1,
                       warmup_epochs=1, no_progress=True, output_dir=str(tmp_path / "run"))
    finally:
        torch.set_num_threads(n)
    ck = str(res.checkpoint)
    knn = _run("knn", "--checkpoint", ck, "--data_path", str(folder), "--dataset", "imagefolder", "--pool", "mean")
    assert knn["source"] == "ours" and knn["pool"] == "mean" and knn["input_size"] == 32
    lin = _run("linprobe", "--checkpoint", ck, "--data_path", str(folder), "--dataset", "imagefolder",
               "--epochs", "5")
    assert lin["mode"] == "linprobe" and 0.0 <= lin["accuracy"] <= 1.0


@pytest.mark.skipif(not cifar_tar_path().is_file(),
                    reason=f"shared CIFAR-10 archive not found at {cifar_tar_path()} (set MAE_CIFAR10_TAR)")
def test_knn_on_a_real_cifar10_subset_beats_chance():
    # Even a random ViT's features keep colour and layout, which beats the 10% of guessing;
    # this checks the whole path (archive, class order, statistics, features, vote).
    res = _run("knn", "--checkpoint", "random", "--model", "mae_vit_micro_patch4_32", "--dataset", "cifar10",
               "--data_path", str(cifar_tar_path()), "--max_train", "1000", "--max_test", "300")
    assert res["dataset"] == "cifar10" and res["train_images"] == 1000 and res["test_images"] == 300
    assert res["accuracy"] > 0.15
