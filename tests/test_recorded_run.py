"""The recorded run the book shows (mae_from_scratch/recorded/): complete, small, and tied to the code.

The replay test re-runs the recorded run's first steps on this machine's CPU -- same
command, seed and data, fp32 -- and requires the logged losses back.  The record was made
in fp32 on a CPU, so the only differences are in the order of floating-point sums (thread
count, kernels); a relative tolerance of 1e-4 on the loss of each of the first five steps
leaves room for those and for nothing else.  (A bf16 or GPU record would need a looser one.)
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

from _engine_helpers import cifar_tar_path
from mae_from_scratch.model import create_model
from mae_from_scratch.recorded_runs import (CPU_RUN, MODEL_FILE, RECORDED, RECORDING, load_recorded_experiments,
                                            load_recorded_model, load_recorded_run)
from mae_from_scratch.run_info import RUN_INFO, file_sha256

ROOT = Path(__file__).resolve().parents[1]
FOLDER = RECORDED / CPU_RUN
REPLAY_STEPS = 5
REPLAY_RTOL = 1e-4
CIFAR10_TEST_IMAGES, CIFAR10_TRAIN_IMAGES, CIFAR10_CLASSES = 10_000, 50_000, 10


def test_run_json_names_what_produced_it():
    rec = load_recorded_run(CPU_RUN)
    run = rec.run_info
    hw = run["hardware"]
    assert hw["cpu"] and hw["cpu_cores"] >= 1 and hw["torch"]
    assert run["git_commit"] and len(run["git_commit"].split("+")[0]) == 40
    assert run["command"].startswith("python -m mae_from_scratch.pretrain ")
    assert run["preset"] == "cpu_cifar10" and run["seed"] == 0
    assert run["data"]["dataset"] == "cifar10" and len(run["data"]["sha256"]) == 64
    assert run["finished"] is True
    assert run["epochs_run"] == run["epochs_scheduled"]  # the schedule was not cut short
    assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["images_per_s"] > 0
    assert len(rec.epoch_log) == run["epochs_run"]
    assert "JPEG re-encoding" in rec.recording["data_note"]
    # The pictures: before training, during, and after the last epoch.
    epochs = [e for e, _ in rec.snapshots()]
    assert epochs[0] == 0 and epochs[-1] == run["epochs_run"] and len(epochs) >= 4


def _tool(name: str):
    """A script of tools/ imported as a module (tools/ is on the path only while it imports)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "tools"))


def _cifar_tar() -> Path:
    """The CIFAR-10 archive the run was recorded and evaluated on, or a skip that says so."""
    tar = cifar_tar_path()
    if not tar.is_file():
        pytest.skip(f"the CIFAR-10 archive the run was recorded on is not here ({tar})")
    return tar


def _recorded_argv(rec) -> list:
    """The recorded run's pretraining flags, as its run.json's command gave them."""
    return shlex.split(rec.run_info["command"])[3:]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


ABSOLUTE_PATH = re.compile(r"(?:^|[\s='\"(])(?:/|~/|[A-Za-z]:[\\/])[\w.-]")


def test_the_check_for_absolute_paths():
    for text in ("/work/main/notebooks", "--out=/home/me/x", "see C:\\Users\\me", "~/data/x.tar.gz"):
        assert ABSOLUTE_PATH.search(text), text
    for text in ("../shared/data/cifar10-jpeg.tar.gz", "airplane/0429.jpg", "74-107 images/s", ".cache/run"):
        assert not ABSOLUTE_PATH.search(text), text


