"""The resume paths of the pretraining engine: the optimizer state on its parameters'
device, a resume that keeps its run's seed, loader and images, a --max_steps stop at an
epoch's end, no CUDA generator state, and a run record without the ``resource`` module."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from mae_from_scratch import data as D
from mae_from_scratch import pretrain as P
from mae_from_scratch import pretrain_data as PD
from mae_from_scratch import run_info
from mae_from_scratch.run_config import initial_config, parse_args
from mae_from_scratch.training_checkpoint import load_training_checkpoint, save_atomic, training_checkpoint
from mae_from_scratch.engine import EpochMeter
from mae_from_scratch.metrics import read_epoch_log, read_step_log
from mae_from_scratch.model import create_model
from mae_from_scratch.optim import build_optimizer
from mae_from_scratch.precision import choose_precision
from _engine_helpers import one_thread  # noqa: F401  (autouse: one torch thread in this module)

# What the checkpoint below was trained with; each differs from what the flags give by default
# (seed 0, loader auto, and the cpu_smoke preset's 4,096 images).
SAVED = dict(seed=3, loader="pil", max_images=48)
BASE = ["--preset", "cpu_smoke", "--num_photos", "64", "--batch_size", "8", "--no_progress"]

def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An output folder holding a checkpoint-last.pth written as the engine writes one,
    after one optimizer step (so the AdamW state is there), trained with :data:`SAVED`."""
    out = tmp_path_factory.mktemp("resumable") / "run"
    out.mkdir()
    config = initial_config(None, BASE, SAVED)
    torch.manual_seed(0)
    model = create_model(config.model, norm_pix_loss=config.norm_pix_loss)
    config = config.derive(input_size=model.img_size, lr=1e-3, mean=[0.5] * 3, std=[0.25] * 3, world_size=1)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    loss, _, _ = model(torch.randn(2, 3, 32, 32))
    loss.backward()
    optimizer.step()
    meter = EpochMeter(loss.item(), 1)
    state = training_checkpoint(model, optimizer, choose_precision("cpu", "fp32").grad_scaler("cpu"), config,
                                epoch=0, epoch_step=1, steps_per_epoch=6, epoch_meter=meter,
                                dataset=D.dataset_info("photos"))
    save_atomic(state, out / P.LAST_CHECKPOINT)
    return out

class ReachedTheData(Exception):
    """Raised where the engine starts reading data: every resume check has passed by then."""

@pytest.fixture
def at_the_data(monkeypatch):
    """Stop ``pretrain`` where it builds its data, keeping the run's arguments as they are then."""
    seen = {}

    def stop(config, *a, **k):
        seen["args"] = argparse.Namespace(**config.values)
        raise ReachedTheData

    monkeypatch.setattr(P, "build_pretrain_data", stop)
    return seen

def _refused(capsys, argv, folder) -> str:
    """``main(argv)`` refuses in one line and leaves ``folder`` as it was; returns the line."""
    before = _snapshot(folder)
    capsys.readouterr()
    assert P.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    assert _snapshot(folder) == before, "the output folder changed"
    return lines[0]

# ---------------------------------------------------------------------------------- optimizer state
def test_the_optimizer_state_is_loaded_onto_the_moved_parameters(monkeypatch, run_dir, at_the_data):
    """On a GPU the model moves to the device; the AdamW state must follow it there.  Here the
    "move" also makes the parameters float64, which a state loaded before the move misses."""
    real_create = P.create_model
    built = []

    def create_moving_to_float64(*a, **k):
        model = real_create(*a, **k)
        model.to = lambda *ta, **tk: type(model).to(model, *ta, **tk).double()
        return model

    def build_and_keep(*a, **k):
        built.append(build_optimizer(*a, **k))
        return built[-1]

    monkeypatch.setattr(P, "create_model", create_moving_to_float64)
    monkeypatch.setattr(P, "build_optimizer", build_and_keep)
    with pytest.raises(ReachedTheData):
        P.main([*BASE, "--output_dir", str(run_dir), "--auto_resume"])
    saved = load_training_checkpoint(run_dir / P.LAST_CHECKPOINT)["optimizer"]["state"]
    (optimizer,) = built
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(optimizer.state) == len(params) == len(saved) > 0
    for i, p in enumerate(params):
        state = optimizer.state[p]
        assert p.dtype == torch.float64
        for key in ("exp_avg", "exp_avg_sq"):
            assert (state[key].dtype, state[key].device) == (p.dtype, p.device), (i, key)
            assert torch.equal(state[key], saved[i][key].double())  # the checkpoint's values

