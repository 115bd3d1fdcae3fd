"""The pretraining recipe: schedule, parameter groups, precision choice, presets,
checkpoints, exact resume (also after SIGKILL) and the non-finite-loss stop."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from _engine_helpers import cifar_tar_path, make_image_folder, poison_loss_at_call
from PIL import Image

from mae_from_scratch import pretrain as P
from mae_from_scratch import pretrain_data as PD
from mae_from_scratch.training_checkpoint import load_training_checkpoint
from mae_from_scratch.device_data import DeviceBatchLoader
from mae_from_scratch.distributed import DistInfo
from mae_from_scratch.metrics import read_epoch_log, read_step_log
from mae_from_scratch.model import mae_vit_micro_patch4_32
from mae_from_scratch.optim import effective_lr, lr_at, param_groups_weight_decay
from mae_from_scratch.precision import choose_precision
from mae_from_scratch.pretrain_data import build_pretrain_data
from mae_from_scratch.run_config import derive_settings, initial_config, parse_args
from mae_from_scratch.train_step import NonFiniteLossError


# ---------------------------------------------------------------------------------- recipe
def test_lr_is_blr_times_effective_batch_over_256():
    assert effective_lr(1.5e-4, batch_size=64, accum_iter=8, world_size=8) == pytest.approx(1.5e-4 * 4096 / 256)


def test_schedule_warmup_then_half_cosine():
    lr, min_lr, warm, total = 1e-3, 1e-5, 5, 25
    assert lr_at(0, lr, min_lr, warm, total) == 0.0
    assert lr_at(2.5, lr, min_lr, warm, total) == pytest.approx(lr / 2)  # linear warmup, per iteration
    assert lr_at(5, lr, min_lr, warm, total) == pytest.approx(lr)
    assert lr_at(15, lr, min_lr, warm, total) == pytest.approx((lr + min_lr) / 2)  # half-way down the cosine
    assert lr_at(25, lr, min_lr, warm, total) == pytest.approx(min_lr)
    after = [lr_at(5 + 20 * i / 100, lr, min_lr, warm, total) for i in range(101)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    q = lr_at(10, lr, min_lr, warm, total)  # a quarter of the way: cos(pi/4)
    assert q == pytest.approx(min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_parameter_groups_exempt_1d_and_biases_and_skip_frozen():
    model = mae_vit_micro_patch4_32()
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "blocks.0.norm1.weight" in nd and "blocks.0.attn.qkv.bias" in nd and "decoder_pred.bias" in nd
    assert "blocks.0.attn.qkv.weight" in d and "patch_embed.proj.weight" in d and "cls_token" in d
    assert all(names[id(p)].endswith("bias") or p.ndim == 1 for p in no_decay["params"])
    assert "pos_embed" not in nd | d and "decoder_pos_embed" not in nd | d  # fixed tables are not trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert nd | d == trainable and not nd & d


@pytest.mark.parametrize("capability, expected, scaler", [((7, 5), torch.float16, True),  # T4
                                                          ((7, 0), torch.float16, True),  # V100
                                                          ((8, 0), torch.bfloat16, False),  # A100
                                                          ((9, 0), torch.bfloat16, False)])  # H100
def test_precision_follows_compute_capability(monkeypatch, capability, expected, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # says True on a T4 too
    p = choose_precision("cuda", "auto")
    assert p.dtype == expected and p.use_scaler == scaler


def test_precision_on_cpu_is_fp32_unless_asked():
    assert choose_precision("cpu", "auto").dtype is None
    assert choose_precision("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        choose_precision("cpu", "fp8")


def test_presets_are_defaults_that_flags_override():
    args = parse_args(["--preset", "cpu_smoke", "--epochs", "7"])
    assert args.model == "mae_vit_micro_patch4_32" and args.epochs == 7
    assert parse_args(["--preset", "colab_t4_cifar10"]).dataset == "cifar10"
    with pytest.raises(TypeError, match="unknown pretraining option"):
        parse_args(preset="cpu_smoke", epoch=3)


# ---------------------------------------------------------------------------------- runs
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread in this process and in the subprocesses below: the runs compared
    bit for bit then use the same kernels, and a busy 2-core CI machine does not make
    two OpenMP threads wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(preset="cpu_smoke", num_photos=64, max_images=64, batch_size=8, epochs=2, warmup_epochs=1,
            no_progress=True, save_every_steps=3, save_freq=100)


def _weights(path):
    return load_training_checkpoint(path)["model"]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(out):
    return [(r["step"], r["loss"], r["lr"]) for r in read_step_log(out)]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs (2 epochs x 8 steps) to compare against, one per loader."""
    made = {}

    def get(loader: str):
        if loader not in made:
            out = tmp_path_factory.mktemp(f"reference-{loader}")
            made[loader] = out, P.pretrain(output_dir=str(out), num_workers=0, loader=loader, **TINY)
        return made[loader]

    return get


