"""kNN, linear probe and the evaluation command on small real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _engine_helpers import cifar_tar_path, make_image_folder
from mae_from_scratch import data as D
from mae_from_scratch import evaluate as E
from mae_from_scratch.engine import train_steps
from mae_from_scratch.features import block_features, extract_features, load_encoder
from mae_from_scratch.finetune import finetune
from mae_from_scratch.knn import knn_accuracy, knn_evaluation, knn_predict
from mae_from_scratch.linear_probe import linear_probe, linear_probe_evaluation
from mae_from_scratch.model import MaskedAutoencoderViT, mae_vit_micro_patch4_32
from mae_from_scratch.photos import normalize, photo_crops
from mae_from_scratch.validation import _key, choose_on_val, default_val_images, split_train_val


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
    assert knn_predict(train, labels, q, k=3, temperature=0.01).item() == 1
    assert knn_predict(train, labels, q, k=3, temperature=100.0).item() == 0


@pytest.mark.slow
def test_knn_and_linear_probe_separate_clusters():
    xtr, ytr = _clusters(seed=0)
    xte, yte = _clusters(seed=0, n_per_class=10)  # same centres, fresh noise below
    xte = xte + 0.3 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(1))
    assert knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    acc, probe = linear_probe(xtr, ytr, xte, yte, epochs=30, batch_size=32, return_probe=True)
    assert acc == 1.0
    assert isinstance(probe.bn, torch.nn.BatchNorm1d) and not probe.bn.affine  # the paper's probe


def _one_hot_features(n_per_class, classes=10, seed=0, noise=0.1):
    """Features that *are* the labels: a noisy one-hot code of each sample's class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    y = y[torch.randperm(len(y), generator=g)]
    return torch.eye(classes)[y] + noise * torch.rand(len(y), classes, generator=g), y


def test_knn_is_perfect_on_label_features_and_chance_on_shuffled_labels():
    xtr, ytr = _one_hot_features(50, seed=0)
    xte, yte = _one_hot_features(30, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte) == 1.0
    # The same features with the training labels shuffled carry no information: 10 classes,
    # so chance is 0.1.  Over shuffle seeds 0-19 the accuracy was 0.01-0.19 (mean 0.096).
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(2))]
    assert knn_accuracy(xtr, shuffled, xte, yte) < 0.25


@pytest.mark.slow
def test_linear_probe_needs_a_linear_boundary():
    # Two classes split by a hyperplane through 8-D Gaussian data: the probe must find it
    # (every point is at least 0.5 from the boundary; 1.0 for data and probe seeds 0-9).  XOR
    # of two signs is not linearly separable, so the same probe stays near chance, 0.5, there
    # (0.42-0.64 over seeds 0-9).
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, generator=g)
    x = torch.randn(600, 8, generator=g)
    x = x[(x @ w).abs() / w.norm() > 0.5]
    y = (x @ w > 0).long()
    xtr, ytr, xte, yte = x[:300], y[:300], x[300:], y[300:]
    assert linear_probe(xtr, ytr, xte, yte, epochs=30, batch_size=64) == 1.0
    xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    assert linear_probe(xtr, xor[:300], xte, xor[300:], epochs=30, batch_size=64) < 0.75


def _folder_features(model, folder, pool, mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD):
    t = D.eval_transform(32, mean, std)
    out = []
    for split in ("train", "test"):
        ds = D.build_dataset("imagefolder", split, folder, transform=t)
        batch = (torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))]))
        out.extend(extract_features(model, [batch], pool=pool))
    return out


def _knn_on_folder(model, folder, k, pool, **stats):
    return knn_accuracy(*_folder_features(model, folder, pool, **stats), k=k)


def _photo_split(split, n=1024):
    ds = D.build_dataset("photos", split, transform=D.eval_transform(32), num_photos=n, photo_size=32)
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])


