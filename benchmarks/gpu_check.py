"""Everything a short GPU session should measure, in one command that writes as it goes.

    python benchmarks/gpu_check.py --cifar10 data/cifar10-jpeg.tar.gz --out "$OUT"
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu-check        # the same stages, tiny, on a CPU

Four stages, each timed, each recorded in ``OUT/gpu_check.json`` the moment it
ends (a stage that fails records its error and the next one starts):

1. ``throughput``: a training step (forward under bf16 autocast, backward,
   AdamW step) of our ``mae_vit_base_patch16`` and of Hugging Face's
   ``ViTMAEForPreTraining`` with the same configuration (SDPA attention), eager
   and compiled, at the largest batch of ``--vitb_batches`` that fits in
   memory: images/s, HF's step time over ours, MFU against the GPU's dense
   bf16 peak (:func:`mae_from_scratch.hf_compare.compare_with_hf`).
2. ``loader``: the ``gpu_cifar10`` preset's device loader (CIFAR-10 decoded
   once onto the GPU, crops made there) against that preset's training step,
   eager and compiled (:func:`~mae_from_scratch.timing.loader_images_per_s`,
   :func:`~mae_from_scratch.timing.train_step_images_per_s`).
3. ``resume``: a pretraining run in a subprocess is killed (SIGKILL) once its
   first ``--save_every_steps`` checkpoint exists, resumed with ``--resume``,
   and its per-step losses after the resume are compared with those of an
   uninterrupted run (run beside it, same flags).
4. ``record``: a recorded pretraining run through ``tools/record_run.py``:
   ViT-Tiny/4 on all of CIFAR-10 (the ``gpu_cifar10`` recipe, bf16), epochs
   chosen from stage 2's measured speed so that the whole schedule (warmup and
   the full cosine) fits the time left, reconstruction pictures, frozen-feature
   evaluation.  Compiled when stage 2 shows that compiling pays within the run
   (``--record_compile auto``).  It runs last and takes whatever time the
   others left of ``--budget_s``, so a stage that ran long shortens the run
   instead of pushing the command past its limit.

Nothing needs Jupyter, the test tools or ``../shared``: the CIFAR-10 archive is
``--cifar10``.  With ``--tiny`` every stage runs on tiny models (ViT-micro/4 and
an HF model of its shape) and tiny data (an ImageFolder of crops of the
package's photographs, or ``--cifar10`` cut down) for a few steps; the test
``tests/test_gpu_check.py`` runs it so that the script works the first time it
meets a GPU.  Checkpoints and run folders go to a temporary ``--work`` folder;
``OUT`` gets only logs, JSON and pictures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Runs from a checkout without installing the package: the repository root first on the path.
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(HERE))

import torch  # noqa: E402

from mae_from_scratch.data import CIFAR10_CLASSES  # noqa: E402
from mae_from_scratch.hf_compare import compare_with_hf  # noqa: E402
from mae_from_scratch.metrics import read_jsonl  # noqa: E402
from mae_from_scratch.model import create_model  # noqa: E402
from mae_from_scratch.photos import PhotoCrops  # noqa: E402
from mae_from_scratch.run_config import parse_args as pretrain_args  # noqa: E402
from mae_from_scratch.run_info import hardware, write_json  # noqa: E402
from mae_from_scratch.timing import (  # noqa: E402
    gpu_peak_tflops, loader_images_per_s, train_step_images_per_s,
)
from mae_from_scratch.training_checkpoint import load_training_checkpoint  # noqa: E402

STAGES = ("throughput", "loader", "resume", "record")

# What each size of check runs.  The GPU sizes fit an H200 in about nine minutes in all.
GPU = dict(
    big_model="mae_vit_base_patch16", big_batches=(512, 256, 128, 64, 32, 16, 8), steps=10, warmup=3,
    small_model="mae_vit_tiny_patch4_32", loader_batch=None, loader_batches=50, loader_warmup=4,
    preset="gpu_cifar10", num_workers=8, max_images=None,
    # resume: 8,192 images in batches of 512 (16 steps an epoch), killed after the step-5 checkpoint,
    # compared up to step 40 (inside epoch 2, so the last step is saved and weights compared too)
    resume_images=8192, resume_batch=512, resume_epochs=20, resume_every=5, resume_steps=40,
    record_epochs=None, record_max_images=None, record_eval_max=None, subprocess_threads=None,
)
TINY = dict(
    big_model="mae_vit_micro_patch4_32", big_batches=(8,), steps=2, warmup=1,
    small_model="mae_vit_micro_patch4_32", loader_batch=32, loader_batches=10, loader_warmup=2,
    preset="gpu_cifar10", num_workers=0, max_images=256,
    resume_images=128, resume_batch=16, resume_epochs=20, resume_every=3, resume_steps=12,
    record_epochs=2, record_max_images=128, record_eval_max=64, subprocess_threads=1,
)
# Where the default budget goes (the shares are ceilings for the first three; the record run
# takes the rest): about 150 s for ViT-B eager and compiled (two compilations), 60 s for the
# loader and ViT-Tiny steps (one compilation), 70 s for three short runs, 230 s for the recorded run.
SHARES = {"throughput": 0.30, "loader": 0.12, "resume": 0.14}
# The recorded run besides its training: start-up, decoding CIFAR-10 twice (training, evaluation),
# pictures, four linear probes and five kNN evaluations on 50,000 x 10,000 images.
RECORD_OVERHEAD_S = 110.0
EFFICIENCY = 0.85  # the share of the measured speed a whole run is planned at (logging, checkpoints, epochs)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:
        return None
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Report:
    """``OUT/gpu_check.json`` and ``OUT/gpu_check.log``, rewritten as each stage starts and ends."""

    def __init__(self, out: Path, record: dict):
        self.out = out
        self.json = out / "gpu_check.json"
        self.log_path = out / "gpu_check.log"
        self.record = record
        self.save()

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        write_json(self.json, self.record)


class Clock:
    """The global budget: seconds since the start, seconds left before the deadline."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def _free_memory(compiled: bool = False) -> None:
    if compiled:  # drop the compiled graphs (and what they hold) of a model no longer used
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