def test_recording_json_is_what_the_script_accepts_and_names_no_machine_path():
    """``recording.json``'s ``argv`` parses with today's ``tools/record_run.py`` and describes
    the run that ``run.json`` describes; neither file names an absolute path of the machine
    that made them; the edit of the arguments after the run is explained in its note."""
    rec = load_recorded_run(CPU_RUN)
    run, recording = rec.run_info, rec.recording
    assert (FOLDER / RECORDING).is_file() and (FOLDER / RUN_INFO).is_file()
    for name, obj in ((RECORDING, recording), (RUN_INFO, run)):
        bad = [t for t in _strings(obj) if ABSOLUTE_PATH.search(t)]
        assert not bad, f"{name} names absolute paths: {bad}"
    script = _tool("record_run")
    a = script.parse_args(recording["argv"])  # SystemExit if the script refuses it
    assert a.out == FOLDER.relative_to(ROOT).as_posix()
    assert a.preset == run["preset"] and a.dataset == run["data"]["dataset"]
    assert a.data_path == run["data"]["data_path"] == run["args"]["data_path"]
    assert a.epochs == run["epochs_scheduled"] and a.budget_min is None  # --epochs: no probe
    assert "probe" not in recording
    # The engine ran the command that the script logged.
    assert shlex.split(run["command"])[3:] == recording["pretrain_argv"]
    # The arguments as given then are kept, labelled; the script now refuses them (both
    # --budget_min and --epochs), and the note says why "argv" differs from them.
    assert "--budget_min" in recording["argv_as_run"]
    with pytest.raises(SystemExit):
        script.parse_args(recording["argv_as_run"])
    assert '"argv_as_run"' in recording["note"] and "--budget_min" in recording["note"]


def test_evaluation_is_complete_and_consistent():
    """eval.json holds every entry chapters 8 and 9 read, on CIFAR-10's whole test split, with
    the protocol the script fixed, and numbers that agree with each other and with what the
    recording logged: a trained encoder above a random one, which is above chance, and the
    orderings chapter 9's text states in words."""
    rec = load_recorded_run(CPU_RUN)
    ev, run = rec.eval, rec.run_info
    entries = {f"{enc}_{pool}" for enc in ("trained", "random") for pool in ("cls", "mean")}
    assert set(ev) == {"protocol", "raw_pixels", "trained_seconds", "random_seconds"} | entries
    for name in entries:
        assert set(ev[name]) == {"knn", "linear_probe"}, name
    assert set(ev["raw_pixels"]) == {"knn"}
    accuracies = [ev[e][m] for e in entries for m in ("knn", "linear_probe")] + [ev["raw_pixels"]["knn"]]
    for acc in accuracies:  # a share of the 10,000 test images, rounded to 4 places: exact
        assert 0.0 < acc < 1.0 and abs(acc * CIFAR10_TEST_IMAGES - round(acc * CIFAR10_TEST_IMAGES)) < 1e-6

    # The protocol: CIFAR-10's whole splits, the script's fixed settings, nothing tuned.
    protocol = ev["protocol"]
    assert protocol["test_images"] == CIFAR10_TEST_IMAGES and protocol["num_classes"] == CIFAR10_CLASSES
    assert protocol["train_images"] == CIFAR10_TRAIN_IMAGES == run["data"]["train_images"]
    script = _tool("record_run")
    assert protocol["knn"] == script.KNN
    assert {k: protocol["linear_probe"][k] for k in script.PROBE} == script.PROBE
    assert protocol["tuning"].startswith("none")
    assert protocol["random_encoder"] == f"{run['args']['model']} initialized with seed {run['seed']}, untrained"
    assert ev["trained_seconds"] > 0 and ev["random_seconds"] > 0

    # The numbers against each other.
    chance = 1 / CIFAR10_CLASSES
    for pool in ("cls", "mean"):
        trained, random = ev[f"trained_{pool}"], ev[f"random_{pool}"]
        for metric in ("knn", "linear_probe"):
            assert random[metric] > chance + 0.15, (pool, metric)  # an untrained ViT is far above chance
            assert trained[metric] > random[metric] + 0.05, (pool, metric)
    best = {enc: max(ev[f"{enc}_{pool}"]["knn"] for pool in ("cls", "mean")) for enc in ("trained", "random")}
    # Chapter 9: "The untrained encoder is worse than the pixels it is given ... Pretraining
    # turns the same architecture into features that beat the pixels".
    assert best["random"] < ev["raw_pixels"]["knn"] < best["trained"]

    # The same numbers as the recording logged while it evaluated.
    messages = "\n".join(rec.recording["messages"])
    for enc in ("trained", "random"):
        for pool in ("cls", "mean"):
            r = ev[f"{enc}_{pool}"]
            assert f"{enc} encoder, {pool}: kNN {r['knn']:.2%}, linear probe {r['linear_probe']:.2%}" in messages
    assert f"raw pixels: kNN {ev['raw_pixels']['knn']:.2%}" in messages