@pytest.mark.slow
def test_pretraining_makes_knn_features_better_than_random_ones():
    # "Which photograph is this crop from?" (9 classes) on held-out crops (the test strip of
    # each photo, disjoint from the training crops).  A random ViT's mean-pooled features
    # already get about half right (colour survives random layers), so the test compares the
    # same encoder before and after a short MAE pretraining on other training crops.
    # Measured with this recipe, seeds 0-4: random 0.48-0.53, pretrained 0.57-0.62, the
    # gain +0.06 to +0.14 (+0.14 for seed 0).  The bar is +0.03.
    (xtr, ytr), (xte, yte) = _photo_split("train"), _photo_split("test")
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)

    def knn():
        ftr, _ = extract_features(model, [(xtr, ytr)], pool="mean")
        fte, _ = extract_features(model, [(xte, yte)], pool="mean")
        return knn_accuracy(ftr, ytr, fte, yte)

    random_acc = knn()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_steps(model, normalize(photo_crops(512, 32, seed=0)), steps=400, lr=2e-3, batch_size=64, seed=0)
    finally:
        torch.set_num_threads(n)
    pretrained_acc = knn()
    assert pretrained_acc >= random_acc + 0.03, (random_acc, pretrained_acc)


@pytest.mark.slow
def test_finetune_learns_a_spatial_task():
    # Three classes that differ only in which half of the image is brighter (left, right,
    # top), under random noise; chance is 1/3.  Training encoder and head end to end must
    # learn them; a head or optimizer that never reaches the weights stays near chance.
    # Seeds 0-4 of this recipe: 1.0, 1.0, 1.0, 1.0, 0.96.
    g = torch.Generator().manual_seed(0)

    def images(n):
        y = torch.arange(3).repeat(n)
        x = torch.randn(len(y), 3, 32, 32, generator=g) * 0.5
        x[y == 0, :, :, :16] += 1.5
        x[y == 1, :, :, 16:] += 1.5
        x[y == 2, :, :16, :] += 1.5
        return list(zip(x.split(16), y.split(16)))

    torch.manual_seed(0)
    train, test = images(16), images(8)
    acc = finetune(mae_vit_micro_patch4_32(), train, test, num_classes=3, epochs=5, blr=1e-3, warmup_epochs=1)
    assert acc >= 0.9


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


@pytest.mark.slow
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
    loaded = load_encoder(str(tmp_path / "official.pth")).model  # the architecture is inferred from shapes
    assert loaded.config == model.config and torch.equal(loaded.blocks[0].attn.qkv.weight,
                                                         model.blocks[0].attn.qkv.weight)
    # the command's number is the kNN of this encoder on folder/train vs folder/test, ImageNet statistics
    assert res["accuracy"] == _knn_on_folder(model, folder, k=3, pool="cls")

    args.mode, args.epochs, args.checkpoint = "finetune", 1, "random"
    args.model, args.batch_size, args.val_images = "mae_vit_micro_patch4_32", 8, 6
    tuned = E.evaluate(args)
    assert tuned["source"] == "random" and tuned["epochs"] == 1 and tuned["test_images"] == 24
    # 6 of the 24 training images are held out and scored after the epoch; the 18 others are trained on
    assert tuned["train_images"] == 18 and tuned["val_images"] == 6 and len(tuned["val_accuracy"]) == 1
    assert tuned["layer_decay"] == 1.0  # the from-scratch baseline: no layer decay, as the paper trains it
    assert tuned["tuned"] is False and tuned["drop_path"] == 0.1 and tuned["smoothing"] == 0.1

    for pool in ("cls", "mean"):
        f, y = extract_features(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], pool=pool)
        assert f.shape == (2, 96) and y.tolist() == [0, 1]


@pytest.mark.slow
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
    assert lin["mode"] == "linprobe"
    # The command's numbers are those of the checkpoint's encoder, under the statistics stored in it
    # (the offline photos: ImageNet's), on folder/train vs folder/test.
    enc = load_encoder(ck)
    assert enc.model.config == res.model.config and enc.mean == D.IMAGENET_MEAN
    assert knn["accuracy"] == _knn_on_folder(enc.model, folder, k=20, pool="mean")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command ran
    try:
        assert lin["accuracy"] == linear_probe(*_folder_features(enc.model, folder, "cls"), epochs=5)
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.skipif(not cifar_tar_path().is_file(),
                    reason=f"shared CIFAR-10 archive not found at {cifar_tar_path()} (set MAE_CIFAR10_TAR)")