# ---------------------------------------------------------------------------------- the run's seed, loader, images
@pytest.mark.parametrize("how", ["cli", "keywords", "namespace"])
def test_a_resume_takes_the_seed_loader_and_images_it_was_not_given(run_dir, at_the_data, how):
    if how == "cli":
        run = lambda: P.main([*BASE, "--output_dir", str(run_dir), "--auto_resume"])  # noqa: E731
    elif how == "keywords":
        run = lambda: P.pretrain(preset="cpu_smoke", num_photos=64, batch_size=8, no_progress=True,  # noqa: E731
                                 output_dir=str(run_dir), resume=str(run_dir / P.LAST_CHECKPOINT))
    else:
        run = lambda: P.pretrain(parse_args([*BASE, "--output_dir", str(run_dir), "--auto_resume"]))  # noqa: E731
    with pytest.raises(ReachedTheData):
        run()
    args = at_the_data["args"]
    assert (args.seed, args.loader, args.max_images) == (3, "pil", 48)

def test_values_equal_to_the_checkpoints_and_loader_auto_are_accepted(run_dir, at_the_data):
    with pytest.raises(ReachedTheData):
        P.main([*BASE, "--output_dir", str(run_dir), "--auto_resume", "--seed", "3", "--loader", "auto",
                "--max_images", "48"])
    args = at_the_data["args"]
    assert (args.seed, args.loader, args.max_images) == (3, "pil", 48)

@pytest.mark.parametrize("flag, value, saved, what", [
    ("seed", "0", "3", "shuffle, augmentation and masks"),  # 0 is the default: given, all the same
    ("loader", "device", "pil", "augmentation"),
    ("max_images", "64", "48", "training images"),
])
def test_an_explicit_value_other_than_the_checkpoints_is_refused(capsys, run_dir, flag, value, saved, what):
    ckpt = run_dir / P.LAST_CHECKPOINT
    line = _refused(capsys, [*BASE, "--output_dir", str(run_dir), "--auto_resume", f"--{flag}", value], run_dir)
    assert line == (f"error: {ckpt} was trained with --{flag} {saved}, but --{flag} {value} was asked for, which "
                    f"would change the run's {what}; leave --{flag} out (or give --{flag} {saved}) to continue "
                    "it, or choose another --output_dir for a new run")
    line = _refused(capsys, [*BASE, "--output_dir", str(run_dir), "--resume", str(ckpt), f"--{flag}", value], run_dir)
    assert line.endswith("to continue it, or drop --resume to start a new run")

def test_keywords_and_namespaces_are_checked_too(run_dir):
    with pytest.raises(P.InputError, match=r"trained with --seed 3, but --seed 0 was asked for"):
        P.pretrain(preset="cpu_smoke", num_photos=64, batch_size=8, output_dir=str(run_dir), auto_resume=True,
                   seed=0)
    with pytest.raises(P.InputError, match=r"trained with --max_images 48, but --max_images 4096 was asked for"):
        P.pretrain(preset="cpu_smoke", num_photos=64, batch_size=8, output_dir=str(run_dir), auto_resume=True,
                   max_images=4096)  # the preset's value, but given
    with pytest.raises(P.InputError, match=r"trained with --seed 3, but --seed 5 was asked for"):
        P.pretrain(parse_args([*BASE, "--output_dir", str(run_dir), "--auto_resume", "--seed", "5"]))

