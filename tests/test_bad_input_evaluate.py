"""Bad input to ``python -m mae_from_scratch.evaluate`` and to the checkpoint readers.

Each refused input gives one line on stderr naming the cause, a non-zero exit and no
traceback, before any data set is built; stdout's last line, when there is one, is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from mae_from_scratch import checkpoint as C
from mae_from_scratch import data as D
from mae_from_scratch import evaluate as E
from mae_from_scratch import training_checkpoint as TC
from mae_from_scratch.features import load_encoder
from mae_from_scratch.model import mae_vit_micro_patch4_32

from _engine_helpers import make_cifar_like_folder, make_image_folder

MICRO = "mae_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("bad_eval") / "data", classes=("a", "b", "c"), per_class=2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoint files, good and bad, by name."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    state = mae_vit_micro_patch4_32().state_dict()
    torch.save({"model": state}, d / "official.pth")
    nan = {k: v.clone() for k, v in state.items()}
    nan["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save({"model": nan}, d / "nan.pth")
    inf = {k: v.clone() for k, v in state.items()}
    inf["norm.weight"][0] = float("inf")
    torch.save({"model": inf}, d / "inf.pth")
    (d / "garbage.pth").write_bytes(b"not a checkpoint at all " * 20)
    (d / "truncated.pth").write_bytes((d / "official.pth").read_bytes()[:200])
    (d / "empty.pth").write_bytes(b"")
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0)}, d / "pickled.pth")
    torch.save({"model": {"w": torch.ones(2)}}, d / "foreign.pth")
    (d / "a_folder.pth").mkdir()
    return d


def _base(folder, mode="knn", checkpoint="random"):
    return [mode, "--checkpoint", str(checkpoint), "--model", MICRO, "--dataset", "imagefolder",
            "--data_path", str(folder), "--device", "cpu", "--num_workers", "0", "--no_progress"]


def _refused(argv, pattern, capsys, monkeypatch):
    """Run ``main(argv)``; check the one-line refusal and that no data set was built."""
    built = []
    real = D.build_dataset
    monkeypatch.setattr(D, "build_dataset", lambda *a, **k: built.append(a) or real(*a, **k))
    rc = E.main(argv)
    out, err = capsys.readouterr()
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err and "weights_only=False" not in err and "weights_only` set to" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    if out.strip():
        json.loads(out.strip().splitlines()[-1])
    return built, lines[0]


FLAG_CASES = [
    (["--k", "0"], r"--k must be a whole number >= 1, got 0"),
    (["--k", "-5"], r"--k must be a whole number >= 1, got -5"),
    (["--temperature", "0"], r"--temperature must be a finite number > 0"),
    (["--temperature", "-1"], r"--temperature must be a finite number > 0"),
    (["--temperature", "nan"], r"--temperature must be a finite number > 0, got nan"),
    (["--temperature", "inf"], r"--temperature must be a finite number > 0, got inf"),
    (["--batch_size", "0"], r"--batch_size must be a whole number >= 1, got 0"),
    (["--num_workers", "-1"], r"--num_workers must be a whole number >= 0, got -1"),
    (["--max_train", "0"], r"--max_train must be a whole number >= 1, got 0"),
    (["--max_test", "-3"], r"--max_test must be a whole number >= 1, got -3"),
    (["--input_size", "0"], r"--input_size must be a whole number >= 1, got 0"),
    (["--input_size", "-32"], r"--input_size must be a whole number >= 1, got -32"),
    (["--input_size", "30"], r"input_size 30 is not divisible by the patch size 4"),
    (["--crop_pct", "0"], r"--crop_pct must be in \(0, 1\]"),
    (["--crop_pct", "5"], r"--crop_pct must be in \(0, 1\].*got 5"),
    (["--crop_pct", "nan"], r"--crop_pct must be in \(0, 1\]"),
    (["--weight_decay", "-1"], r"--weight_decay must be a finite number >= 0, got -1"),
    (["--weight_decay", "nan"], r"--weight_decay must be a finite number >= 0, got nan"),
    (["--device", "gpu"], r"--device 'gpu' is not a device; use --device cpu or --device cuda"),
    (["--k", "abc"], r"argument --k: invalid int value: 'abc' \(see --help\)"),
    (["--device", "cuda:99"], r"--device cuda:99(: there is no GPU 99| was asked for but no CUDA GPU is available)"),
]
MODE_CASES = [
    ("linprobe", ["--blr", "nan"], r"--blr must be a finite number > 0, got nan"),
    ("linprobe", ["--blr", "0"], r"--blr must be a finite number > 0, got 0"),
    ("linprobe", ["--blr", "-0.1"], r"--blr must be a finite number > 0, got -0.1"),
    ("linprobe", ["--blr", "inf"], r"--blr must be a finite number > 0, got inf"),
    ("linprobe", ["--epochs", "0"], r"--epochs must be a whole number >= 1, got 0"),
    ("finetune", ["--epochs", "0"], r"--epochs must be a whole number >= 1, got 0"),
    ("finetune", ["--epochs", "-3"], r"--epochs must be a whole number >= 1, got -3"),
    ("finetune", ["--blr", "0"], r"--blr must be a finite number > 0, got 0"),
]


@pytest.mark.parametrize("extra,pattern", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flag_is_refused_before_data(extra, pattern, folder, capsys, monkeypatch):
    built, _ = _refused(_base(folder) + extra, pattern, capsys, monkeypatch)
    assert built == []


@pytest.mark.parametrize("mode,extra,pattern", MODE_CASES, ids=[f"{m} {' '.join(a)}" for m, a, _ in MODE_CASES])
def test_bad_training_flag_is_refused_before_data(mode, extra, pattern, folder, capsys, monkeypatch):
    built, _ = _refused(_base(folder, mode) + extra, pattern, capsys, monkeypatch)
    assert built == []


def test_explicit_empty_values_are_not_replaced_by_defaults(folder, capsys, monkeypatch):
    argv = _base(folder)
    argv[argv.index("--data_path") + 1] = ""
    assert _refused(argv, r"--data_path is empty", capsys, monkeypatch)[0] == []
    argv = _base(folder, checkpoint="")
    assert _refused(argv, r"--checkpoint is empty", capsys, monkeypatch)[0] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu(folder, capsys, monkeypatch):
    _refused(_base(folder) + ["--device", "cuda"], r"--device cuda was asked for but no CUDA GPU is available; use --device cpu",
             capsys, monkeypatch)


def test_mps_where_unavailable(folder, capsys, monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    _refused(_base(folder) + ["--device", "mps"], r"--device mps: the Apple MPS backend is not available",
             capsys, monkeypatch)


CKPT_CASES = [
    ("nan.pth", r"nan\.pth holds NaN or infinite weights in 1 tensor\(s\) \(blocks\.0\.attn\.qkv\.weight\)"),
    ("inf.pth", r"inf\.pth holds NaN or infinite weights in 1 tensor\(s\) \(norm\.weight\)"),
    ("garbage.pth", r"cannot read checkpoint .*garbage\.pth: the file is not a PyTorch checkpoint"),
    ("truncated.pth", r"cannot read checkpoint .*truncated\.pth: .*truncated"),
    ("empty.pth", r"cannot read checkpoint .*empty\.pth: the file is empty"),
    ("pickled.pth", r"cannot read checkpoint .*pickled\.pth: it is not a plain tensor checkpoint.*cannot be read "
                    r"safely"),
    ("foreign.pth", r"foreign\.pth does not hold an MAE encoder"),
    ("missing.pth", r"checkpoint file not found: .*missing\.pth"),
    ("a_folder.pth", r"a_folder\.pth is a folder, not a file"),
]


@pytest.mark.parametrize("name,pattern", CKPT_CASES, ids=[n for n, _ in CKPT_CASES])
def test_bad_checkpoint_is_refused_in_one_line(name, pattern, folder, ckpts, capsys, monkeypatch):
    for mode in ("knn", "linprobe"):
        built, _ = _refused(_base(folder, mode, ckpts / name), pattern, capsys, monkeypatch)
        assert built == []


@pytest.mark.parametrize("name,pattern", [c for c in CKPT_CASES if c[0] in ("garbage.pth", "truncated.pth",
                                                                           "empty.pth", "pickled.pth")])
def test_checkpoint_readers_name_the_path(name, pattern, ckpts):
    for read in (TC.load_training_checkpoint, lambda p: C.load_official_checkpoint(mae_vit_micro_patch4_32(), p)):
        with pytest.raises(C.CheckpointReadError, match=pattern) as info:
            read(ckpts / name)
        assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
        assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_resuming_an_official_weights_only_file_says_how_to_start_from_it(ckpts):
    with pytest.raises(C.WeightsOnlyCheckpointError, match=r"official\.pth holds model weights only.*"
                                                           r"load_official_checkpoint\(model, path\)"):
        TC.load_training_checkpoint(ckpts / "official.pth")
    assert issubclass(C.WeightsOnlyCheckpointError, ValueError)
    assert C.load_encoder_checkpoint(ckpts / "official.pth").source == "official"  # evaluation still reads it


def test_api_refuses_zero_input_size(ckpts):
    with pytest.raises(ValueError, match="input_size must be a positive integer, got 0"):
        C.load_encoder_checkpoint(ckpts / "official.pth", input_size=0)
    with pytest.raises(ValueError, match="input_size must be a positive integer, got 0"):
        load_encoder("random", MICRO, input_size=0)


# ---------------------------------------------------------------------------------- class folders
@pytest.fixture
def tree(tmp_path, folder):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    return root


def test_test_split_missing_a_class_keeps_the_train_labels(tree, capsys):
    shutil.rmtree(tree / "test" / "a")
    train = D.build_dataset("imagefolder", "train", tree)
    alone = D.build_dataset("imagefolder", "test", tree)
    assert alone.classes == ["b", "c"] and set(alone.base.targets) == {0, 1}  # what the folder alone says
    test = D.build_dataset("imagefolder", "test", tree, classes=train.classes)
    assert test.base.missing_classes == ["a"] and test.classes == ["a", "b", "c"]
    assert {p.split("/")[-2]: t for p, t in test.base.samples} == {"b": 1, "c": 2}
    assert [t for _, t in (test[i] for i in range(len(test)))] == [1, 1, 2, 2]

    rc = E.main(_base(tree) + ["--k", "3"])
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res["classes_without_test_images"] == ["a"] and res["test_images"] == 4


def test_test_class_the_train_split_lacks_is_refused(tree, capsys, monkeypatch):
    shutil.copytree(tree / "test" / "a", tree / "test" / "zebra")
    _, line = _refused(_base(tree), r"test has class folders the train split lacks: \['zebra'\].*remove or rename",
                       capsys, monkeypatch)


def test_final_line_is_json_and_never_nan(folder, capsys):
    rc = E.main(_base(folder) + ["--k", "3"])
    out, _ = capsys.readouterr()
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= res["accuracy"] <= 1.0 and res["k"] == 3


def test_checkpoint_of_another_model_says_which(folder, ckpts, capsys, monkeypatch):
    argv = _base(folder, "knn", ckpts / "official.pth")
    argv[argv.index("--model") + 1] = "mae_vit_tiny_patch4_32"
    _refused(argv, r"official\.pth does not fit the model \(width 192, depth 12, patch 4, image 32\): "
                   r"missing keys \(\d+\): .* and \d+ more", capsys, monkeypatch)


def test_cifar10_tree_with_a_test_class_missing_keeps_cifars_labels(tmp_path):
    root = make_cifar_like_folder(tmp_path / "cifar", per_class=1)
    shutil.rmtree(root / "test" / "airplane")
    train = D.build_dataset("cifar10", "train", root)
    test = D.build_dataset("cifar10", "test", root, classes=train.classes)
    assert test.base.missing_classes == ["airplane"]
    assert {p.split("/")[-2]: t for p, t in test.base.samples}["automobile"] == 1  # not shifted to 0
    with pytest.raises(D.DataError, match="lacks the class folders \\['airplane'\\]"):
        D.build_dataset("cifar10", "test", root)  # without the train classes CIFAR-10's ten are required