def test_knn_on_a_real_cifar10_subset_beats_chance():
    # Even a random ViT's features keep colour and layout, which beats the 10% of guessing;
    # this checks the whole path (archive, class order, statistics, features, vote).
    res = _run("knn", "--checkpoint", "random", "--model", "mae_vit_micro_patch4_32", "--dataset", "cifar10",
               "--data_path", str(cifar_tar_path()), "--max_train", "1000", "--max_test", "300")
    assert res["dataset"] == "cifar10" and res["train_images"] == 1000 and res["test_images"] == 300
    assert res["accuracy"] > 0.15


# ---------------------------------------------------------------------------------- honest evaluation
def test_val_split_is_disjoint_complete_and_seeded():
    tr, va = split_train_val(1000, val_images=150, seed=0)
    assert len(va) == 150 and len(tr) == 850 and not set(tr) & set(va) and sorted(tr + va) == list(range(1000))
    assert split_train_val(1000, 150, seed=0) == (tr, va)  # the same split every time
    assert split_train_val(1000, 150, seed=1)[1] != va
    assert va != list(range(150)) and va != list(range(850, 1000))  # a random draw, not a block
    assert split_train_val(10, 0) == (list(range(10)), [])
    with pytest.raises(ValueError, match="val_images=10 leaves nothing to train on"):
        split_train_val(10, 10)


def _noisy_clusters(seed):
    # Overlapping classes with a fifth of the labels flipped: a larger k averages the noise away,
    # so the choice of k matters.
    x, y = _clusters(n_per_class=60, dim=8, classes=4, seed=0, spread=2.0)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < 0.2
    y = torch.where(flip, torch.randint(0, 4, y.shape, generator=g), y)
    return x + 0.1 * torch.randn(x.shape, generator=g), y


@pytest.mark.slow
def test_tuning_chooses_the_best_val_candidate_and_never_the_test_labels():
    xtr, ytr = _noisy_clusters(seed=1)
    xte, yte = _noisy_clusters(seed=2)
    shuffled = yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(3))]
    for evaluation, key in ((knn_evaluation, "k"),
                            (lambda *a, **kw: linear_probe_evaluation(*a, epochs=5, batch_size=32, **kw), "blr")):
        # 120 held out: on 60 every k scores 0.8 and nothing is chosen (see validation._tune_on_val)
        res = evaluation(xtr, ytr, xte, yte, num_classes=4, tune=True, val_images=120, seed=0)
        scores = res["val_accuracy"]
        assert res["tuned"] is True and res["val_images"] == 120 and len(scores) == 3
        best = max(scores.values())
        assert _key(res[key]) == next(c for c, a in scores.items() if a == best)  # first of the best
        again = evaluation(xtr, ytr, xte, shuffled, num_classes=4, tune=True, val_images=120, seed=0)
        assert again[key] == res[key] and again["val_accuracy"] == scores  # test labels play no part
    # untuned: the given value, nothing held out
    plain = knn_evaluation(xtr, ytr, xte, yte, k=7, num_classes=4)
    assert plain == {"tuned": False, "k": 7, "temperature": 0.07,
                     "accuracy": knn_accuracy(xtr, ytr, xte, yte, k=7, num_classes=4)}


def test_choose_on_val_breaks_ties_by_order():
    assert choose_on_val([50, 10, 20], {10: 0.5, 20: 0.7, 50: 0.7}.get) == (50, {50: 0.7, 10: 0.5, 20: 0.7})