def test_a_run_on_every_image_keeps_training_on_every_image(capsys, tmp_path, run_dir, at_the_data):
    ckpt = load_training_checkpoint(run_dir / P.LAST_CHECKPOINT)
    ckpt["args"]["max_images"] = None
    path = tmp_path / "all-images.pth"
    torch.save(ckpt, path)
    with pytest.raises(ReachedTheData):  # without --max_images: every image, not the preset's 4,096
        P.main([*BASE, "--output_dir", str(tmp_path / "run"), "--resume", str(path)])
    assert at_the_data["args"].max_images is None
    line = _refused(capsys, [*BASE, "--output_dir", str(tmp_path / "run"), "--resume", str(path), "--max_images",
                             "64"], tmp_path)
    assert re.search(r"trained with every image \(no --max_images\), but --max_images 64 was asked for, which "
                     r"would change the run's training images; leave --max_images out to continue it", line), line

def test_a_device_loader_run_that_cannot_hold_its_images_here_is_not_sent_to_pil(capsys, tmp_path, run_dir,
                                                                                  monkeypatch):
    ckpt = load_training_checkpoint(run_dir / P.LAST_CHECKPOINT)
    ckpt["args"]["loader"] = "device"
    path = tmp_path / "device.pth"
    torch.save(ckpt, path)
    monkeypatch.setattr(PD, "fits_on_device", lambda nbytes, device: False)
    line = _refused(capsys, [*BASE, "--output_dir", str(tmp_path / "run"), "--resume", str(path)], tmp_path)
    assert "more than a quarter of the memory of cpu" in line and "use --loader pil" not in line
    assert f"{path} was trained with the device loader, so continue it where its images fit" in line

