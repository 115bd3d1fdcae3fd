"""The fine-tuning recipe: layer-wise lr decay, drop path, partial fine-tuning, and the command's flags."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from _engine_helpers import make_image_folder
from mae_from_scratch import evaluate as E
from mae_from_scratch.finetune import Classifier, finetune, finetune_transform, freeze_for_partial_finetune
from mae_from_scratch.model import MaskedAutoencoderViT, mae_vit_micro_patch4_32
from mae_from_scratch.optim import encoder_layer_id, param_groups_layer_decay, set_lr
from mae_from_scratch.validation import _key

MICRO = "mae_vit_micro_patch4_32"


def _classifier(micro_config, classes=3):
    return Classifier(MaskedAutoencoderViT(**micro_config), classes)


def _group_of(groups, param):
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def test_layer_ids_follow_the_paper():
    depth = 12
    assert encoder_layer_id("encoder.patch_embed.proj.weight", depth) == 0
    assert encoder_layer_id("cls_token", depth) == 0 and encoder_layer_id("encoder.pos_embed", depth) == 0
    assert encoder_layer_id("encoder.blocks.0.attn.qkv.weight", depth) == 1
    assert encoder_layer_id("blocks.11.mlp.fc2.bias", depth) == 12
    assert encoder_layer_id("encoder.norm.weight", depth) == 13 and encoder_layer_id("head.weight", depth) == 13


def test_layer_decay_scales_first_and_last_groups(micro_config):
    model = _classifier(micro_config)  # depth 2: layers 0 (embedding), 1-2 (blocks), 3 (norm, head)
    enc = model.encoder
    groups = param_groups_layer_decay(torch.nn.ModuleDict({"encoder": enc, "head": model.head}), 2, 0.05, 0.75)
    assert _group_of(groups, enc.patch_embed.proj.weight)["lr_scale"] == pytest.approx(0.75 ** 3)
    assert _group_of(groups, enc.cls_token)["lr_scale"] == pytest.approx(0.75 ** 3)
    assert _group_of(groups, enc.blocks[0].attn.qkv.weight)["lr_scale"] == pytest.approx(0.75 ** 2)
    assert _group_of(groups, enc.blocks[1].mlp.fc1.weight)["lr_scale"] == pytest.approx(0.75)
    assert _group_of(groups, model.head.weight)["lr_scale"] == 1.0
    assert _group_of(groups, enc.norm.weight)["lr_scale"] == 1.0
    # weight decay on matrices only; none on biases, norms and the cls token; the sin-cos table is not trained
    assert _group_of(groups, model.head.weight)["weight_decay"] == 0.05
    assert _group_of(groups, model.head.bias)["weight_decay"] == 0.0
    assert _group_of(groups, enc.cls_token)["weight_decay"] == 0.0
    assert not any(p is enc.pos_embed for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 2e-3)
    assert _group_of(opt.param_groups, enc.patch_embed.proj.weight)["lr"] == pytest.approx(2e-3 * 0.75 ** 3)
    assert _group_of(opt.param_groups, model.head.weight)["lr"] == pytest.approx(2e-3)
    # layer_decay 1: every group at the full rate
    flat = param_groups_layer_decay(model, 2, 0.05, 1.0)
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_set_drop_path_rises_linearly_and_leaves_the_state_dict_alone(micro_config):
    model = mae_vit_micro_patch4_32()  # depth 4
    keys = list(model.state_dict())
    assert [blk.drop_path.p for blk in model.blocks] == [0.0] * 4  # off by default
    assert model.set_drop_path(0.3) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [blk.drop_path.p for blk in model.decoder_blocks] == [0.0, 0.0]
    assert list(model.state_dict()) == keys
    mae_vit_micro_patch4_32().load_state_dict(model.state_dict(), strict=True)
    imgs = torch.randn(2, 3, 32, 32)
    model.eval()
    a = model.forward_features(imgs)
    model.set_drop_path(0.0)
    torch.testing.assert_close(model.forward_features(imgs), a)  # eval mode: drop path is the identity
    with pytest.raises(ValueError, match=r"drop path rate must be a number in \[0, 1\)"):
        model.set_drop_path(1.0)


def test_partial_finetune_freezes_all_but_the_last_blocks():
    model = mae_vit_micro_patch4_32()

    def trainable():
        return {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
                for n, p in model.named_parameters() if p.requires_grad}

    assert freeze_for_partial_finetune(model, 1) == 1 and trainable() == {"blocks.3", "norm"}
    assert freeze_for_partial_finetune(model, 0) == 0 and trainable() == {"norm"}
    assert freeze_for_partial_finetune(model, None) == 4
    assert trainable() == {"patch_embed", "cls_token", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm"}
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="trainable_blocks must be a whole number from 0 to the encoder's depth 4"):
            freeze_for_partial_finetune(model, bad)


def _images(n, g):
    # two classes: which half of the image is brighter
    y = torch.arange(2).repeat(n)
    x = torch.randn(len(y), 3, 32, 32, generator=g) * 0.5
    x[y == 0, :, :, :16] += 1.5
    x[y == 1, :, :, 16:] += 1.5
    return list(zip(x.split(8), y.split(8)))


def test_finetune_last_block_only_moves_only_it_and_reports_the_recipe():
    g = torch.Generator().manual_seed(0)
    train, val, test = _images(8, g), _images(4, g), _images(4, g)
    torch.manual_seed(0)
    model = mae_vit_micro_patch4_32()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = finetune(model, train, test, num_classes=2, epochs=2, blr=1e-3, trainable_blocks=1, val_loader=val,
                   return_details=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("blocks.3.", "norm.")) for k in changed), changed
    assert len(res["val_accuracy"]) == 2 and 0 <= res["accuracy"] <= 1
    assert res["trainable_blocks"] == 1 and res["layer_decay"] == 0.75 and res["drop_path"] == 0.1
    assert res["smoothing"] == 0.1 and res["epochs"] == 2
    assert res["drop_path_per_block"] == pytest.approx([0.0, 0.0, 0.0, 0.1])  # frozen blocks: none
    head = 96 * 2 + 2
    block = sum(p.numel() for p in model.blocks[3].parameters()) + sum(p.numel() for p in model.norm.parameters())
    assert res["trainable_params"] == head + block
    assert [blk.drop_path.p for blk in model.blocks] == [0.0] * 4  # switched off again afterwards
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        finetune(model, train, test, num_classes=2, layer_decay=0.0)


def _one_finetune_step(micro_config, monkeypatch, layer_decay, lr=1e-2):
    """Fine-tune for one step; per layer, the lr each parameter had in the optimizer and the largest move.

    No warmup, no weight decay, no drop path: AdamW's first step moves each weight by
    ``lr * g / (|g| + eps)``, so the largest move in a layer is the lr that layer learned at.
    """
    module = importlib.import_module("mae_from_scratch.finetune")
    real, seen = module.train_step, {}

    def spy(model, opt, *args, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        seen["lr"] = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real(model, opt, *args, **kwargs)
        seen["moved"] = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
        return out

    monkeypatch.setattr(module, "train_step", spy)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, 32, 32, generator=g), torch.arange(2).repeat(4))
    torch.manual_seed(0)
    encoder = MaskedAutoencoderViT(**micro_config)
    finetune(encoder, [batch], None, num_classes=2, epochs=1, blr=lr, weight_decay=0.0, warmup_epochs=0,
             layer_decay=layer_decay, drop_path=0.0)  # a list has no batch_size: lr = blr * 256 / 256
    depth = len(encoder.blocks)
    lrs, moved = {}, {}
    for name, group_lr in seen["lr"].items():
        layer = encoder_layer_id(name, depth)
        lrs.setdefault(layer, set()).add(group_lr)
        moved[layer] = max(moved.get(layer, 0.0), seen["moved"][name])
    return depth, lrs, moved, seen


@pytest.mark.parametrize("decay", [0.5, 1.0])
def test_finetune_layers_learn_at_the_decayed_rates(micro_config, monkeypatch, decay):
    # What happened in the step, not the argument echoed back: a finetune that built AdamW on
    # plain groups (or set one lr for all) fails here.
    lr = 1e-2
    depth, lrs, moved, seen = _one_finetune_step(micro_config, monkeypatch, decay, lr)
    assert sorted(lrs) == list(range(depth + 2))  # the embedding, every block, the norm and head
    assert seen["lr"]["head.weight"] == pytest.approx(lr)  # the head learns at the full rate
    assert seen["moved"]["head.weight"] == pytest.approx(lr, rel=0.02)
    for i in range(depth):  # block i is layer i + 1
        want = lr * decay ** (depth + 1 - (i + 1))
        assert sorted(lrs[i + 1]) == pytest.approx([want]), (i, lrs[i + 1], want)
        assert moved[i + 1] == pytest.approx(want, rel=0.02), (i, moved[i + 1], want)
    assert sorted(lrs[0]) == pytest.approx([lr * decay ** (depth + 1)])  # the patch embedding, the cls token
    assert moved[0] == pytest.approx(lr * decay ** (depth + 1), rel=0.02)
    assert sorted(lrs[depth + 1]) == pytest.approx([lr]) and moved[depth + 1] == pytest.approx(lr, rel=0.02)


def test_finetune_transform_augments_pil_images():
    from PIL import Image

    t = finetune_transform(32)
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy())
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    assert any(type(s).__name__ == "RandAugment" for s in t.transforms)


def test_finetune_randaugment_is_torchvisions_magnitude_9_of_30():
    # finetune_transform's docstring: about 0.3 of each operation's largest change, a third of the paper's
    # timm m9 on 0-10.  A change of torchvision's default bins would change that statement.
    (ra,) = [s for s in finetune_transform(32).transforms if type(s).__name__ == "RandAugment"]
    assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 31)
    assert ra.magnitude / (ra.num_magnitude_bins - 1) == pytest.approx(0.3)
    assert not any(type(s).__name__ == "RandAugment" for s in finetune_transform(32, rand_augment=False).transforms)


def test_classifier_normalizes_every_token_before_pooling(micro_config):
    # The departure Classifier names: the pretrained final norm on each token, then the mean -- not the mean of
    # the raw tokens, then a norm (the official fc_norm).  With pool="cls" the norm is applied to the cls token.
    torch.manual_seed(0)
    encoder = MaskedAutoencoderViT(**micro_config).eval()
    with torch.no_grad():  # a norm that is not the identity, as after pretraining
        encoder.norm.weight.uniform_(0.5, 1.5)
        encoder.norm.bias.uniform_(-0.5, 0.5)
    raw = []
    hook = encoder.norm.register_forward_pre_hook(lambda _m, args: raw.append(args[0]))
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mean = Classifier(encoder, 3, pool="mean").encoder.forward_features(imgs, pool="mean")
        cls = Classifier(encoder, 3, pool="cls").encoder.forward_features(imgs, pool="cls")
    hook.remove()
    tokens = raw[0]
    torch.testing.assert_close(mean, encoder.norm(tokens)[:, 1:].mean(dim=1))
    assert not torch.allclose(mean, encoder.norm(tokens[:, 1:].mean(dim=1)), atol=1e-3)
    torch.testing.assert_close(cls, encoder.norm(tokens[:, 0]))


def test_finetune_keeps_the_position_table_frozen(micro_config):
    # The other departure Classifier names: the sin-cos table does not train (the official one does).
    torch.manual_seed(0)
    encoder = MaskedAutoencoderViT(**micro_config)
    table = encoder.pos_embed.detach().clone()
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))] * 2
    finetune(encoder, batches, None, num_classes=3, epochs=1, warmup_epochs=0.0, blr=1e-2)
    assert not encoder.pos_embed.requires_grad
    assert torch.equal(encoder.pos_embed, table)


# ---------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("ft") / "data", classes=("a", "b", "c"), per_class=4)


def _base(folder, mode="finetune"):
    return [mode, "--checkpoint", "random", "--model", MICRO, "--dataset", "imagefolder", "--data_path", str(folder),
            "--device", "cpu", "--num_workers", "0", "--no_progress"]


BAD = [
    ("finetune", ["--layer_decay", "0"], r"--layer_decay must be in \(0, 1\] \(1 = no decay\), got 0\.0"),
    ("finetune", ["--layer_decay", "1.5"], r"--layer_decay must be in \(0, 1\]"),
    ("finetune", ["--layer_decay", "nan"], r"--layer_decay must be in \(0, 1\]"),
    ("finetune", ["--drop_path", "1"], r"--drop_path must be in \[0, 1\), got 1\.0"),
    ("finetune", ["--smoothing", "-0.1"], r"--smoothing must be in \[0, 1\), got -0\.1"),
    ("finetune", ["--trainable_blocks", "-1"], r"--trainable_blocks must be a whole number >= 0, got -1"),
    ("finetune", ["--trainable_blocks", "5"], r"--trainable_blocks must be at most the encoder's depth 4, got 5"),
    ("finetune", ["--val_images", "-1"], r"--val_images must be a whole number >= 0, got -1"),
    ("finetune", ["--val_images", "12"], r"--val_images 12 leaves nothing to train on: the training split has 12 "
                                         r"images; use at most 11"),
    ("knn", ["--tune", "--val_images", "50"], r"--val_images 50 leaves nothing to train on"),
    ("linprobe", ["--tune", "--val_images", "0"], r"--tune chooses on the validation split, but --val_images is 0"),
    ("finetune", ["--tune"], r"--tune is for knn and linprobe"),
]


@pytest.mark.parametrize("mode,extra,pattern", BAD, ids=[f"{m} {' '.join(a)}" for m, a, _ in BAD])
def test_bad_finetune_and_tuning_flags_give_one_line(mode, extra, pattern, folder, capsys):
    rc = E.main(_base(folder, mode) + extra)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert out.strip() == ""


@pytest.mark.slow
def test_bad_flag_exits_with_status_1(folder):
    r = subprocess.run([sys.executable, "-m", "mae_from_scratch.evaluate", *_base(folder), "--layer_decay", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: --layer_decay must be in (0, 1] (1 = no decay), got 0.0; e.g. --layer_decay 0.75"]


def test_finetune_command_partial_and_from_scratch(folder, capsys):
    rc = E.main(_base(folder) + ["--epochs", "1", "--batch_size", "4", "--val_images", "3", "--trainable_blocks", "0",
                                 "--layer_decay", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["train_images"] == 9 and res["val_images"] == 3 and len(res["val_accuracy"]) == 1
    assert res["trainable_blocks"] == 0 and res["layer_decay"] == 0.5 and res["tuned"] is False
    assert res["trainable_params"] == 96 * 3 + 3 + 2 * 96  # the head and the final norm
    assert 0 <= res["accuracy"] <= 1 and res["source"] == "random"


@pytest.mark.slow
def test_linprobe_tune_and_finetune_from_the_command_line(folder):
    def run(*argv):
        r = subprocess.run([sys.executable, "-m", "mae_from_scratch.evaluate", *_base(folder, argv[0]), *argv[1:]],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    # 5 held out: on 3 or 4 every blr scores 1.0 and nothing is chosen (the result says "tuned": false)
    lin = run("linprobe", "--tune", "--val_images", "5", "--epochs", "5")
    assert lin["tuned"] is True and set(lin["val_accuracy"]) == {"0.03", "0.1", "0.3"}
    best = max(lin["val_accuracy"].values())
    assert lin["val_accuracy"][_key(lin["blr"])] == best and lin["train_images"] == 12
    plain = run("linprobe", "--epochs", "5")
    assert plain["tuned"] is False and plain["blr"] == 0.1 and "val_accuracy" not in plain
    ft = run("finetune", "--epochs", "2", "--batch_size", "4", "--val_images", "3")
    assert ft["epochs"] == 2 and len(ft["val_accuracy"]) == 2 and ft["layer_decay"] == 1.0  # random: from scratch
    assert ft["trainable_blocks"] == 4 and ft["train_images"] == 9 and 0 <= ft["accuracy"] <= 1
