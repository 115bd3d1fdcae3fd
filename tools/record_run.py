"""Record a pretraining run for the book: train, evaluate, and keep the small artifacts.

    nice -n 19 python tools/record_run.py --data_path ../shared/data/cifar10-jpeg.tar.gz \\
        --preset cpu_cifar10 --budget_min 55 --out mae_from_scratch/recorded/cifar10-cpu-vit-micro

The book reads its recorded runs from ``mae_from_scratch/recorded/NAME/``
(:mod:`mae_from_scratch.recorded_runs`).  The script works from the repository
root: the paths it is given (from any folder) are turned into paths relative to
the root, and those are the ones it passes to the engine and writes down, so that
a recorded run names no folder of the machine that made it (the data archive is
identified by its sha256); ``tests/test_recorded_run.py`` checks that neither
``recording.json`` nor ``run.json`` holds an absolute path.

1. A short throughput probe on the training device sets ``--epochs`` so that the
   whole schedule (warmup and the full half-cosine) fits in ``--budget_min`` minutes
   at the probed speed.  A schedule is never cut short.
2. The package's engine trains (``pretrain``), with reconstruction pictures of
   fixed held-out test images every ``--recon_every`` epochs.  Its checkpoints
   and full logs stay in ``--work``; they are not part of the recorded run.
3. The trained encoder and a randomly initialized one of the same shape are
   evaluated on frozen features (kNN and linear probe, cls token and mean of the
   patch tokens), beside a raw-pixel kNN.  Every setting is fixed beforehand (the
   package's defaults): nothing is tuned on the test split, so each test number is
   reported once.
4. The attention weights of the trained encoder on the pictured held-out images,
   and their reconstructions at mask ratios from 50% to 90%, are saved.

Artifacts are copied into ``--out`` as soon as each exists, so a run stopped
midway still leaves what it did: ``run.json`` (what the engine writes for every
run: hardware, commit, command, data, times), ``log.txt`` (per epoch),
``log_steps.jsonl`` (every step of the first 100, then every 10th),
``recon/epoch-NNNN.png``, ``mask_ratios.png``, ``attention.npz``, ``eval.json``,
``model-fp16.pth`` (the trained model in half precision, about 1.1 MB, which
``recorded_runs.load_recorded_model`` loads) and ``recording.json`` (what this
script did: its arguments, its probe, how long each part took, the model file's
sha256).  No checkpoint is copied; every other file stays under 1 MB.

A recording never mixes with an older one.  Before anything runs, the script
refuses an ``--out`` that already holds a recorded run's files, and a ``--work``
that holds a run (the engine's rule: ``checkpoint-last.pth`` or ``log.txt``), each
with one line naming the folder; ``--overwrite`` replaces both.  The engine clears
the old run in ``--work`` (its own ``--overwrite``), and the script deletes the old
record's files from ``--out``: the files named above, one by one, not the folder
with whatever is in it.  An ``--out`` that holds anything else is refused, with or
without ``--overwrite``, so a mistyped ``--out`` (a parent folder, the repository)
is refused, not emptied, and only files named as a record's are ever deleted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mae_from_scratch import data as D  # noqa: E402
from mae_from_scratch.features import POOLS, encoder_attention, extract_features  # noqa: E402
from mae_from_scratch.knn import knn_accuracy  # noqa: E402
from mae_from_scratch.linear_probe import linear_probe  # noqa: E402
from mae_from_scratch.metrics import EPOCH_LOG, STEP_LOG, read_jsonl  # noqa: E402
from mae_from_scratch.model import create_model  # noqa: E402
from mae_from_scratch.pretrain import pretrain  # noqa: E402
from mae_from_scratch.recorded_runs import MODEL_FILE, RECORDING, save_recorded_model  # noqa: E402
from mae_from_scratch.run_config import parse_args as parse_pretrain_args  # noqa: E402
from mae_from_scratch.run_folder import LAST_CHECKPOINT, holds_run  # noqa: E402
from mae_from_scratch.run_info import RUN_INFO, cpu_seconds, file_sha256, hardware, write_json  # noqa: E402
from mae_from_scratch.snapshots import RECON_DIR, heldout_images, mask_ratio_rows, save_grid  # noqa: E402
from mae_from_scratch.timing import train_step_images_per_s  # noqa: E402

MASK_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)
KNN = dict(k=20, temperature=0.07)
PROBE = dict(epochs=90, blr=0.1, weight_decay=0.0)
STEP_LOG_DENSE = 100  # every step of the first 100 is kept, then every 10th
# The files of a recorded run (the docstring's list), besides the pictures recon/epoch-NNNN.png.
RECORD_FILES = (RUN_INFO, EPOCH_LOG, STEP_LOG, "mask_ratios.png", "attention.npz", "eval.json", MODEL_FILE, RECORDING)
RECON_PICTURE = re.compile(r"epoch-\d+\.png")


def repo_relative(path) -> str:
    """``path`` (relative to the current folder, or absolute) relative to the repository root,
    e.g. ``../shared/data/cifar10-jpeg.tar.gz`` for the shared data beside the checkout.
    Symbolic links are kept, not followed.  Where no relative path exists (another drive on
    Windows), the absolute one."""
    try:
        return Path(os.path.relpath(os.path.abspath(os.path.expanduser(str(path))), ROOT)).as_posix()
    except ValueError:
        return str(path)


def without_machine_paths(obj):
    """``obj`` (run.json's contents) with every absolute path made relative to the repository
    root: the engine records the absolute data path it derived, which names this machine."""
    if isinstance(obj, dict):
        return {k: without_machine_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_machine_paths(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and os.path.exists(obj):
        return repo_relative(obj)
    return obj


def copy_run_files(work: Path, out: Path) -> None:
    """The small files of the run folder, into the recorded run's folder (the step log thinned)."""
    if (work / RUN_INFO).is_file():
        write_json(out / RUN_INFO, without_machine_paths(json.loads((work / RUN_INFO).read_text())))
    if (work / "log.txt").is_file():
        shutil.copyfile(work / "log.txt", out / "log.txt")
    steps = work / "log_steps.jsonl"
    if steps.is_file():
        rows = [r for r in read_jsonl(steps) if r["step"] <= STEP_LOG_DENSE or r["step"] % 10 == 0]
        (out / "log_steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if (work / "recon").is_dir():
        (out / "recon").mkdir(exist_ok=True)
        for png in sorted((work / "recon").glob("epoch-*.png")):
            if RECON_PICTURE.fullmatch(png.name):  # not a picture being written (epoch-NNNN.tmp.png)
                shutil.copyfile(png, out / "recon" / png.name)


def _record_name(name: str) -> bool:
    """A name a record's file is written as, or its temporary, which a kill can leave behind
    (``eval.json.tmp`` from :func:`~mae_from_scratch.run_info.write_json`, ``mask_ratios.tmp.png``
    from :func:`~mae_from_scratch.snapshots.save_grid`)."""
    return any(n in RECORD_FILES for n in (name, name.removesuffix(".tmp"), name.replace(".tmp.", ".", 1)))


def record_contents(out: Path) -> tuple[list[Path], list[Path]]:
    """``(files of a recorded run, everything else)`` in the folder ``out``: the names a record
    is written as (:func:`_record_name`) and the pictures in ``recon/`` against the rest.  A
    link counts as the rest: it may lead out of the folder."""
    ours, others = [], []
    if not out.is_dir():
        return ours, others
    for p in sorted(out.iterdir()):
        if p.name == RECON_DIR and p.is_dir() and not p.is_symlink():
            for q in sorted(p.iterdir()):
                mine = q.is_file() and not q.is_symlink() and RECON_PICTURE.fullmatch(q.name.replace(".tmp.", ".", 1))
                (ours if mine else others).append(q)
        elif p.is_file() and not p.is_symlink() and _record_name(p.name):
            ours.append(p)
        else:
            others.append(p)
    return ours, others


def _named(paths: list[Path], folder: Path) -> str:
    """A few of ``paths``, relative to ``folder``, for a one-line message."""
    names = [p.relative_to(folder).as_posix() for p in paths[:3]]
    return ", ".join(names) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def check_folders(a: argparse.Namespace) -> None:
    """Refuse, before anything runs, folders that would mix this recording with something
    else: an ``--out`` holding a record or files that are not a record's, a ``--work`` holding
    a run (both allowed with ``--overwrite``), or the two folders overlapping."""
    out, work = (Path(os.path.expanduser(p)) for p in (a.out, a.work))
    for flag, folder in (("--out", out), ("--work", work)):
        if folder.exists() and not folder.is_dir():
            raise SystemExit(f"{flag} {folder} is a file, not a folder; choose another {flag}")
    o, w = out.resolve(), work.resolve()
    if o == w or o in w.parents or w in o.parents:
        # The engine's logs and pictures would be the record's own files, or its checkpoints would land in it.
        raise SystemExit(f"--out {out} and --work {work} overlap; the recorded run and the run folder "
                         "(checkpoints, full logs) must be two separate folders")
    ours, others = record_contents(out)
    if others:
        raise SystemExit(f"--out {out} holds what is not part of a recorded run ({_named(others, out)}); choose "
                         "a new or empty folder for --out (--overwrite replaces only a recorded run's own files)")
    if ours and not a.overwrite:
        raise SystemExit(f"--out {out} already holds a recorded run ({_named(ours, out)}); pass --overwrite to "
                         "replace it, or choose another --out")
    if holds_run(work) and not a.overwrite:  # the engine's own rule for a folder that holds a run
        what = LAST_CHECKPOINT if (work / LAST_CHECKPOINT).is_file() else EPOCH_LOG
        raise SystemExit(f"--work {work} already holds a run ({what}); pass --overwrite to replace it, "
                         "or choose another --work")


def clear_record(out: Path) -> None:
    """Starting over (``--overwrite``): the old record's files go, nothing else (the folder
    held nothing else when it was checked)."""
    for p in record_contents(out)[0]:
        p.unlink()
    recon = out / RECON_DIR
    if recon.is_dir() and not recon.is_symlink() and not any(recon.iterdir()):
        recon.rmdir()


def decode(ds, num_workers: int):
    """Every image of ``ds`` through its transform, once: ``(images, labels)`` tensors.
    The features of both encoders and the raw-pixel kNN all read these."""
    xs, ys = zip(*DataLoader(ds, batch_size=512, num_workers=num_workers))
    return torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])


