"""Record the paper's experiments at small scale on CIFAR-10, for chapter 9 to show.

    python tools/record_experiments.py --data_path ../shared/data/cifar10-jpeg.tar.gz --probe
    python tools/record_experiments.py --data_path ../shared/data/cifar10-jpeg.tar.gz \\
        --out mae_from_scratch/recorded/cifar10-cpu-experiments \\
        --pretrain_epochs 4 --finetune_images 5000 --finetune_epochs 8

``tools/record_run.py`` records one pretraining run; this script records many small
ones and compares them, with the same provenance (hardware, commit, command, data
sha256, wall and CPU time, date) and the same evaluation protocol, every setting fixed
before anything ran:

* **pretraining** (the paper's Figure 5 and Table 1d): the ``cpu_cifar10`` preset for
  ``--pretrain_epochs`` whole short schedules on all 50,000 training images, at mask
  ratios 25, 50, 75 and 90% (seed 0), again at 75% with seed 1 (the seed-to-seed
  noise), and at 75% with raw pixels as the target.  Each encoder is scored by kNN on
  a validation split (5,000 training images, ``split_train_val``) to choose the
  pooling, and by kNN and the linear probe on the test split, cls and mean both;
* **the recorded encoder** (``mae_from_scratch/recorded/cifar10-cpu-vit-micro``,
  loaded from its half-precision file as a reader of the book loads it): its
  validation kNN per pooling, beside a random encoder's, and the linear probe and kNN
  of every block's output;
* **fine-tuning** (section 4 and Figure 9): on ``--finetune_images`` labelled
  training images (a seeded draw, every class about equally; none of the validation
  split), the recorded encoder fine-tuned
  with the package's recipe, against the same ViT from random weights with the
  paper's from-scratch recipe (no layer decay), two seeds each, at equal budgets;
  and partial fine-tuning of its last 0, 1 and 2 blocks (all 4 is the first row).

Each experiment is one file ``NAME.json`` in ``--out``, written (atomically) as soon
as it ends; an experiment whose file exists is not run again, so a killed recording
goes on where it stopped when the same command runs again.  ``recording.json`` keeps
the command, the probe, the hardware and every experiment's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from record_run import KNN, PROBE, decode, repo_relative  # noqa: E402

from mae_from_scratch import data as D  # noqa: E402
from mae_from_scratch.features import block_features  # noqa: E402
from mae_from_scratch.finetune import finetune, finetune_transform  # noqa: E402
from mae_from_scratch.knn import knn_accuracy  # noqa: E402
from mae_from_scratch.linear_probe import linear_probe  # noqa: E402
from mae_from_scratch.model import create_model  # noqa: E402
from mae_from_scratch.pretrain import pretrain  # noqa: E402
from mae_from_scratch.recorded_runs import load_recorded_model  # noqa: E402
from mae_from_scratch.run_info import cpu_seconds, file_sha256, git_commit, hardware, write_json  # noqa: E402
from mae_from_scratch.timing import train_step_images_per_s  # noqa: E402
from mae_from_scratch.validation import split_train_val  # noqa: E402

PRESET = "cpu_cifar10"
MODEL = "mae_vit_micro_patch4_32"
RATIOS = (0.25, 0.5, 0.75, 0.9)
VAL_IMAGES = 5000
POOLS = ("cls", "mean")
FINETUNE = dict(blr=1e-3, weight_decay=0.05, warmup_epochs=1.0, pool="cls", drop_path=0.1, smoothing=0.1)


def pretraining_runs() -> list[dict]:
    runs = [dict(name=f"pretrain-mask{int(r * 100):02d}-seed0", mask_ratio=r, seed=0, norm_pix_loss=True)
            for r in RATIOS]
    runs.append(dict(name="pretrain-mask75-seed1", mask_ratio=0.75, seed=1, norm_pix_loss=True))
    runs.append(dict(name="pretrain-mask75-pixels-seed0", mask_ratio=0.75, seed=0, norm_pix_loss=False))
    return runs


def finetuning_runs() -> list[dict]:
    runs = [dict(name=f"finetune-{start}-seed{s}", start=start, seed=s, trainable_blocks=None)
            for s in (0, 1) for start in ("pretrained", "scratch")]
    runs += [dict(name=f"partial-{k}blocks-seed0", start="pretrained", seed=0, trainable_blocks=k) for k in (0, 1, 2)]
    return runs


class Data:
    """CIFAR-10 through the evaluation transform, decoded once: train, its validation split, test."""

    def __init__(self, a):
        info = D.dataset_info("cifar10")
        self.mean, self.std = info.mean, info.std
        t = D.eval_transform(32, info.mean, info.std)
        train = D.build_dataset("cifar10", "train", a.data_path, transform=t)
        test = D.build_dataset("cifar10", "test", a.data_path, transform=t, classes=train.classes)
        if a.max_images:  # tiny dry runs only
            train, test = D.subset(train, a.max_images), D.subset(test, a.max_images // 4)
        self.xtr, self.ytr = decode(train, a.num_workers)
        self.xte, self.yte = decode(test, a.num_workers)
        n_val = min(VAL_IMAGES, len(self.ytr) // 10)
        self.fit_idx, self.val_idx = split_train_val(len(self.ytr), n_val, seed=0)


@torch.no_grad()
def pooled(model, x) -> dict:
    model.eval()
    tokens = torch.cat([model.forward_features(b, pool="none") for b in x.split(512)])
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(dim=1)}


def score_encoder(model, d: Data, probe: bool = True) -> dict:
    """kNN on validation (the pooling is chosen there), kNN and linear probe on test."""
    ftr, fte = pooled(model, d.xtr), pooled(model, d.xte)
    fit, val = torch.tensor(d.fit_idx), torch.tensor(d.val_idx)
    out = {}
    for pool in POOLS:
        r = {"val_knn": knn_accuracy(ftr[pool][fit], d.ytr[fit], ftr[pool][val], d.ytr[val], num_classes=10, **KNN),
             "test_knn": knn_accuracy(ftr[pool], d.ytr, fte[pool], d.yte, num_classes=10, **KNN)}
        if probe:
            r["test_linear_probe"] = linear_probe(ftr[pool], d.ytr, fte[pool], d.yte, 10, seed=0, **PROBE)
        out[pool] = {k: round(v, 4) for k, v in r.items()}
    out["pool_chosen_on_val"] = max(POOLS, key=lambda p: out[p]["val_knn"])
    return out


@torch.no_grad()
def test_loss(model, d: Data, mask_ratio: float) -> float:
    """The masked loss on the test images at ``mask_ratio``, the same masks for every model."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for x in d.xte.split(512):
        noise = torch.rand(x.shape[0], model.patch_embed.num_patches, generator=g)
        loss, _, _ = model(x, mask_ratio, noise=noise)
        total += loss.item() * x.shape[0]
    return round(total / len(d.xte), 4)