# ----------------------------------------------------------------------------------
# Tiny data: an ImageFolder with CIFAR-10's class names, made of crops of the packaged photos
def tiny_image_folder(root: Path, per_class: int = 32, test_per_class: int = 8, size: int = 32) -> Path:
    """``root/{train,test}/<CIFAR-10 class>/NNNN.png``: class ``c`` holds crops of photo
    ``c mod 9``, train crops from the left of each photo and test crops from its right."""
    for split, n in (("train", per_class), ("test", test_per_class)):
        crops = PhotoCrops(num_images=12 * n * len(CIFAR10_CLASSES) // 9 + 64, size=size, seed=0, split=split)
        by_photo: dict[int, list] = {}
        for img, label in zip(crops.images, crops.targets):
            by_photo.setdefault(label, []).append(img)
        for c, name in enumerate(CIFAR10_CLASSES):
            imgs = by_photo[c % len(by_photo)]
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                imgs[i % len(imgs)].save(d / f"{i:04d}.png")
    return root


# ----------------------------------------------------------------------------------
# Stage 1: our ViT-B against Hugging Face's, eager and compiled
def _compare_at_fitting_batch(make, batches, device, log) -> tuple[int, dict]:
    """``make(batch)`` at the first batch of ``batches`` (largest first) that fits in memory."""
    for b in batches:
        _free_memory()
        _reset_peak(device)
        try:
            r = make(b)
        except Exception as e:  # noqa: BLE001 - an out-of-memory error may come wrapped by torch.compile
            if not _is_oom(e):
                raise
            log(f"  batch {b}: out of memory, trying a smaller one")
            _free_memory(compiled=True)
            continue
        r["peak_memory_gib"] = _peak_gib(device)
        return b, r
    raise RuntimeError(f"no batch of {list(batches)} fits in memory")


def stage_throughput(ctx) -> dict:
    a, cfg, device, log = ctx["args"], ctx["cfg"], ctx["device"], ctx["log"]
    import transformers

    res = {"model": cfg["big_model"], "precision": a.precision, "steps": cfg["steps"],
           "warmup": cfg["warmup"], "transformers": transformers.__version__,
           "peak_tflops": gpu_peak_tflops(device), "modes": {}}
    batches = list(cfg["big_batches"])
    for mode in a.compile_modes:
        if mode == "compiled" and ctx["stage_left"]() < 45:
            res["modes"][mode] = {"skipped": f"{ctx['stage_left']():.0f} s left of this stage's share"}
            log(f"  compiled: skipped, {ctx['stage_left']():.0f} s left of this stage's share")
            continue
        t0 = time.perf_counter()
        warmup = cfg["warmup"] + (2 if mode == "compiled" else 0)  # the first compiled steps compile

        def make(b, compiled=mode == "compiled", warmup=warmup):
            torch.manual_seed(0)
            return compare_with_hf(create_model(cfg["big_model"], norm_pix_loss=True), b, device,
                                   precision=a.precision, steps=cfg["steps"], warmup=warmup, compile=compiled)

        batch, r = _compare_at_fitting_batch(make, batches, device, log)
        batches = [b for b in batches if b <= batch]  # compiled: start where eager fitted
        ours, hf = r["ours"], r["hf"]
        row = {"batch": batch, "params": r["params"], "ours_img_s": _r(ours["images_per_s"], 1),
               "hf_img_s": _r(hf["images_per_s"], 1), "ours_ms": _r(ours["ms_per_step"], 2),
               "hf_ms": _r(hf["ms_per_step"], 2), "ours_over_hf": _r(r["speed_ratio"], 3),
               "ours_mfu": _r(ours["mfu"]), "hf_mfu": _r(hf["mfu"]),
               "ours_tflops": _r(ours["achieved_tflops"], 2), "hf_tflops": _r(hf["achieved_tflops"], 2),
               "flops_per_step": ours["flops_per_step"], "peak_memory_gib": r["peak_memory_gib"],
               "wall_s": round(time.perf_counter() - t0, 1)}
        res["modes"][mode] = row
        mfu = "-" if row["ours_mfu"] is None else f"{100 * row['ours_mfu']:.1f}%"
        log(f"  {mode}: batch {batch}, ours {row['ours_img_s']} img/s, HF {row['hf_img_s']} img/s, "
            f"ours/HF {row['ours_over_hf']}x, our MFU {mfu} ({row['wall_s']} s)")
        ctx["partial"](res)
        del r
        _free_memory(compiled=mode == "compiled")
    m = res["modes"]
    if "ours_img_s" in m.get("eager", {}) and "ours_img_s" in m.get("compiled", {}):
        res["compile_speedup_ours"] = _r(m["compiled"]["ours_img_s"] / m["eager"]["ours_img_s"], 3)
        res["compile_speedup_hf"] = _r(m["compiled"]["hf_img_s"] / m["eager"]["hf_img_s"], 3)
    return res


# ----------------------------------------------------------------------------------
# Stage 2: the device loader against the training step, for the gpu_cifar10 preset
def stage_loader(ctx) -> dict:
    a, cfg, device, log = ctx["args"], ctx["cfg"], ctx["device"], ctx["log"]
    from bench_loader import build_loader  # benchmarks/bench_loader.py: the loader as pretraining builds it

    flags = ["--preset", cfg["preset"], "--data_path", str(ctx["data"]), "--dataset", "cifar10",
             "--model", cfg["small_model"], "--loader", "device", "--device", str(device),
             "--num_workers", str(cfg["num_workers"])]
    if cfg["loader_batch"]:
        flags += ["--batch_size", str(cfg["loader_batch"])]
    if cfg["max_images"]:
        flags += ["--max_images", str(cfg["max_images"])]
    args = pretrain_args(flags)
    with torch.device("meta"):
        meta = create_model(args.model)
    args.input_size, num_patches = meta.img_size, meta.patch_embed.num_patches
    loader, built, build_s = build_loader(args, "device", num_patches, device)
    if built != "device":
        raise RuntimeError(f"pretraining built the {built} loader, not the device loader")
    n = len(loader.sampler)
    res = {"preset": cfg["preset"], "model": args.model, "batch": args.batch_size, "train_images": n,
           "precision": a.precision, "build_s": round(build_s, 2)}
    log(f"  device loader: {n} images decoded in {build_s:.1f} s")
    t0 = time.perf_counter()
    res["loader_img_s"] = _r(loader_images_per_s(loader, device, cfg["loader_batches"], cfg["loader_warmup"]), 1)
    res["loader_timing_s"] = round(time.perf_counter() - t0, 2)
    log(f"  device loader: {res['loader_img_s']} img/s")
    del loader
    _free_memory()
    ctx["partial"](res)
    res["train_step"] = {}
    for mode in a.compile_modes:
        if mode == "compiled" and ctx["stage_left"]() < 30:
            res["train_step"][mode] = {"skipped": f"{ctx['stage_left']():.0f} s left of this stage's share"}
            continue
        t0 = time.perf_counter()
        torch.manual_seed(0)
        _reset_peak(device)
        warmup = cfg["warmup"] + (2 if mode == "compiled" else 0)
        r = train_step_images_per_s(create_model(args.model, norm_pix_loss=True), args.batch_size, device,
                                    a.precision, steps=cfg["steps"], warmup=warmup, compile=mode == "compiled")
        wall = time.perf_counter() - t0
        row = {"img_s": _r(r["images_per_s"], 1), "ms": _r(r["ms_per_step"], 2), "mfu": _r(r["mfu"]),
               "peak_memory_gib": _peak_gib(device), "wall_s": round(wall, 1),
               # the time not spent in the timed and warm-up steps: compilation, mostly
               "setup_s": round(max(0.0, wall - (cfg["steps"] + warmup) * r["ms_per_step"] / 1e3), 1)}
        row["loader_over_step"] = _r(res["loader_img_s"] / row["img_s"], 3)
        res["train_step"][mode] = row
        log(f"  train step ({mode}): {row['img_s']} img/s; the loader delivers {row['loader_over_step']}x that")
        ctx["partial"](res)
        _free_memory(compiled=mode == "compiled")
    return res


# ----------------------------------------------------------------------------------
# Subprocesses (the pretraining runs): their output to a log file under OUT
def _env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:  # CPU runs side by side: one thread each, or they fight over the cores
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(cmd: list[str], log_file: Path, threads: int | None = None) -> subprocess.Popen:
    with open(log_file, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
    f = open(log_file, "a")  # noqa: SIM115 - closed by _finish
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT), env=_env(threads))
    proc._log = f  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds; a process still running then is killed (``None``)."""
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    proc._log.close()  # type: ignore[attr-defined]
    return rc


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------
# Stage 3: kill, resume, compare with an uninterrupted run
def _weights_max_diff(a: Path, b: Path) -> float:
    wa, wb = load_training_checkpoint(a)["model"], load_training_checkpoint(b)["model"]
    if set(wa) != set(wb):
        raise RuntimeError("the two checkpoints hold different tensors")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def stage_resume(ctx) -> dict:
    a, cfg, device, log = ctx["args"], ctx["cfg"], ctx["device"], ctx["log"]
    logs = ctx["out"] / "resume"
    logs.mkdir(exist_ok=True)
    work = ctx["work"] / "resume"
    if work.exists():
        shutil.rmtree(work)
    killed_dir, ref_dir = work / "killed", work / "reference"
    total = cfg["resume_steps"]
    flags = ["--preset", cfg["preset"], "--data_path", str(ctx["data"]), "--dataset", "cifar10",
             "--model", cfg["small_model"], "--max_images", str(cfg["resume_images"]),
             "--batch_size", str(cfg["resume_batch"]), "--epochs", str(cfg["resume_epochs"]),
             "--warmup_epochs", "1", "--save_every_steps", str(cfg["resume_every"]), "--save_freq", "1000",
             "--loader", "device", "--device", str(device), "--num_workers", str(cfg["num_workers"]),
             "--no_compile", "--no_progress", "--recon_every", "0"]
    if a.tiny:
        flags += ["--precision", "fp32"]
    py = [sys.executable, "-m", "mae_from_scratch.pretrain"]
    res = {"flags": flags, "kill_after_checkpoint_of_step": cfg["resume_every"], "compared_up_to_step": total}
    deadline = time.perf_counter() + ctx["stage_left"]()

    # The uninterrupted run and the run to be killed, side by side.
    threads = cfg["subprocess_threads"]
    ref = _start(py + flags + ["--output_dir", str(ref_dir), "--max_steps", str(total)], logs / "reference.log",
                 threads)
    victim = _start(py + flags + ["--output_dir", str(killed_dir)], logs / "killed.log", threads)
    ckpt = killed_dir / "checkpoint-last.pth"
    try:
        # Killed the moment its first checkpoint is on disk (saves are atomic renames), mid-epoch.
        while not ckpt.exists():
            if victim.poll() is not None:
                raise RuntimeError(f"the run to be killed ended (exit {victim.returncode}) before its first "
                                   f"checkpoint:\n{_tail(logs / 'killed.log')}")
            if time.perf_counter() > deadline:
                raise RuntimeError("no checkpoint before this stage's time ran out")
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
    except BaseException:
        for proc in (victim, ref):
            if proc.poll() is None:
                proc.kill()
            _finish(proc, 30)
        raise
    victim_rc = _finish(victim, 30)
    res["killed_exit"] = victim_rc
    if victim_rc != -signal.SIGKILL:
        raise RuntimeError(f"the run was not killed by SIGKILL (exit {victim_rc}):\n{_tail(logs / 'killed.log')}")
    resumed_at = int(load_training_checkpoint(ckpt)["step"])
    res["resumed_from_step"] = resumed_at
    res["steps_logged_before_kill"] = len(read_jsonl(killed_dir / "log_steps.jsonl"))
    log(f"  killed (SIGKILL) with the checkpoint of step {resumed_at} on disk, "
        f"{res['steps_logged_before_kill']} steps logged")
    if resumed_at >= total:
        raise RuntimeError(f"killed too late: the checkpoint is of step {resumed_at}, the comparison ends at {total}")

    t0 = time.perf_counter()
    resumed = _start(py + flags + ["--output_dir", str(killed_dir), "--resume", str(ckpt), "--max_steps", str(total)],
                     logs / "resumed.log", threads)
    rc_resumed = _finish(resumed, deadline - time.perf_counter())
    rc_ref = _finish(ref, deadline - time.perf_counter())
    res["resumed_exit"], res["reference_exit"] = rc_resumed, rc_ref
    res["resume_s"] = round(time.perf_counter() - t0, 1)
    res["kill_to_resumed_end_s"] = round(time.perf_counter() - t_kill, 1)
    for name, rc in (("resumed", rc_resumed), ("reference", rc_ref)):
        if rc != 0:
            raise RuntimeError(f"the {name} run failed (exit {rc}):\n{_tail(logs / (name + '.log'))}")

    mine = {r["step"]: r for r in read_jsonl(killed_dir / "log_steps.jsonl")}
    theirs = {r["step"]: r for r in read_jsonl(ref_dir / "log_steps.jsonl")}
    after = list(range(resumed_at + 1, total + 1))
    missing = [s for s in after if s not in mine or s not in theirs]
    if missing:
        raise RuntimeError(f"steps {missing[:5]} are missing from a step log")
    la, lb = [mine[s]["loss"] for s in after], [theirs[s]["loss"] for s in after]
    diffs = [abs(x - y) for x, y in zip(la, lb)]
    before = [s for s in range(1, resumed_at + 1) if s in mine and s in theirs]
    res.update(
        steps_compared=len(after), losses_resumed=la, losses_uninterrupted=lb,
        max_abs_diff=max(diffs), max_rel_diff=max(d / max(abs(y), 1e-12) for d, y in zip(diffs, lb)),
        lr_equal=all(mine[s]["lr"] == theirs[s]["lr"] for s in after),
        max_abs_diff_before_kill=max((abs(mine[s]["loss"] - theirs[s]["loss"]) for s in before), default=None),
    )
    res["exact"] = res["max_abs_diff"] == 0.0
    # fp32 on a CPU resumes bit for bit.  On a GPU, 1% is about one bf16 rounding step (2**-7), far
    # below what a wrong resume (another batch, another mask, a fresh optimizer state) does to a loss.
    res["tolerance_rel"] = 0.0 if a.tiny and device.type == "cpu" else a.resume_rtol
    res["within_tolerance"] = res["max_rel_diff"] <= res["tolerance_rel"]
    a_last, b_last = killed_dir / "checkpoint-last.pth", ref_dir / "checkpoint-last.pth"
    if a_last.is_file() and b_last.is_file():
        ca, cb = load_training_checkpoint(a_last), load_training_checkpoint(b_last)
        if ca["step"] == cb["step"] == total:
            res["weights_max_abs_diff"] = _weights_max_diff(a_last, b_last)
    log(f"  resumed at step {resumed_at}: steps {after[0]}-{after[-1]}, loss max |diff| {res['max_abs_diff']:.3g} "
        f"(relative {res['max_rel_diff']:.3g}), weights max |diff| {res.get('weights_max_abs_diff')}")
    for name, d in (("killed", killed_dir), ("reference", ref_dir)):
        rows = read_jsonl(d / "log_steps.jsonl")
        (logs / f"{name}_steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return res


# ----------------------------------------------------------------------------------
# Stage 4: the recorded run
def _plan_record(ctx, train_s: float) -> dict:
    """Epochs and compilation of the recorded run from stage 2's measurements."""
    a, cfg = ctx["args"], ctx["cfg"]
    plan = {}
    loader = ctx["results"].get("loader") or {}
    steps = loader.get("train_step") or {}
    eager = (steps.get("eager") or {}).get("img_s")
    compiled = (steps.get("compiled") or {}).get("img_s")
    feed = loader.get("loader_img_s")
    cap = (lambda x: min(x, feed)) if feed else (lambda x: x)
    compile_on = False
    if a.record_compile == "on":
        compile_on, why = True, "asked for (--record_compile on)"
    elif a.record_compile == "off" or a.tiny:
        why = "asked for (--record_compile off)" if a.record_compile == "off" else "tiny run"
    elif eager and compiled:
        # Compiling pays when the time it saves over the run exceeds the time it takes.
        cost = (steps["compiled"].get("setup_s") or 0.0) + 5.0
        saved = train_s * (1 - cap(eager) / cap(compiled))
        compile_on = saved > cost
        why = (f"saves about {saved:.0f} s of {train_s:.0f} s at {cap(compiled):.0f} vs {cap(eager):.0f} img/s "
               f"(loader-capped), costs about {cost:.0f} s")
    else:
        why = "no compiled measurement from the loader stage"
    plan["compile"], plan["compile_reason"] = compile_on, why
    ips = compiled if compile_on and compiled else eager
    if cfg["record_epochs"]:
        plan["epochs"] = a.record_epochs or cfg["record_epochs"]
    elif a.record_epochs:
        plan["epochs"] = a.record_epochs
    elif ips and loader.get("train_images"):
        if compile_on:
            train_s -= (steps["compiled"].get("setup_s") or 0.0)
        plan["train_s_planned"] = round(train_s, 1)
        plan["planned_img_s"] = round(EFFICIENCY * cap(ips), 1)
        plan["epochs"] = max(2, math.floor(max(train_s, 0.0) * plan["planned_img_s"] / loader["train_images"]))
    else:  # no measurement: record_run.py probes the speed itself
        plan["train_s_planned"] = round(max(train_s, 30.0), 1)
        plan["budget_min"] = round(max(train_s, 30.0) / 60, 2)
    return plan