def features(model, images, labels, device) -> dict:
    """``{pool: features}`` of ``images`` for the cls token and the mean of the patch tokens,
    by :func:`~mae_from_scratch.features.extract_features` (fp32, batches of 512).  It gives
    one pooling per pass, so the encoder runs twice over the images: one forward pass more
    than the two poolings need."""
    batches = list(zip(images.split(512), labels.split(512)))
    return {pool: extract_features(model, batches, pool=pool, device=device)[0] for pool in POOLS}


def evaluate_encoders(trained, args, device, out: Path, log) -> dict:
    """kNN and linear probe for the trained and a random encoder, cls and mean; a raw-pixel kNN."""
    t_eval = D.eval_transform(args.input_size, args.mean, args.std)
    train = D.build_dataset(args.dataset, "train", args.data_path, transform=t_eval)
    test = D.build_dataset(args.dataset, "test", args.data_path, transform=t_eval,
                           classes=getattr(train, "classes", None))
    num_classes = len(train.classes)
    if args.eval_max:  # tiny dry runs only
        train, test = D.subset(train, args.eval_max, args.seed), D.subset(test, args.eval_max // 4, args.seed)
    xtr, ytr = decode(train, args.num_workers)
    xte, yte = decode(test, args.num_workers)
    torch.manual_seed(args.seed)
    random = create_model(args.model, norm_pix_loss=args.norm_pix_loss).to(device)
    result = {"protocol": {
        "features": "encoder output after its final LayerNorm, all patches, no masking, no augmentation",
        "knn": KNN, "linear_probe": {**PROBE, "batch_size": 256, "optimizer": "SGD momentum 0.9, cosine",
                                     "head": "BatchNorm1d(affine=False) + Linear"},
        "tuning": "none: every setting is the package's default, fixed before the run; the test split "
                  "is evaluated once",
        "train_images": len(train), "test_images": len(test), "num_classes": num_classes,
        "random_encoder": f"{args.model} initialized with seed {args.seed}, untrained",
    }}
    write_json(out / "eval.json", result)
    for name, model in (("trained", trained), ("random", random)):
        t0 = time.perf_counter()
        ftr, fte = features(model, xtr, ytr, device), features(model, xte, yte, device)
        for pool in POOLS:
            knn = knn_accuracy(ftr[pool], ytr, fte[pool], yte, num_classes=num_classes, **KNN)
            probe = linear_probe(ftr[pool], ytr, fte[pool], yte, num_classes, seed=args.seed, device=device, **PROBE)
            result[f"{name}_{pool}"] = {"knn": round(knn, 4), "linear_probe": round(probe, 4)}
            log(f"{name} encoder, {pool}: kNN {knn:.2%}, linear probe {probe:.2%}")
            write_json(out / "eval.json", result)
        result[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    # Raw pixels (the normalized 32x32x3 image as one vector): the floor any feature must beat.
    acc = knn_accuracy(xtr.flatten(1), ytr, xte.flatten(1), yte, num_classes=num_classes, **KNN)
    result["raw_pixels"] = {"knn": round(acc, 4)}
    log(f"raw pixels: kNN {acc:.2%}")
    write_json(out / "eval.json", result)
    return result


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu_cifar10")
    p.add_argument("--data_path", required=True, help="the CIFAR-10 ImageFolder archive (or a torchvision root)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--budget_min", type=float, default=None,
                   help="minutes the whole schedule may take at the probed speed (or give --epochs)")
    p.add_argument("--efficiency", type=float, default=0.9,
                   help="share of the probed model speed the full run is expected to reach")
    p.add_argument("--out", required=True,
                   help="the recorded run's folder, e.g. mae_from_scratch/recorded/NAME (the chapters read it)")
    p.add_argument("--work", default=".cache/recorded-run", help="run folder (checkpoints, full logs)")
    p.add_argument("--device", default=None)
    p.add_argument("--recon_every", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="skip the probe and train this many epochs")
    p.add_argument("--max_images", type=int, default=None, help="tiny dry runs only")
    p.add_argument("--eval_max", type=int, default=None, help="tiny dry runs only: evaluate on this many images")
    p.add_argument("--compile", default="preset", choices=("preset", "on", "off"),
                   help="torch.compile the model during pretraining: the preset's choice, or on/off")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --work and the recorded run in --out (without it, either is refused)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The script's arguments, checked (exactly one of ``--budget_min`` and ``--epochs``)."""
    p = get_parser()
    a = p.parse_args(argv)
    if (a.budget_min is None) == (a.epochs is None):
        p.error("give one of --budget_min (the probe sets --epochs) and --epochs")
    return a


def as_argv(a: argparse.Namespace) -> list[str]:
    """The flags that give ``a``, in the parser's order: ``--preset``, the required ones, and
    the others not at their default.  ``recording.json`` keeps them as ``argv``, with paths
    relative to the repository root."""
    argv = []
    for action in get_parser()._actions:
        value = getattr(a, action.dest, None)
        if action.option_strings and action.dest != "help" and value is not None and (
                value != action.default or action.required or action.dest == "preset"):
            # A switch (--overwrite) is given by its name alone.
            argv += [action.option_strings[0]] + ([str(value)] if action.nargs != 0 else [])
    return argv


def main(argv=None) -> int:
    a = parse_args(argv)
    check_folders(a)  # with the paths as given, so that a refusal names them so
    # Every path from here on is relative to the repository root, and the script works there.
    for name in ("data_path", "out", "work"):
        setattr(a, name, repo_relative(getattr(a, name)))
    assert parse_args(as_argv(a)) == a
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return record_run(a)
    finally:
        os.chdir(cwd)


def record_run(a: argparse.Namespace) -> int:
    """Probe, train, draw, evaluate: the numbered steps above, from the repository root."""
    out, work = Path(a.out), Path(a.work)
    t_all, cpu_all = time.perf_counter(), cpu_seconds()
    recording = {"script": "tools/record_run.py", "argv": as_argv(a), "niceness": os.nice(0), "parts": {}}
    lines = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)
        recording["messages"] = lines
        write_json(out / RECORDING, recording)

    overrides = {k: v for k, v in dict(data_path=a.data_path, dataset=a.dataset, device=a.device,
                                       recon_every=a.recon_every, max_images=a.max_images).items()
                 if v is not None}
    args = parse_pretrain_args(["--preset", a.preset], **overrides)
    device = torch.device(args.device)
    n_train = a.max_images or len(D.build_dataset(args.dataset, "train", args.data_path))
    # The old record goes only now that the preset (and the data) have been read, and before
    # the first file of the new one is written.
    if a.overwrite:
        clear_record(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. The probe: model-only training steps at the preset's batch size.
    if a.epochs is None:
        t0 = time.perf_counter()
        probe = train_step_images_per_s(create_model(args.model, norm_pix_loss=True), args.batch_size, device,
                                        args.precision, steps=8, warmup=3, compile=False)
        ips = probe["images_per_s"] * a.efficiency
        epochs = max(2, math.floor(a.budget_min * 60 * ips / n_train))
        recording["probe"] = {"model_images_per_s": round(probe["images_per_s"], 1), "efficiency": a.efficiency,
                              "planned_images_per_s": round(ips, 1), "train_images": n_train,
                              "budget_min": a.budget_min, "epochs": epochs,
                              "seconds": round(time.perf_counter() - t0, 1)}
        log(f"probe: {probe['images_per_s']:.0f} img/s for the model alone; {epochs} epochs of {n_train} images "
            f"fit {a.budget_min} min at {ips:.0f} img/s")
    else:
        epochs = a.epochs
    warmup = min(args.warmup_epochs, max(1, epochs // 10))
    command = ["--preset", a.preset, "--data_path", str(args.data_path), "--dataset", args.dataset,
               "--epochs", str(epochs), "--warmup_epochs", str(warmup), "--output_dir", str(work),
               "--no_progress", "--device", str(device)]
    if a.overwrite:  # the engine clears the old run in --work itself (and refuses it without this flag)
        command.append("--overwrite")
    if a.recon_every is not None:
        command += ["--recon_every", str(a.recon_every)]
    if a.max_images is not None:
        command += ["--max_images", str(a.max_images)]
    if a.compile != "preset":
        command.append("--compile" if a.compile == "on" else "--no_compile")
    recording["pretrain_argv"] = command
    log("pretrain: python -m mae_from_scratch.pretrain " + " ".join(command))

    # 2. Pretraining; the recorded run's folder is refreshed every 30 s (a background copy).
    t0 = time.perf_counter()
    stop = threading.Event()
    old_info = (work / RUN_INFO).read_bytes() if (work / RUN_INFO).is_file() else None

    def copy_this_run():
        # Only once the engine has begun this run (its run.json is new): with --overwrite it
        # clears the old run in --work after loading the data, which may take longer than 30 s,
        # and a run it refuses clears nothing; the old run's files must not reach the record.
        try:
            if (work / RUN_INFO).read_bytes() != old_info:
                copy_run_files(work, out)
        except FileNotFoundError:
            pass

    def refresh():
        while not stop.wait(30):
            try:
                copy_this_run()
            except (OSError, ValueError):
                pass

    th = threading.Thread(target=refresh, daemon=True)
    th.start()
    try:
        result = pretrain(argv=command)  # run.json keeps the command as these flags
    finally:
        stop.set()
        th.join()
        copy_this_run()
    recording["parts"]["pretrain_s"] = round(time.perf_counter() - t0, 1)
    log(f"pretraining done in {recording['parts']['pretrain_s']:.0f} s")
    run_args = parse_pretrain_args(command)
    run_args.input_size = result.model.img_size
    info = D.dataset_info(run_args.dataset)
    run_args.mean, run_args.std = list(info.mean), list(info.std)
    run_args.eval_max = a.eval_max
    model = result.model.eval()
    # The trained model ships with the record (half precision, about 1.1 MB), named by its sha256.
    recording["model_sha256"] = save_recorded_model(model, run_args.model, out / MODEL_FILE)
    log(f"saved {MODEL_FILE}")

    # 3. Mask ratios and attention, on the pictured held-out images.
    t0 = time.perf_counter()
    imgs, labels, names = heldout_images(run_args.dataset, run_args.data_path, run_args.recon_images,
                                         run_args.input_size, info.mean, info.std, seed=run_args.seed)
    save_grid(mask_ratio_rows(model, imgs, info.mean, info.std, MASK_RATIOS, seed=run_args.seed),
              out / "mask_ratios.png")
    att = encoder_attention(model, imgs)  # (n, depth, heads, T, T)
    np.savez_compressed(out / "attention.npz", cls_to_patches=att[:, :, :, 0, 1:].numpy().astype(np.float16),
                        last_block=att[:, -1].numpy().astype(np.float16), labels=np.array(labels),
                        names=np.array(names), mask_ratios=np.array(MASK_RATIOS))
    recording["parts"]["pictures_s"] = round(time.perf_counter() - t0, 1)
    recording["heldout_images"] = names
    log("saved mask_ratios.png and attention.npz")

    # 4. Frozen-feature evaluation.
    t0 = time.perf_counter()
    evaluate_encoders(model, run_args, device, out, log)
    recording["parts"]["evaluation_s"] = round(time.perf_counter() - t0, 1)
    recording["wall_s"] = round(time.perf_counter() - t_all, 1)
    recording["cpu_s"] = round(cpu_seconds() - cpu_all, 1)
    recording["hardware"] = hardware(device)
    if Path(str(args.data_path)).is_file():
        recording["data_sha256"] = file_sha256(args.data_path)
    recording["data_note"] = ("a JPEG re-encoding of CIFAR-10 (Krizhevsky, 2009): close to, not identical with, "
                              "the original images")
    log(f"all done in {recording['wall_s']:.0f} s wall, {recording['cpu_s']:.0f} s CPU")
    copy_this_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