@pytest.fixture(scope="module")
def reference(references):
    return references("device")


def test_the_photos_default_to_the_device_loader(reference):
    out, _ = reference
    assert load_training_checkpoint(out / "checkpoint-last.pth")["args"]["loader"] == "device"


def _loader_for(tmp_path, root, loader):
    config = initial_config(None, ["--preset", "cpu_smoke", "--data_path", str(root), "--loader", loader,
                                   "--batch_size", "4", "--output_dir", "", "--input_size", "32"], {})
    data = build_pretrain_data(config, 64, DistInfo())
    return data.loader_name, data.loader


def test_auto_loader_holds_a_uniform_image_folder_and_leaves_mixed_sizes_to_pil(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))
    uniform = make_image_folder(tmp_path / "uniform", per_class=4, size=32)
    kind, built = _loader_for(tmp_path, uniform, "auto")
    assert kind == "device" and isinstance(built, DeviceBatchLoader)
    mixed = make_image_folder(tmp_path / "mixed", per_class=4, size=32)
    first = sorted((mixed / "train" / "b").iterdir())[0]
    Image.open(first).resize((40, 32)).save(first)
    assert _loader_for(tmp_path, mixed, "auto")[0] == "pil"
    assert _loader_for(tmp_path, mixed, "pil")[0] == "pil"
    with pytest.raises(ValueError, match=r"--loader device: image \d+ is \(3, 32, 40\).*--loader pil"):
        _loader_for(tmp_path, mixed, "device")


def test_device_loader_refuses_data_too_large_for_the_device(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "r", per_class=4, size=32)
    monkeypatch.setattr(PD, "fits_on_device", lambda nbytes, device: False)
    assert _loader_for(tmp_path, root, "auto")[0] == "pil"
    with pytest.raises(ValueError, match="more than a quarter of the memory of cpu"):
        _loader_for(tmp_path, root, "device")


def test_run_writes_official_checkpoint_and_logs(reference):
    out, result = reference
    ck = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= ck.keys()
    assert isinstance(ck["args"], dict) and ck["args"]["model"] == "mae_vit_micro_patch4_32"
    assert ck["epoch"] == 1 and ck["step"] == 16 and ck["epoch_step"] == ck["steps_per_epoch"] == 8
    assert ck["dataset"]["mean"] == list(ck["args"]["mean"])  # normalization travels with the weights
    assert (out / "checkpoint-1.pth").is_file()  # the final epoch is always kept
    epochs = read_epoch_log(out)
    assert [r["epoch"] for r in epochs] == [0, 1] and {"train_lr", "train_loss"} <= epochs[0].keys()
    assert [s for s, _, _ in _steps(out)] == list(range(1, 17))
    assert result.log_path == out / "log.txt" and _same(result.model.state_dict(), ck["model"])