def run_pretraining(spec: dict, a, d: Data) -> dict:
    work = Path(a.work) / spec["name"]
    argv = ["--preset", PRESET, "--data_path", a.data_path, "--dataset", "cifar10",
            "--epochs", str(a.pretrain_epochs), "--warmup_epochs", str(a.warmup_epochs),
            "--mask_ratio", str(spec["mask_ratio"]), "--seed", str(spec["seed"]),
            "--no_norm_pix_loss" if not spec["norm_pix_loss"] else "--norm_pix_loss",
            "--output_dir", str(work), "--overwrite", "--no_progress", "--recon_every", "0", "--device", "cpu"]
    if a.max_images:
        argv += ["--max_images", str(a.max_images)]
    result = pretrain(argv=argv)
    model = result.model.eval()
    log = result.epoch_log
    return {"pretrain_argv": argv, "train_loss_by_epoch": [round(r["train_loss"], 4) for r in log],
            "test_loss_own_ratio": test_loss(model, d, spec["mask_ratio"]),
            "test_loss_at_75": test_loss(model, d, 0.75), "encoder": score_encoder(model, d)}


def run_recorded_encoder(a, d: Data) -> dict:
    trained = load_recorded_model()
    torch.manual_seed(0)
    random = create_model(MODEL, norm_pix_loss=True).eval()
    out = {"trained": score_encoder(trained, d, probe=False), "random": score_encoder(random, d, probe=False)}
    pool = out["trained"]["pool_chosen_on_val"]
    blocks = []
    for name, model in (("trained", trained), ("random", random)):
        btr = torch.cat([block_features(model, x, pool) for x in d.xtr.split(512)], dim=1)
        bte = torch.cat([block_features(model, x, pool) for x in d.xte.split(512)], dim=1)
        for k in range(btr.shape[0]):
            blocks.append({"encoder": name, "block": k + 1, "pool": pool,
                           "test_knn": round(knn_accuracy(btr[k], d.ytr, bte[k], d.yte, num_classes=10, **KNN), 4),
                           "test_linear_probe": round(linear_probe(btr[k], d.ytr, bte[k], d.yte, 10, seed=0,
                                                                   **PROBE), 4)})
    out["blocks"] = blocks
    return out