# ---------------------------------------------------------------------------------- CUDA generator
def test_checkpoints_hold_no_cuda_generator_state(monkeypatch):
    """Nothing draws from it, and a resume on fewer GPUs could not restore it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)] * 8)
    model = create_model("mae_vit_micro_patch4_32")
    config = initial_config(None, ["--model", "mae_vit_micro_patch4_32"], {})
    state = training_checkpoint(model, build_optimizer(model, 1e-3), choose_precision("cpu", "fp32").grad_scaler(
        "cpu"), config, epoch=0, epoch_step=1, steps_per_epoch=2, epoch_meter=EpochMeter(),
        dataset=D.dataset_info("photos"))
    assert set(state["rng"]) == {"torch"} and torch.equal(state["rng"]["torch"], torch.get_rng_state())

# ---------------------------------------------------------------------------------- a stop at an epoch's end
# 32 images in batches of 8: 4 steps an epoch, 12 in all.  The seed, loader and image count differ
# from the flags' defaults, so a resume that left them out and did not keep them would differ.
RUN = dict(preset="cpu_smoke", num_photos=64, batch_size=8, epochs=3, warmup_epochs=1, no_progress=True,
           save_every_steps=3, save_freq=100, num_workers=0, seed=3, loader="pil", max_images=32)
STEPS_PER_EPOCH = 4

def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def _weights(out):
    return load_training_checkpoint(out / P.LAST_CHECKPOINT)["model"]

def _steps(out):
    return [(r["step"], r["loss"], r["lr"]) for r in read_step_log(out)]

def _record(out):
    return json.loads((out / run_info.RUN_INFO).read_text())

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    P.pretrain(output_dir=str(out), **RUN)
    return out

@pytest.mark.slow
@pytest.mark.parametrize("epochs_done", [1, 2])
def test_a_stop_at_an_epochs_end_saves_that_end_and_the_resume_starts_the_next_epoch(tmp_path, capsys, reference,
                                                                                       epochs_done):
    out = tmp_path / "run"
    stop = epochs_done * STEPS_PER_EPOCH
    result = P.pretrain(output_dir=str(out), max_steps=stop, **RUN)
    assert "stopped at --max_steps" in capsys.readouterr().out
    ck = load_training_checkpoint(out / P.LAST_CHECKPOINT)
    assert (ck["step"], ck["epoch"], ck["epoch_step"], ck["steps_per_epoch"]) == (
        stop, epochs_done - 1, STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    assert _same(result.model.state_dict(), ck["model"])
    assert _same(load_training_checkpoint(result.checkpoint)["model"], ck["model"])  # checkpoint-0.pth after epoch 0
    assert [r["epoch"] for r in read_epoch_log(out)] == list(range(epochs_done))  # the closed epoch is logged
    assert [s for s, _, _ in _steps(out)] == list(range(1, stop + 1))
    rec = _record(out)
    assert rec["epochs_run"] == epochs_done and rec["finished"] is False

    P.main([*BASE, "--epochs", "3", "--warmup_epochs", "1", "--save_every_steps", "3", "--save_freq", "100",
            "--num_workers", "0", "--output_dir", str(out), "--auto_resume"])  # seed, loader, images: kept
    printed = capsys.readouterr().out
    assert f"epoch {epochs_done}, step 0 of {STEPS_PER_EPOCH}" in printed and "32 images" in printed
    assert _same(_weights(out), _weights(reference))
    assert _steps(out) == _steps(reference)
    assert [r["train_loss"] for r in read_epoch_log(out)] == [r["train_loss"] for r in read_epoch_log(reference)]
    rec = _record(out)
    assert rec["epochs_run"] == 3 and rec["finished"] is True and len(rec["segments"]) == 2

@pytest.mark.slow
def test_max_steps_at_the_last_epochs_end_finishes_the_run(tmp_path, capsys, reference):
    out = tmp_path / "run"
    P.pretrain(output_dir=str(out), max_steps=3 * STEPS_PER_EPOCH, **RUN)
    assert "done in" in capsys.readouterr().out
    assert _record(out)["finished"] is True and _same(_weights(out), _weights(reference))

@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_resumes_with_its_seed_loader_and_images(tmp_path, capsys, reference):
    out = tmp_path / "run"
    P.pretrain(output_dir=str(out), max_steps=6, **RUN)
    ck = load_training_checkpoint(out / P.LAST_CHECKPOINT)
    assert (ck["step"], ck["epoch_step"]) == (6, 2)
    rest = {k: v for k, v in RUN.items() if k not in SAVED}
    P.pretrain(output_dir=str(out), auto_resume=True, **rest)
    assert "32 images at 32 px (pil loader)" in capsys.readouterr().out
    assert _same(_weights(out), _weights(reference)) and _steps(out) == _steps(reference)

# ---------------------------------------------------------------------------------- without `resource`
def _run_info_without_resource(monkeypatch):
    """A fresh copy of run_info.py imported where ``import resource`` fails (as on Windows)."""
    monkeypatch.setitem(sys.modules, "resource", None)  # None in sys.modules: ImportError on import
    spec = importlib.util.spec_from_file_location("run_info_without_resource", run_info.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def test_the_run_info_works_without_the_resource_module(monkeypatch, tmp_path):
    rr = _run_info_without_resource(monkeypatch)
    assert rr.resource is None and run_info.resource is not None
    sum(i * i for i in range(300_000))  # some CPU time
    # The fallback counts the same CPU time (to the clock tick of os.times).
    assert rr.cpu_seconds() == pytest.approx(run_info.cpu_seconds(), abs=0.05)
    rec = rr.RunInfo(tmp_path)
    rec.start(args={"seed": 0}, device="cpu", data={"dataset": "photos"}, epochs_scheduled=1, resumed=False)
    t0 = rr.cpu_seconds()
    while rr.cpu_seconds() - t0 < 0.3:
        sum(i * i for i in range(100_000))
    rec.update(epochs_run=1, images=64, finished=True)
    saved = json.loads((tmp_path / rr.RUN_INFO).read_text())
    assert saved["finished"] is True and saved["cpu_s"] >= 0.3 and saved["segments"][0]["cpu_s"] >= 0.3

@pytest.mark.slow
def test_the_engine_imports_without_the_resource_module(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules["resource"] = None  # as on Windows
        import mae_from_scratch.pretrain
        from mae_from_scratch import run_info
        assert run_info.resource is None and run_info.cpu_seconds() > 0
        print("imported")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "imported", r.stderr[-2000:]