def test_run_json_and_the_checkpoint_tell_what_was_asked_from_what_was_derived(reference):
    out, result = reference
    info = json.loads((out / "run.json").read_text())
    config = info["config"]
    assert {k: config["asked"][k] for k in ("batch_size", "epochs", "loader", "num_workers")} == {
        "batch_size": 8, "epochs": 2, "loader": "device", "num_workers": 0}
    assert config["preset"]["model"] == "mae_vit_micro_patch4_32" and config["preset"]["blr"] == 1e-2
    assert config["default"]["seed"] == 0 and "lr" not in config["default"]  # --lr left out: derived
    derived = config["derived"]
    assert derived["lr"] == pytest.approx(1e-2 * 8 / 256) and info["args"]["lr"] == derived["lr"]
    assert (derived["effective_batch"], derived["world_size"], derived["steps_per_epoch"]) == (8, 1, 8)
    assert derived["dataset"] == "photos" and derived["num_images"] == 64
    assert config["preset"]["precision"] == "fp32"  # what auto would choose here: it stays the preset's
    # Every setting has one source, and the flat args hold exactly those settings.
    names = [n for source in ("asked", "preset", "default", "checkpoint", "derived") for n in config[source]]
    assert len(names) == len(set(names)) and set(names) == set(info["args"])
    assert load_training_checkpoint(out / "checkpoint-last.pth")["config"] == config
    # The configuration is frozen: a stage that learns more makes a new one.
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.config.lr = 1.0
    with pytest.raises(TypeError):
        result.config.values["lr"] = 1.0


def test_a_derived_value_keeps_what_was_asked_beside_it(tmp_path):
    config = initial_config(None, ["--data_path", "data", "--precision", "auto"], {})
    derived = derive_settings(config, 1, torch.device("cpu"), "fp32")
    assert derived.data_path == os.path.abspath("data") and derived.sources["data_path"] == "derived"
    assert derived.asked == {"data_path": "data", "precision": "auto"}
    record = derived.as_record()
    assert record["asked_before_derived"] == {"data_path": "data", "precision": "auto"}
    assert record["derived"]["precision"] == "fp32" and "precision" not in record["asked"]
    same = derived.derive(precision="fp32")  # the same value again changes nothing
    assert same.sources == derived.sources and same.asked == derived.asked


@pytest.mark.slow
@pytest.mark.parametrize("loader, num_workers, accum_iter, stop_at",
                         [("device", 0, 1, 5), ("device", 0, 2, 11), ("pil", 0, 1, 5), ("pil", 2, 2, 11)])
def test_stopped_and_resumed_run_ends_with_identical_weights(tmp_path, references, loader, num_workers,
                                                             accum_iter, stop_at):
    ref_out, _ = references(loader)
    kw = dict(TINY, num_workers=num_workers, loader=loader)
    if accum_iter > 1:  # same effective batch as the reference, as two half batches
        kw.update(batch_size=4, accum_iter=2, blr=TINY.get("blr", 1e-2) * 2)
        ref_out = tmp_path / "ref_accum"
        P.pretrain(output_dir=str(ref_out), **kw)
    out = tmp_path / "run"
    P.pretrain(output_dir=str(out), max_steps=stop_at, **kw)
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    assert ck["step"] == stop_at and 0 < ck["epoch_step"] < ck["steps_per_epoch"]  # stopped inside an epoch
    P.pretrain(output_dir=str(out), resume=str(out / "checkpoint-last.pth"), **kw)
    assert _same(_weights(out / "checkpoint-last.pth"), _weights(ref_out / "checkpoint-last.pth"))
    assert _steps(out) == _steps(ref_out)
    assert [r["train_loss"] for r in read_epoch_log(out)] == [r["train_loss"] for r in read_epoch_log(ref_out)]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from mae_from_scratch import pretrain as P

    where, k = sys.argv[1], int(sys.argv[2])
    count = [0]
    if where == "step":  # SIGKILL right after the k-th optimizer step, before it is saved
        log_step = P.MetricsWriter.log_step
        def killing_log_step(self, row):
            log_step(self, row)
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        P.MetricsWriter.log_step = killing_log_step
    else:  # SIGKILL inside the k-th checkpoint save: temporary file written, not yet renamed
        replace = os.replace
        def killing_replace(src, dst):
            if str(dst).endswith(".pth"):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst)
        os.replace = killing_replace
    sys.exit(P.main(sys.argv[3:]))