def run_finetuning(spec: dict, a, d: Data) -> dict:
    info = D.dataset_info("cifar10")
    aug = D.build_dataset("cifar10", "train", a.data_path, transform=finetune_transform(32, info.mean, info.std))
    # N images of a seeded shuffle of the fit split (no validation image).  The split is sorted, and the
    # image folders by class: its first N would be one or two classes.
    order = torch.randperm(len(d.fit_idx), generator=torch.Generator().manual_seed(0))
    labelled = [d.fit_idx[i] for i in order[:a.finetune_images].tolist()]
    per_class = torch.bincount(d.ytr[labelled], minlength=10).tolist()
    if min(per_class) == 0:
        raise ValueError(f"the labelled images miss a class: {per_class} per class")
    if a.max_images:
        aug = D.subset(aug, a.max_images)
    g = torch.Generator().manual_seed(spec["seed"])
    train_loader = DataLoader(Subset(aug, labelled), batch_size=a.finetune_batch, shuffle=True, generator=g,
                              drop_last=True, num_workers=a.num_workers, persistent_workers=a.num_workers > 0)
    val = torch.tensor(d.val_idx)
    val_loader = list(zip(d.xtr[val].split(512), d.ytr[val].split(512)))
    test_loader = list(zip(d.xte.split(512), d.yte.split(512)))
    if spec["start"] == "pretrained":
        encoder, layer_decay = copy.deepcopy(load_recorded_model()), a.layer_decay
    else:  # the paper's from-scratch baseline: the same ViT, random weights, no layer decay
        torch.manual_seed(spec["seed"])
        encoder, layer_decay = create_model(MODEL, norm_pix_loss=True), 1.0
    res = finetune(encoder, train_loader, test_loader, 10, epochs=a.finetune_epochs, seed=spec["seed"],
                   layer_decay=layer_decay, trainable_blocks=spec["trainable_blocks"], val_loader=val_loader,
                   return_details=True, **FINETUNE)
    res["labelled_images"] = len(labelled)
    res["labelled_per_class"] = per_class
    res["batch_size"] = a.finetune_batch
    res["val_accuracy"] = [round(v, 4) for v in res["val_accuracy"]]
    return res