def test_knn_command_with_tune_reports_val_and_test_once(folder):
    args = E.get_args_parser().parse_args(
        ["knn", "--checkpoint", "random", "--model", "mae_vit_micro_patch4_32", "--data_path", str(folder),
         "--dataset", "imagefolder", "--num_workers", "0", "--device", "cpu", "--no_progress", "--tune",
         "--val_images", "6", "--k", "3"])
    res = E.evaluate(args)
    assert set(res["val_accuracy"]) == {"10", "20", "50"} and res["val_images"] == 6 and res["train_images"] == 24
    # Six held-out images of a random encoder's features: every k scores 5/6 (measured), so the split
    # chose nothing, and the given k is used with all 24 training images as neighbours.
    assert list(res["val_accuracy"].values()) == [pytest.approx(5 / 6)] * 3
    assert res["tuned"] is False and res["k"] == 3 and "cannot tell them apart; the fixed k 3 was used" in (
        res["why_not_tuned"])
    torch.manual_seed(0)
    model = load_encoder("random", "mae_vit_micro_patch4_32").model
    assert res["accuracy"] == _knn_on_folder(model, folder, k=3, pool="cls")
    args.tune = False
    plain = E.evaluate(args)
    assert plain["tuned"] is False and "val_accuracy" not in plain and "why_not_tuned" not in plain


# ---------------------------------------------------------------------------------- defaults that fit the data
def test_default_val_images_is_a_fifth_of_the_training_split_at_most_5000():
    sizes = [0, 1, 2, 9, 10, 24, 4096, 25_000, 50_000, 100_000]
    assert [default_val_images(n) for n in sizes] == [0, 0, 1, 1, 2, 4, 819, 5000, 5000, 5000]
    for n in sizes[2:]:
        tr, va = split_train_val(n, default_val_images(n))
        assert tr and va  # something to train on and something to choose on
    with pytest.raises(ValueError, match="n must be a whole number >= 0, got -1"):
        default_val_images(-1)