""")


def _cli_args(out, num_workers, loader):
    a = TINY
    return ["--preset", a["preset"], "--num_photos", str(a["num_photos"]), "--max_images", str(a["max_images"]),
            "--batch_size", str(a["batch_size"]), "--epochs", str(a["epochs"]),
            "--warmup_epochs", str(a["warmup_epochs"]), "--save_every_steps", str(a["save_every_steps"]),
            "--save_freq", str(a["save_freq"]), "--no_progress", "--num_workers", str(num_workers),
            "--output_dir", str(out), "--auto_resume", "--loader", loader]


@pytest.mark.slow
@pytest.mark.parametrize("where, k, num_workers, loader", [("step", 11, 2, "pil"), ("save", 3, 0, "device")])
def test_sigkilled_run_resumes_exactly(tmp_path, references, where, k, num_workers, loader):
    ref_out, _ = references(loader)
    out = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), where, str(k), *_cli_args(out, num_workers, loader)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ck = load_training_checkpoint(out / "checkpoint-last.pth")  # the last complete checkpoint
    # step: killed after step 11, last saved at step 9 (epoch 1); save: killed while writing
    # the end-of-epoch checkpoint at step 8, last saved at step 6 (epoch 0)
    assert (ck["step"], ck["epoch"]) == ((9, 1) if where == "step" else (6, 0))
    resumed = subprocess.run([sys.executable, "-m", "mae_from_scratch.pretrain", *_cli_args(out, num_workers, loader)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert _same(_weights(out / "checkpoint-last.pth"), _weights(ref_out / "checkpoint-last.pth"))
    assert _steps(out) == _steps(ref_out)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    poison_loss_at_call(monkeypatch, P, call=5)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 0, step 4.*checkpoint-last\.pth"):
        P.pretrain(output_dir=str(out), num_workers=0, **TINY)
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.slow
def test_cli_reports_bad_data_path(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mae_from_scratch.pretrain", "--preset", "cpu_smoke",
                        "--data_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "data path not found" in r.stderr and "nowhere" in r.stderr


def _cli_smoke(tmp_path, *extra):
    out = tmp_path / "smoke"
    r = subprocess.run([sys.executable, "-m", "mae_from_scratch.pretrain", "--preset", "cpu_smoke",
                        "--epochs", "1", "--warmup_epochs", "1", "--max_images", "256", "--num_photos", "256",
                        "--output_dir", str(out), *extra],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ck)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert (out / "log.txt").read_text().strip(), "no epoch line in log.txt"
    return ck


@pytest.mark.slow
def test_cli_smoke_preset_on_the_offline_photos(tmp_path):
    ck = _cli_smoke(tmp_path)
    assert ck["args"]["dataset"] == "photos" and ck["dataset"]["name"] == "photos"


@pytest.mark.slow
@pytest.mark.skipif(not cifar_tar_path().is_file(),
                    reason=f"shared CIFAR-10 archive not found at {cifar_tar_path()} (set MAE_CIFAR10_TAR)")
def test_cli_smoke_preset_on_the_cifar10_archive(tmp_path):
    ck = _cli_smoke(tmp_path, "--dataset", "cifar10", "--data_path", str(cifar_tar_path()))
    assert ck["args"]["dataset"] == "cifar10" and ck["dataset"]["mean"] == [0.4914, 0.4822, 0.4465]


@pytest.mark.slow
def test_a_compiled_run_saves_the_plain_models_weights(tmp_path):
    """--compile trains through torch.compile; the checkpoint still loads into an uncompiled model."""
    out = tmp_path / "compiled"
    P.pretrain(output_dir=str(out), num_workers=0, compile=True, max_steps=2, **TINY)
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    assert ck["args"]["compile"] is True and ck["step"] == 2
    model = mae_vit_micro_patch4_32(norm_pix_loss=True)
    model.load_state_dict(ck["model"])  # strict: no "_orig_mod." prefixes
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_gpu_presets_compile_and_cpu_presets_do_not():
    from mae_from_scratch.presets import PRESETS

    assert {n for n, p in PRESETS.items() if p.args.get("compile")} == {"gpu_cifar10", "gpu_imagenet_base"}
