"""Bad or careless input to ``python -m mae_from_scratch.pretrain``: one line naming the
cause and the fix, a non-zero exit, no traceback, and the output folder left as it was.

Every case runs ``main(argv)`` in the test process; the output folder's files are
compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from _engine_helpers import make_image_folder, make_tar, poison_loss_at_call, write_unreadable_image

from mae_from_scratch import data as D
from mae_from_scratch import pretrain as P
from mae_from_scratch.cli_checks import InputError
from mae_from_scratch.training_checkpoint import load_training_checkpoint
from mae_from_scratch.train_step import NonFiniteLossError
from mae_from_scratch.metrics import read_epoch_log, read_step_log

BASE = ["--preset", "cpu_smoke", "--num_photos", "64", "--max_images", "64", "--batch_size", "8",
        "--epochs", "1", "--warmup_epochs", "0", "--no_progress"]


def snapshot(folder: Path):
    """Every file under ``folder`` with its bytes (``None`` when the folder does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if folder.is_file():
        return folder.read_bytes()
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def refused(capsys, argv, pattern, out: Path) -> str:
    """Run ``main(argv)``; check the refusal and that ``out`` did not change.  Returns the line."""
    before = snapshot(out)
    capsys.readouterr()
    rc = P.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc != 0, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert snapshot(out) == before, "the output folder changed"
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real small run: checkpoint-last.pth, checkpoint-0.pth, log.txt, log_steps.jsonl."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert P.main([*BASE, "--output_dir", str(out)]) == 0
    return out


@pytest.fixture
def out(tmp_path):
    """An existing output folder that holds a file but no run."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    return folder


# ---------------------------------------------------------------------------------- flags
FLAG_CASES = [
    (["--epochs", "0"], r"--epochs must be a whole number >= 1, got 0"),
    (["--epochs", "-3"], r"--epochs must be a whole number >= 1, got -3"),
    (["--input_size", "0"], r"--input_size must be a positive number of pixels, got 0"),
    (["--input_size", "-32"], r"--input_size must be a positive number of pixels, got -32"),
    (["--input_size", "30"], r"--input_size 30 is not divisible by the patch size 4"),
    (["--data_path", ""], r"--data_path is empty"),
    (["--max_images", "-40"], r"--max_images must be a whole number >= 1, got -40"),
    (["--max_images", "0"], r"--max_images must be a whole number >= 1, got 0"),
    (["--save_every_steps", "-1"], r"--save_every_steps must be a whole number >= 0, got -1"),
    (["--save_freq", "0"], r"--save_freq must be a whole number >= 1, got 0"),
    (["--batch_size", "0"], r"--batch_size must be a whole number >= 1"),
    (["--accum_iter", "0"], r"--accum_iter must be a whole number >= 1"),
    (["--num_workers", "-1"], r"--num_workers must be a whole number >= 0"),
    (["--num_photos", "0"], r"--num_photos must be a whole number >= 1"),
    (["--max_steps", "0"], r"--max_steps must be a whole number >= 1"),
    (["--mask_ratio", "1"], r"--mask_ratio: mask_ratio must be in \[0, 1\)"),
    (["--mask_ratio=-0.1"], r"--mask_ratio: mask_ratio must be in \[0, 1\)"),
    (["--mask_ratio", "nan"], r"--mask_ratio: mask_ratio must be in \[0, 1\)"),
    (["--mask_ratio", "0"], r"--mask_ratio 0.0 removes no patch out of 64"),
    (["--mask_ratio", "0.999"], r"keeps no patch"),
    (["--lr", "nan"], r"--lr must be a finite number >= 0, got nan"),
    (["--blr=-1e-3"], r"--blr must be a finite number >= 0"),
    (["--blr", "inf"], r"--blr must be a finite number >= 0, got inf"),
    (["--min_lr", "-1"], r"--min_lr must be a finite number >= 0"),
    (["--warmup_epochs", "-1"], r"--warmup_epochs must be a finite number >= 0"),
    (["--weight_decay=-0.05"], r"--weight_decay must be a finite number >= 0"),
    (["--weight_decay", "nan"], r"--weight_decay must be a finite number >= 0"),
    (["--clip_grad", "0"], r"--clip_grad must be a finite number > 0"),
    (["--epochs", "abc"], r"argument --epochs: invalid int value: 'abc' \(see --help\)"),
    (["--model", "mae_vit_nope"], r"argument --model: invalid choice"),
    (["--device", "gpu"], r"--device 'gpu' is not a device; use --device cpu or --device cuda"),
    (["--device", "mps"], r"--device mps is not supported for pretraining; use --device cpu or --device cuda"),
    (["--device", "banana"], r"--device 'banana' is not a device"),
    (["--resume", "x.pth", "--overwrite"], r"--resume and --overwrite contradict each other"),
    (["--mount_drive"], r"--mount_drive only works inside Google Colab"),
]


@pytest.mark.parametrize("extra, pattern", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flag_is_refused_before_anything_runs(capsys, out, extra, pattern):
    refused(capsys, [*BASE, "--output_dir", str(out), *extra], pattern, out)


def test_flags_checked_through_the_api_too(out):
    with pytest.raises(InputError, match="--epochs must be a whole number >= 1"):
        P.pretrain(preset="cpu_smoke", epochs=0, output_dir=str(out))
    with pytest.raises(InputError, match="--save_freq must be"):
        P.pretrain(preset="cpu_smoke", save_freq=0, output_dir=str(out))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(capsys, out):
    refused(capsys, [*BASE, "--output_dir", str(out), "--device", "cuda"],
            r"--device cuda was asked for but no CUDA GPU is available; use --device cpu", out)


# ---------------------------------------------------------------------------------- output folder
def test_output_dir_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    refused(capsys, [*BASE, "--output_dir", str(f)], r"--output_dir .*file\.txt is a file, not a folder", f)


def test_output_dir_under_a_file(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    refused(capsys, [*BASE, "--output_dir", str(f / "run")], r"cannot be made: .*file\.txt is a file", f)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_that_cannot_be_written(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refused(capsys, [*BASE, "--output_dir", str(ro / "run")], r"cannot be written", ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.slow
def test_rerun_into_a_finished_run_is_refused(capsys, finished_run):
    refused(capsys, [*BASE, "--output_dir", str(finished_run)],
            r"already holds a run \(checkpoint-last\.pth\); continue it with --auto_resume, "
            r"start over with --overwrite", finished_run)


def test_folder_with_only_a_log_counts_as_a_run(capsys, out):
    (out / "log.txt").write_text('{"epoch": 0}\n')
    refused(capsys, [*BASE, "--output_dir", str(out)], r"already holds a run \(log\.txt\)", out)


def test_a_second_run_on_a_locked_folder_names_the_first(capsys, out):
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0}
    (out / ".lock").write_text(json.dumps(owner))
    refused(capsys, [*BASE, "--output_dir", str(out)],
            rf"is in use by another run \(pid {owner['pid']} on host {re.escape(owner['host'])}", out)


def test_a_lock_on_another_host_is_respected(capsys, out):
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    refused(capsys, [*BASE, "--output_dir", str(out)], r"in use by another run \(pid 1 on host elsewhere", out)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_stale_lock_and_temporaries_are_cleared_and_the_lock_released(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = _dead_pid()
    (out / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": 0}))
    stale = out / f".checkpoint-last.pth.{dead}.tmp"
    stale.write_bytes(b"\0" * 1000)
    live = out / f".checkpoint-last.pth.{os.getppid()}.tmp"  # a live process: not ours to remove
    live.write_bytes(b"\0")
    assert P.main([*BASE, "--output_dir", str(out)]) == 0
    assert not stale.exists() and live.exists()
    assert not (out / ".lock").exists()  # released at the end
    assert (out / "checkpoint-last.pth").is_file()


def test_lock_is_released_when_the_run_fails(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    write_unreadable_image(root / "train" / "a" / "bad.png")
    out = tmp_path / "out"
    refused(capsys, [*BASE, "--data_path", str(root), "--output_dir", str(out)], r"cannot be read", out)
    assert not out.exists()  # the folder made for the lock is removed again


@pytest.mark.slow
def test_overwrite_starts_over_and_replaces_the_logs(tmp_path, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "checkpoint-7.pth").write_bytes(b"old")
    assert P.main([*BASE, "--output_dir", str(out), "--overwrite", "--max_steps", "3"]) == 0
    assert [r["step"] for r in read_step_log(out)] == [1, 2, 3]  # not appended after the old 1..8
    assert read_epoch_log(out) == []
    assert not (out / "checkpoint-7.pth").exists() and not (out / "checkpoint-0.pth").exists()
    assert load_training_checkpoint(out / "checkpoint-last.pth")["step"] == 3


# ---------------------------------------------------------------------------------- resume
def test_resume_of_a_missing_file(capsys, out):
    refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(out / "nope.pth")],
            r"checkpoint file not found: .*nope\.pth", out)


def test_resume_of_a_garbage_file(capsys, out):
    bad = out / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    line = refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(bad)], r"garbage\.pth", out)
    assert "weights_only=False" not in line


def test_resume_with_another_model_size_names_both(capsys, out, finished_run):
    refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(finished_run / "checkpoint-last.pth"),
                     "--model", "mae_vit_tiny_patch4_32"],
            r"holds mae_vit_micro_patch4_32 \(img_size=32, patch_size=4, embed_dim=\d+, depth=\d+\) but "
            r"--model mae_vit_tiny_patch4_32 was asked for; resume with --model mae_vit_micro_patch4_32", out)


def test_resume_with_missing_keys_says_which_model_it_holds(capsys, out, finished_run):
    ck = load_training_checkpoint(finished_run / "checkpoint-last.pth")
    del ck["model"]["decoder_pred.weight"]
    path = out / "cut.pth"
    torch.save(ck, path)
    refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(path)],
            r"cut\.pth holds mae_vit_micro_patch4_32 .* which does not fit --model mae_vit_micro_patch4_32 "
            r"at --input_size 32 \(Missing key.*decoder_pred\.weight", out)


def test_resume_at_another_input_size(capsys, out, finished_run):
    refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(finished_run / "checkpoint-last.pth"),
                     "--input_size", "64"], r"does not fit --model mae_vit_micro_patch4_32 at --input_size 64", out)


def test_resume_of_an_official_weights_only_file(capsys, out, finished_run):
    weights = out / "mae_pretrain.pth"
    torch.save({"model": load_training_checkpoint(finished_run / "checkpoint-last.pth")["model"]}, weights)
    refused(capsys, [*BASE, "--output_dir", str(out), "--resume", str(weights)],
            r"mae_pretrain\.pth holds model weights only .*resume.*load_official_checkpoint", out)


@pytest.mark.slow
def test_a_relative_data_path_is_saved_absolute_so_a_resume_elsewhere_finds_it(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    make_image_folder(work / "data", per_class=6)
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    args = [*BASE, "--max_images", "16", "--batch_size", "4", "--output_dir", str(out)]
    assert P.main([*args, "--data_path", "data", "--max_steps", "2"]) == 0
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    assert ck["args"]["data_path"] == str(work / "data")  # derived: the absolute path
    assert ck["config"]["asked_before_derived"]["data_path"] == "data"  # what was typed
    monkeypatch.chdir(tmp_path)
    assert P.main([*args, "--auto_resume", "--max_steps", "3"]) == 0
    assert load_training_checkpoint(out / "checkpoint-last.pth")["step"] == 3


def test_a_missing_data_path_from_the_checkpoint_is_said_to_come_from_it(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    make_image_folder(work / "data", per_class=6)
    out = tmp_path / "run"
    args = [*BASE, "--max_images", "16", "--batch_size", "4", "--output_dir", str(out)]
    assert P.main([*args, "--data_path", str(work / "data"), "--max_steps", "2"]) == 0
    (work / "data").rename(work / "moved")
    refused(capsys, [*args, "--auto_resume"],
            r"data path not found: .*data .*the data path .*data' comes from the checkpoint .*checkpoint-last\.pth.*"
            r"give --data_path", out)


# ---------------------------------------------------------------------------------- data
def test_missing_data_path(capsys, out, tmp_path):
    refused(capsys, [*BASE, "--output_dir", str(out), "--data_path", str(tmp_path / "nowhere")],
            r"data path not found: .*nowhere", out)


def test_tar_path_traversal_is_refused(capsys, out, tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        src = tmp_path / "x.txt"
        src.write_text("x")
        tar.add(src, arcname="../escape.txt")
    refused(capsys, [*BASE, "--output_dir", str(out), "--data_path", str(evil)],
            r"refusing to extract '\.\./escape\.txt'", out)


def test_a_truncated_archive_is_named(capsys, out, tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))
    whole = make_tar(make_image_folder(tmp_path / "tree", per_class=4), tmp_path / "whole.tar.gz", top="data")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    refused(capsys, [*BASE, "--output_dir", str(out), "--data_path", str(cut)],
            r"cannot read archive .*cut\.tar\.gz \(truncated or corrupted\?\).*copy it again", out)


@pytest.mark.parametrize("loader", ["auto", "pil"])
def test_every_corrupt_image_is_named_before_the_first_step(capsys, out, tmp_path, loader):
    root = make_image_folder(tmp_path / "data", per_class=4)
    bad1 = write_unreadable_image(root / "train" / "a" / "broken.jpg")
    bad2 = write_unreadable_image(root / "train" / "c" / "empty.png")
    line = refused(capsys, [*BASE, "--output_dir", str(out), "--data_path", str(root), "--loader", loader,
                            "--batch_size", "2", "--num_workers", "0"],
                   r"2 image files cannot be read: .*Remove or replace them", out)
    assert str(bad1) in line and str(bad2) in line


def test_an_archive_with_only_train_names_the_missing_evaluation_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))
    tree = make_image_folder(tmp_path / "tree", per_class=2, splits=("train",))
    archive = tmp_path / "only-train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
    assert len(D.build_dataset("imagefolder", "train", archive)) == 6  # train/ at the top is the train split
    with pytest.raises(D.DataError, match=r"the archive .*only-train\.tar\.gz .* has no val or test folder "
                                          r"for the evaluation split \(it holds train/\)"):
        D.build_dataset("imagefolder", "test", archive)
    # the same archive with one top folder
    wrapped = make_tar(tree, tmp_path / "wrapped.tar.gz", top="d")
    with pytest.raises(D.DataError, match=r"has no val or test folder .*\(it holds train/\)"):
        D.build_dataset("imagefolder", "test", wrapped)


# ---------------------------------------------------------------------------------- non-finite
@pytest.mark.slow
def test_non_finite_run_names_the_last_checkpoint_written_with_step_and_loss(tmp_path, monkeypatch):
    poison_loss_at_call(monkeypatch, P, call=5)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        P.pretrain(argv=[*BASE, "--output_dir", str(out), "--save_every_steps", "3"])
    msg = str(e.value)
    assert re.search(r"the last checkpoint written is .*checkpoint-last\.pth \(step 3, loss \d", msg), msg
    assert "good" not in msg
    assert not (out / ".lock").exists()