def test_only_small_files_and_no_checkpoints():
    """Every file under 1 MB, except the half-precision model, under 3 MB; no training checkpoint."""
    files = [p for p in FOLDER.rglob("*") if p.is_file()]
    assert files
    for p in files:
        if p.name == MODEL_FILE:
            assert p.stat().st_size < 3_000_000, f"{p} is {p.stat().st_size:,} bytes"
            continue
        assert p.suffix in {".json", ".jsonl", ".txt", ".png", ".npz"}, p
        assert p.stat().st_size < 1_000_000, f"{p} is {p.stat().st_size:,} bytes"


def test_the_shipped_model_is_the_one_its_record_names(tmp_path):
    """The half-precision model loads into the run's architecture, its sha256 is the one
    recording.json gives, and a file that differs by one byte is refused, with a message."""
    rec = load_recorded_run(CPU_RUN)
    assert rec.recording["model_sha256"] == file_sha256(FOLDER / MODEL_FILE)
    model = load_recorded_model(CPU_RUN)
    assert not model.training and model.norm_pix_loss is True
    assert model.config.embed_dim == 96 and len(model.blocks) == 4  # mae_vit_micro_patch4_32, as run.json says
    assert rec.run_info["args"]["model"] == "mae_vit_micro_patch4_32"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # The weights are the trained ones, not an initialization: they differ from seed 0's.
    torch.manual_seed(0)
    fresh = create_model("mae_vit_micro_patch4_32")
    assert not torch.allclose(model.blocks[0].attn.qkv.weight, fresh.blocks[0].attn.qkv.weight, atol=1e-2)
    copy = tmp_path / CPU_RUN
    shutil.copytree(FOLDER, copy)
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[-100] ^= 1
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_recorded_model(CPU_RUN, folder=copy)
    (copy / MODEL_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="ships no model"):
        load_recorded_model(CPU_RUN, folder=copy)


@pytest.mark.slow
def test_the_shipped_model_gives_the_recorded_attention():
    """The run saved its encoder's attention on the pictured held-out images (attention.npz,
    half precision) before the model was shipped: the shipped weights give those maps back
    to half precision's rounding (5e-4 measured; an untrained encoder misses by 0.49)."""
    tar = _cifar_tar()
    import numpy as np

    from mae_from_scratch import data as D
    from mae_from_scratch.features import encoder_attention
    from mae_from_scratch.run_config import parse_args
    from mae_from_scratch.snapshots import heldout_images

    rec = load_recorded_run(CPU_RUN)
    args = parse_args(_recorded_argv(rec))
    saved = np.load(RECORDED / CPU_RUN / "attention.npz")
    info = D.dataset_info(args.dataset)
    imgs, _, names = heldout_images(args.dataset, str(tar), len(saved["names"]), args.input_size, info.mean,
                                    info.std, seed=args.seed)
    assert list(names) == list(saved["names"])
    att = encoder_attention(load_recorded_model(CPU_RUN), imgs)  # (n, depth, heads, T, T)
    torch.testing.assert_close(att[:, -1], torch.from_numpy(saved["last_block"]).float(), rtol=0, atol=2e-3)
    torch.testing.assert_close(att[:, :, :, 0, 1:], torch.from_numpy(saved["cls_to_patches"]).float(),
                               rtol=0, atol=2e-3)
    untrained = create_model(args.model).eval()
    assert (encoder_attention(untrained, imgs)[:, -1] - att[:, -1]).abs().max() > 0.1