def probe_throughput(a) -> dict:
    """Images per second of pretraining's and fine-tuning's model steps, which set the budgets."""
    pre = train_step_images_per_s(create_model(MODEL, norm_pix_loss=True), 256, torch.device("cpu"), "fp32",
                                  steps=8, warmup=3, compile=False)["images_per_s"]
    d = Data(argparse.Namespace(**{**vars(a), "max_images": 2048}))
    t0 = time.perf_counter()
    run_finetuning(dict(start="scratch", seed=0, trainable_blocks=None),
                   argparse.Namespace(**{**vars(a), "finetune_images": 1024, "finetune_epochs": 2}), d)
    ft = 2 * 1024 / (time.perf_counter() - t0)
    return {"pretrain_model_images_per_s": round(pre, 1), "finetune_images_per_s_with_loader": round(ft, 1)}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_path", required=True, help="the CIFAR-10 ImageFolder archive (or a torchvision root)")
    p.add_argument("--out", default="mae_from_scratch/recorded/cifar10-cpu-experiments")
    p.add_argument("--work", default=".cache/experiments", help="the pretraining runs' folders")
    p.add_argument("--probe", action="store_true", help="only measure the throughput that sets the budgets")
    p.add_argument("--only", nargs="*", default=None, help="run only these experiments (names or prefixes)")
    p.add_argument("--pretrain_epochs", type=int, default=6)
    p.add_argument("--warmup_epochs", type=float, default=1)
    p.add_argument("--finetune_images", type=int, default=5000)
    p.add_argument("--finetune_epochs", type=int, default=15)
    p.add_argument("--finetune_batch", type=int, default=128)
    p.add_argument("--layer_decay", type=float, default=0.75)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--max_images", type=int, default=None, help="tiny dry runs only")
    return p


def main(argv=None) -> int:
    a = get_parser().parse_args(argv)
    a.data_path, a.out, a.work = (repo_relative(x) for x in (a.data_path, a.out, a.work))
    os.chdir(ROOT)
    if a.probe:
        print(json.dumps(probe_throughput(a)))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rec_path = out / "recording.json"
    recording = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    argv = argv if argv is not None else sys.argv[1:]
    recording.setdefault("invocations", []).append(
        {"argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    recording.update({"script": "tools/record_experiments.py", "argv": argv,
                      "git_commit": git_commit(ROOT), "hardware": hardware("cpu"), "niceness": os.nice(0),
                      "data_sha256": file_sha256(a.data_path) if Path(a.data_path).is_file() else None,
                      "data_note": "a JPEG re-encoding of CIFAR-10 (Krizhevsky, 2009): close to, not identical "
                                   "with, the original images",
                      "finetune_recipe": FINETUNE, "knn": KNN, "linear_probe": PROBE})
    recording.setdefault("experiments", {})
    if "probe" not in recording:  # the throughput the budgets were chosen from, measured on this machine
        recording["probe"] = probe_throughput(a)
    write_json(rec_path, recording)
    d = Data(a)
    # The recorded encoder's experiments first: they are the cheapest, and chapter 9 leans on them most.
    specs = ([dict(name="recorded-encoder", kind="recorded-encoder")]
             + [dict(s, kind="finetuning") for s in finetuning_runs()]
             + [dict(s, kind="pretraining") for s in pretraining_runs()])
    for spec in specs:
        name, path = spec["name"], out / f"{spec['name']}.json"
        if (a.only is not None and not any(name.startswith(o) for o in a.only)) or path.is_file():
            continue
        print(f"{name} ...", flush=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        run = {"pretraining": run_pretraining, "finetuning": run_finetuning}.get(spec["kind"])
        result = run(spec, a, d) if run else run_recorded_encoder(a, d)
        wall, cpu = round(time.perf_counter() - t0, 1), round(cpu_seconds() - c0, 1)
        write_json(path, {**spec, "result": result, "wall_s": wall, "cpu_s": cpu,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": git_commit(ROOT),
                          "hardware": hardware("cpu")["summary"]})
        recording["experiments"][name] = {"wall_s": wall, "cpu_s": cpu}
        write_json(rec_path, recording)
        print(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