@pytest.fixture(scope="module")
def cached_photo_crops():
    """``PhotoCrops`` built once per argument set: the no-flag runs below all read the
    default data (4096 training crops of the offline photos), which takes seconds to make."""
    real, made = D.PhotoCrops, {}

    def photo_crops_once(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = real(*args, **kwargs)
        return made[key]

    return photo_crops_once


@pytest.fixture
def default_data(monkeypatch, cached_photo_crops):
    # No CIFAR-10 archive: the commands must fall back to the offline photos, as on a machine without one.
    monkeypatch.delenv("MAE_CIFAR10_TAR", raising=False)
    monkeypatch.setattr(D, "PhotoCrops", cached_photo_crops)


def _no_flags(mode, capsys, *extra):
    """``python -m mae_from_scratch.evaluate MODE`` with no flags but quiet, single-process ones."""
    rc = E.main([mode, *extra, "--no_progress", "--num_workers", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


@pytest.mark.slow
def test_knn_tune_with_no_flags_holds_out_a_fifth_of_the_default_data(default_data, monkeypatch, capsys):
    # The features of a random tiny ViT on 5120 images take minutes on a CPU; what is checked here is
    # which images the command reads and holds out, so the features are the labels plus noise.
    seen = []

    def label_features(model, loader, *args, **kwargs):
        labels = torch.tensor(loader.dataset.base.targets)
        seen.append((type(loader.dataset.base).__name__, len(loader.dataset)))
        g = torch.Generator().manual_seed(len(labels))
        return torch.nn.functional.one_hot(labels, 9).float() + 0.3 * torch.randn(len(labels), 9, generator=g), labels

    monkeypatch.setattr(E, "extract_features", label_features)  # the name evaluate() calls
    res, printed = _no_flags("knn", capsys, "--tune")
    assert seen == [("PhotoCrops", 4096), ("PhotoCrops", 1024)]  # the offline photos, train then test
    assert res["dataset"] == "photos" and res["train_images"] == 4096 and res["test_images"] == 1024
    assert res["tuned"] is True and res["val_images"] == 819 and set(res["val_accuracy"]) == {"10", "20", "50"}
    assert printed == ["validation split: 819 of the 4096 training images held out (1/5, at most 5000; "
                       "--val_images N sets the number, 0 holds out none)"]
    assert res["accuracy"] > 0.9  # features that are the labels: the chosen k classifies the test split


@pytest.mark.slow
def test_finetune_with_no_flags_trains_on_the_rest_of_the_default_data(default_data, monkeypatch, capsys):
    # Ten epochs of a tiny ViT on 3277 images take long on a CPU; the split handed to the
    # training loop is what is checked, with the loop replaced by one that records it.
    calls = []

    def record(model, train_loader, test_loader, num_classes, epochs, val_loader=None, **kwargs):
        calls.append((train_loader.dataset, val_loader.dataset, len(test_loader.dataset), num_classes, epochs))
        return {"accuracy": 0.5, "val_accuracy": [0.5] * epochs, "epochs": epochs}

    monkeypatch.setattr(E, "finetune", record)  # the name evaluate() calls
    res, printed = _no_flags("finetune", capsys)
    (fit, val, test_images, num_classes, epochs), = calls
    assert (len(fit), len(val), test_images, num_classes, epochs) == (3277, 819, 1024, 9, 10)
    assert sorted(fit.indices + val.indices) == list(range(4096))  # disjoint, and every image is used
    assert res["dataset"] == "photos" and res["train_images"] == 3277 and res["val_images"] == 819
    assert printed == ["validation split: 819 of the 4096 training images held out (1/5, at most 5000; "
                       "--val_images N sets the number, 0 holds out none)"]


@pytest.mark.slow
def test_explicit_val_images_too_large_for_the_default_data_is_refused(default_data, capsys):
    cases = [(["finetune", "--val_images", "5000"], "--val_images 5000 leaves nothing to train on: the training split "
              "has 4096 images; use at most 4095, or --val_images 0 to hold out none"),
             (["knn", "--tune", "--val_images", "4096"], "--val_images 4096 leaves nothing to train on: the training "
              "split has 4096 images; use at most 4095, or --val_images 0 to hold out none"),
             # no default helps here: one image cannot be split in two
             (["knn", "--tune", "--max_train", "1"], "--tune needs at least 2 training images, one to hold out and "
              "one to train on: the training split has 1 (after --max_train)")]
    for argv, message in cases:
        rc = E.main(argv + ["--no_progress", "--num_workers", "0", "--device", "cpu"])
        out, err = capsys.readouterr()
        assert rc == 1 and err.strip().splitlines() == [f"error: {message}"] and "validation split" not in out


def test_finetune_without_val_images_on_a_small_folder_holds_out_a_fifth(folder, capsys):
    # The whole command, training included: 24 training images, 4 held out and scored after the epoch.
    res, printed = _no_flags("finetune", capsys, "--checkpoint", "random", "--model", "mae_vit_micro_patch4_32",
                             "--dataset", "imagefolder", "--data_path", str(folder), "--epochs", "1",
                             "--batch_size", "8")
    assert res["train_images"] == 20 and res["val_images"] == 4 and len(res["val_accuracy"]) == 1
    assert printed == ["validation split: 4 of the 24 training images held out (1/5, at most 5000; "
                       "--val_images N sets the number, 0 holds out none)",
                       f"finetune epoch 1/1: validation accuracy {res['val_accuracy'][0]:.4f}"]


def test_block_features_are_each_blocks_output_pooled():
    """Block k's tokens as they leave it: block 1 recomputed by hand, and the last block's
    cls token, through the final norm, is forward_features' cls feature."""
    torch.manual_seed(0)
    m = mae_vit_micro_patch4_32().eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = {pool: block_features(m, x, pool) for pool in ("cls", "mean")}
        assert feats["mean"].shape == feats["cls"].shape == (len(m.blocks), 3, 96)
        tokens = torch.cat([(m.cls_token + m.pos_embed[:, :1]).expand(3, -1, -1),
                            m.patch_embed(x) + m.pos_embed[:, 1:]], dim=1)
        first = m.blocks[0](tokens)
        torch.testing.assert_close(feats["cls"][0], first[:, 0])
        torch.testing.assert_close(feats["mean"][0], first[:, 1:].mean(dim=1))
        torch.testing.assert_close(m.norm(feats["cls"][-1]), m.forward_features(x, pool="cls"))
    assert not torch.allclose(feats["mean"][0], feats["mean"][-1])
    with pytest.raises(ValueError, match="pool must be"):
        block_features(m, x, "none")