# Minutes on one core (60,000 images through the encoder, once per pooling, as the recording
# did): `make test-long`.
@pytest.mark.slow
@pytest.mark.long
def test_the_shipped_model_reproduces_the_recorded_knn():
    """Its frozen features, through the recording script's own decoding and feature
    extraction, give eval.json's kNN accuracies (cls and mean) within half a point on the whole
    CIFAR-10 splits: the half-precision weights are the run's encoder."""
    tar = _cifar_tar()
    from mae_from_scratch import data as D
    from mae_from_scratch.knn import knn_accuracy

    record_run = _tool("record_run")
    rec = load_recorded_run(CPU_RUN)
    info = D.dataset_info("cifar10")
    t = D.eval_transform(32, info.mean, info.std)
    train = D.build_dataset("cifar10", "train", str(tar), transform=t)
    test = D.build_dataset("cifar10", "test", str(tar), transform=t, classes=train.classes)
    (xtr, ytr), (xte, yte) = record_run.decode(train, 2), record_run.decode(test, 2)
    model = load_recorded_model(CPU_RUN)
    ftr, fte = record_run.features(model, xtr, ytr, "cpu"), record_run.features(model, xte, yte, "cpu")
    for pool in ("cls", "mean"):
        acc = knn_accuracy(ftr[pool], ytr, fte[pool], yte, num_classes=10, **rec.eval["protocol"]["knn"])
        assert acc == pytest.approx(rec.eval[f"trained_{pool}"]["knn"], abs=0.005), pool


@pytest.mark.slow
def test_replay_reproduces_the_first_logged_losses(tmp_path):
    rec = load_recorded_run(CPU_RUN)
    tar = _cifar_tar()
    assert file_sha256(tar) == rec.run_info["data"]["sha256"], "a different CIFAR-10 archive than the recorded one"
    from mae_from_scratch.pretrain import pretrain
    from mae_from_scratch.run_config import parse_args

    argv = _recorded_argv(rec)
    args = parse_args(argv)  # the preset's values under the flags, as the run saw them
    assert args.precision == "fp32" and args.device == "cpu"
    out = tmp_path / "replay"
    pretrain(argv=argv + ["--data_path", str(tar), "--output_dir", str(out), "--max_steps", str(REPLAY_STEPS),
                          "--recon_every", "0"])
    replay = [json.loads(line) for line in (out / "log_steps.jsonl").read_text().splitlines()]
    recorded = rec.step_log[:REPLAY_STEPS]
    assert [r["step"] for r in replay] == [r["step"] for r in recorded] == list(range(1, REPLAY_STEPS + 1))
    for a, b in zip(replay, recorded):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["loss"] == pytest.approx(b["loss"], rel=REPLAY_RTOL), (a, b)


def test_the_recorded_run_json_names_no_machine_path(tmp_path):
    """The engine records the absolute data path it derived; the recording script turns every
    absolute path into one relative to the repository before run.json is shipped."""
    record_run = _tool("record_run")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    archive = ROOT / "mae_from_scratch" / "recorded" / CPU_RUN / "eval.json"  # any file that exists
    (work / RUN_INFO).write_text(json.dumps({"args": {"data_path": str(archive), "seed": 0},
                                             "config": {"derived": {"data_path": str(archive)}}}))
    record_run.copy_run_files(work, out)
    shipped = json.loads((out / RUN_INFO).read_text())
    relative = "mae_from_scratch/recorded/" + CPU_RUN + "/eval.json"
    assert shipped == {"args": {"data_path": relative, "seed": 0}, "config": {"derived": {"data_path": relative}}}