def stage_record(ctx) -> dict:
    a, cfg, device, log = ctx["args"], ctx["cfg"], ctx["device"], ctx["log"]
    out = ctx["out"] / "recorded" / a.record_name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    left = ctx["clock"].left()
    overhead = a.record_overhead_s if a.record_overhead_s is not None else (15.0 if a.tiny else RECORD_OVERHEAD_S)
    train_s = min(a.record_train_s, left - overhead)
    plan = _plan_record(ctx, train_s)
    res = {"folder": str(out.relative_to(ctx["out"])), "seconds_left_at_start": round(left, 1),
           "overhead_s_assumed": overhead, **plan}
    cmd = [sys.executable, str(ROOT / "tools" / "record_run.py"), "--preset", cfg["preset"] if not a.tiny else
           "cpu_smoke", "--data_path", str(ctx["data"]), "--dataset", "cifar10", "--out", str(out),
           "--work", str(ctx["work"] / "record"), "--device", str(device),
           "--compile", "on" if plan["compile"] else "off",
           "--overwrite"]  # this stage's own folders: a rerun replaces its earlier record
    if "epochs" in plan:
        cmd += ["--epochs", str(plan["epochs"]), "--recon_every", str(max(1, plan["epochs"] // 8))]
    else:
        cmd += ["--budget_min", str(plan["budget_min"]), "--recon_every", "10"]
    if cfg["record_max_images"]:
        cmd += ["--max_images", str(cfg["record_max_images"])]
    if cfg["record_eval_max"]:
        cmd += ["--eval_max", str(cfg["record_eval_max"])]
    res["command"] = cmd[1:]
    planned = f" for {plan['train_s_planned']:.0f} s of training" if "train_s_planned" in plan else ""
    log(f"  {plan.get('epochs', 'probed')} epochs{planned}; compiled: {plan['compile']} ({plan['compile_reason']})")
    ctx["partial"](res)
    proc = _start(cmd, ctx["out"] / "recorded" / f"{a.record_name}.log")
    rc = _finish(proc, ctx["clock"].left() - 2.0)  # killed at the deadline: what it wrote stays
    res["exit"] = rc
    res["timed_out"] = rc is None
    epochs = read_jsonl(out / "log.txt")
    losses = [r["train_loss"] for r in epochs]
    res["epochs_run"] = len(epochs)
    if losses:
        res.update(first_epoch_loss=losses[0], last_epoch_loss=losses[-1],
                   loss_finite=all(math.isfinite(x) for x in losses), loss_decreased=losses[-1] < losses[0],
                   images_per_s_last_epoch=_r(epochs[-1].get("images_per_s"), 1))
    for name in ("recording.json", "eval.json", "run.json"):
        p = out / name
        if p.is_file():
            try:
                res[name.split(".")[0]] = json.loads(p.read_text())
            except ValueError:
                pass
    rec = res.pop("recording", {})
    res["parts_s"] = rec.get("parts")
    run = res.pop("run", {})
    res["finished"] = run.get("finished")
    res["epochs_scheduled"] = run.get("epochs_scheduled")
    res["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    if rc != 0:
        raise RuntimeError(("timed out at the deadline" if rc is None else f"tools/record_run.py exit {rc}") +
                           f":\n{_tail(ctx['out'] / 'recorded' / (a.record_name + '.log'))}")
    log(f"  {res['epochs_run']} epochs, loss {res.get('first_epoch_loss', float('nan')):.4f} -> "
        f"{res.get('last_epoch_loss', float('nan')):.4f}; parts {res['parts_s']}")
    return res


RUNNERS = {"throughput": stage_throughput, "loader": stage_loader, "resume": stage_resume, "record": stage_record}


# ----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cifar10", default=None,
                   help="the CIFAR-10 ImageFolder archive (cifar10-jpeg.tar.gz) or folder; needed unless --tiny")
    p.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    p.add_argument("--work", default=None, help="checkpoints and run folders (default: a temporary folder, removed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16", "auto"),
                   help="autocast of the timed steps (default: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--budget_s", type=float, default=None,
                   help="seconds the whole command may take (default 510; 900 with --tiny, for a busy CPU)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--compile_modes", nargs="+", default=None, choices=("eager", "compiled"),
                   help="time steps eager and/or compiled (default: both on a GPU, eager with --tiny)")
    p.add_argument("--vitb_batches", type=int, nargs="+", default=None,
                   help="batches to try for stage 1, largest first (the first that fits is used)")
    p.add_argument("--record_compile", default="auto", choices=("auto", "on", "off"),
                   help="compile the recorded run: auto decides from stage 2's eager and compiled speeds")
    p.add_argument("--record_epochs", type=int, default=None, help="fix the recorded run's epochs")
    p.add_argument("--record_train_s", type=float, default=300.0,
                   help="the most seconds of training the recorded run is planned for")
    p.add_argument("--record_overhead_s", type=float, default=None,
                   help=f"seconds the recorded run needs besides training (default {RECORD_OVERHEAD_S:.0f}; 15 tiny)")
    p.add_argument("--record_name", default="cifar10-gpu-vit-tiny")
    p.add_argument("--resume_rtol", type=float, default=1e-2,
                   help="relative loss difference accepted after a resume in bf16 (0 with --tiny: fp32)")
    p.add_argument("--tiny", action="store_true", help="tiny models, tiny data, a few steps: the CPU test")
    p.add_argument("--keep_work", action="store_true", help="keep --work (checkpoints) at the end")
    a = p.parse_args(argv)
    if not a.out:
        p.error("give --out (or set $OUT)")
    if a.cifar10 is None and not a.tiny:
        p.error("give --cifar10 PATH (the CIFAR-10 archive), or --tiny")
    if a.budget_s is None:
        a.budget_s = 900.0 if a.tiny else 510.0
    if a.precision is None:
        a.precision = "fp32" if torch.device(a.device).type == "cpu" else "bf16"
    if a.compile_modes is None:
        a.compile_modes = ["eager"] if a.tiny else ["eager", "compiled"]
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    clock = Clock(a.budget_s)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device)
    cfg = dict(TINY if a.tiny else GPU)
    if a.vitb_batches:
        cfg["big_batches"] = tuple(sorted(a.vitb_batches, reverse=True))
    own_work = a.work is None
    work = Path(tempfile.mkdtemp(prefix="gpu-check-")) if own_work else Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    record = {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:] if argv is None else list(argv),
              "date": _now(), "torch": torch.__version__,
              "transformers": _version("transformers"), "flags": vars(a), "config": cfg,
              "hardware": hardware(device), "budget_s": a.budget_s, "stages": {}, "finished": False}
    report = Report(out, record)
    report.log(f"gpu_check: {record['hardware']['summary']}, torch {torch.__version__}, budget {a.budget_s:.0f} s, "
               f"stages {' '.join(a.stages)}")

    ctx = {"args": a, "cfg": cfg, "device": device, "log": report.log, "out": out, "work": work, "clock": clock,
           "results": {}}
    try:
        if a.cifar10 is not None:
            ctx["data"] = Path(a.cifar10).resolve()
        else:
            t0 = time.perf_counter()
            ctx["data"] = tiny_image_folder(work / "tiny-cifar10")
            report.log(f"tiny data: {ctx['data']} ({time.perf_counter() - t0:.1f} s)")
        record["data"] = str(ctx["data"])
        order = [s for s in STAGES if s in a.stages]
        for i, name in enumerate(order):
            later_shares = sum(SHARES.get(s, 0.0) for s in order[i + 1:])
            share = SHARES.get(name)
            t0 = time.perf_counter()
            # A stage's share of the budget, or for the last what is left; never the time the
            # stages after it are owed.
            limit = share * a.budget_s if share is not None else clock.left()
            limit = min(limit, clock.left() - later_shares * a.budget_s * 0.5)
            ctx["stage_left"] = lambda t0=t0, limit=limit: limit - (time.perf_counter() - t0)
            entry = {"status": "running", "started_s": round(clock.elapsed(), 1), "share_s": round(limit, 1)}
            record["stages"][name] = entry

            def partial(res, entry=entry):
                entry["result"] = res
                report.save()

            ctx["partial"] = partial
            report.save()
            report.log(f"stage {name}: up to {limit:.0f} s ({clock.left():.0f} s left in all)")
            try:
                res = RUNNERS[name](ctx)
                entry.update(status="ok", result=res)
                ctx["results"][name] = res
            except Exception as e:  # noqa: BLE001 - a failed stage is recorded, and the next one runs
                entry.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                report.log(f"stage {name} failed: {type(e).__name__}: {e}")
                _free_memory()
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
            report.log(f"stage {name}: {entry['status']} in {entry['wall_s']:.0f} s")
            report.save()
    finally:
        record["wall_s"] = round(clock.elapsed(), 1)
        record["finished"] = True
        record["all_ok"] = all(s.get("status") == "ok" for s in record["stages"].values())
        report.save()
        if own_work and not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    report.log(f"done in {record['wall_s']:.0f} s; stages: " +
               ", ".join(f"{k} {v['status']}" for k, v in record["stages"].items()))
    return 0 if record["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