def test_the_recorded_experiments_are_complete_and_name_what_made_them():
    """Every experiment chapter 9 shows is there, each with its time, commit and hardware;
    the recording names its command (one the script accepts), the data by its sha256 (the
    recorded run's archive) and no path of the machine that made it."""
    script = _tool("record_experiments")
    exp = load_recorded_experiments()
    expected = ({s["name"] for s in script.pretraining_runs()} | {s["name"] for s in script.finetuning_runs()}
                | {"recorded-encoder"})
    assert set(exp.runs) == expected
    rec = exp.recording
    assert rec["script"] == "tools/record_experiments.py"
    args = script.get_parser().parse_args(rec["argv"])
    assert not args.probe and args.max_images is None  # the whole data set, not a dry run
    assert rec["data_sha256"] == load_recorded_run(CPU_RUN).run_info["data"]["sha256"]
    assert rec["hardware"]["summary"] and len(rec["git_commit"].split("+")[0]) == 40
    assert set(rec["experiments"]) == expected
    for name, run in exp.runs.items():
        assert run["name"] == name and run["wall_s"] > 0 and run["cpu_s"] > 0, name
        assert run["finished"].startswith("20") and len(run["git_commit"].split("+")[0]) == 40, name
    for s in _strings([rec, exp.runs]):
        assert not (s.startswith("/") and Path(s).exists()), s
    assert "recorded:" in exp.label and rec["hardware"]["summary"] in exp.label


def _scores_are_consistent(encoder: dict, metrics=("val_knn", "test_knn", "test_linear_probe")) -> None:
    for pool in ("cls", "mean"):
        for metric in metrics:
            assert 0.1 < encoder[pool][metric] < 1.0, (pool, metric)
    assert encoder["pool_chosen_on_val"] == max(("cls", "mean"), key=lambda p: encoder[p]["val_knn"])


def test_the_recorded_experiments_ran_what_they_say():
    """Each pretraining ran the preset at its own mask ratio, seed and target on all of
    CIFAR-10 for the recorded number of epochs; each fine-tuning row had the recipe the
    chapter states (no layer decay from scratch, the blocks it names); the recorded
    encoder, read back from its half-precision file, gives eval.json's test kNN again."""
    script = _tool("record_experiments")
    exp = load_recorded_experiments()
    args = script.get_parser().parse_args(exp.recording["argv"])
    for spec in script.pretraining_runs():
        run = exp.runs[spec["name"]]
        argv = run["result"]["pretrain_argv"]
        flag = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
        assert float(flag["--mask_ratio"]) == spec["mask_ratio"] and int(flag["--seed"]) == spec["seed"]
        assert ("--norm_pix_loss" in argv) == spec["norm_pix_loss"] and ("--no_norm_pix_loss" in argv) != spec[
            "norm_pix_loss"]
        assert flag["--preset"] == "cpu_cifar10" and "--max_images" not in argv
        assert int(flag["--epochs"]) == args.pretrain_epochs == len(run["result"]["train_loss_by_epoch"])
        _scores_are_consistent(run["result"]["encoder"])
    ev = load_recorded_run(CPU_RUN).eval
    shipped = exp.runs["recorded-encoder"]["result"]
    for pool in ("cls", "mean"):
        assert shipped["trained"][pool]["test_knn"] == pytest.approx(ev[f"trained_{pool}"]["knn"], abs=0.005)
    _scores_are_consistent(shipped["trained"], metrics=("val_knn", "test_knn"))
    assert [b["block"] for b in shipped["blocks"]] == [1, 2, 3, 4] * 2
    for spec in script.finetuning_runs():
        res = exp.runs[spec["name"]]["result"]
        assert res["layer_decay"] == (1.0 if spec["start"] == "scratch" else args.layer_decay)
        assert res["trainable_blocks"] == (4 if spec["trainable_blocks"] is None else spec["trainable_blocks"])
        assert res["labelled_images"] == args.finetune_images and res["epochs"] == args.finetune_epochs
        per_class = res["labelled_per_class"]  # a shuffle of the training images, not the first classes
        assert sum(per_class) == args.finetune_images and min(per_class) > 0.5 * args.finetune_images / 10
        assert len(res["val_accuracy"]) == args.finetune_epochs and 0.1 < res["accuracy"] < 1.0
