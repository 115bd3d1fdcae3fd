"""Training checkpoints are written atomically and load with weights_only=True."""

from __future__ import annotations

import os

import pytest
import torch

from mae_from_scratch import checkpoint as C
from mae_from_scratch import training_checkpoint as TC


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((4, 4), v)}, "epoch": int(v), "args": {"lr": v, "name": "x"},
            "rng": {"torch": torch.get_rng_state()}}


def test_save_then_load_weights_only(tmp_path):
    path = tmp_path / "ck.pth"
    TC.save_atomic(_state(1.0), path)
    ck = TC.load_training_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(4, 4)) and ck["args"] == {"lr": 1.0, "name": "x"}


@pytest.mark.parametrize("crash_in", ["torch.save", "os.replace"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "ck.pth"
    TC.save_atomic(_state(1.0), path)

    real_save = torch.save

    def half_written_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.seek(0)
        f.truncate(100)  # the file on disk is now garbage ...
        raise KeyboardInterrupt("killed while saving")  # ... and the process dies

    def crash_before_rename(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    if crash_in == "torch.save":
        monkeypatch.setattr(torch, "save", half_written_save)
    else:
        monkeypatch.setattr(os, "replace", crash_before_rename)
    with pytest.raises(KeyboardInterrupt):
        TC.save_atomic(_state(2.0), path)
    monkeypatch.undo()

    ck = TC.load_training_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(4, 4)) and ck["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]  # no temporary file left behind


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "ck.pth"
    TC.save_atomic(_state(1.0), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot read checkpoint .*ck.pth"):
        TC.load_training_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TC.load_training_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------- building and reading
def _micro():
    from mae_from_scratch.model import mae_vit_micro_patch4_32

    torch.manual_seed(0)
    return mae_vit_micro_patch4_32()


def test_training_checkpoint_round_trip_gives_back_the_encoder(tmp_path):
    from mae_from_scratch.data import dataset_info
    from mae_from_scratch.engine import EpochMeter
    from mae_from_scratch.optim import build_optimizer
    from mae_from_scratch.run_config import initial_config

    model = _micro()
    opt = build_optimizer(model, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    config = initial_config(None, ["--model", "mae_vit_micro_patch4_32", "--data_path", "/data/x"], {})
    config = config.derive(mean=(0.1, 0.2, 0.3))
    state = TC.training_checkpoint(model, opt, scaler, config, epoch=2, epoch_step=3, steps_per_epoch=5,
                                  epoch_meter=EpochMeter(loss_sum=1.5, steps=3), dataset=dataset_info("cifar10"))
    assert (state["epoch"], state["step"], state["epoch_step"]) == (2, 13, 3)
    assert state["args"]["mean"] == [0.1, 0.2, 0.3]  # tuples become lists: weights_only-safe
    assert state["config"]["asked"]["data_path"] == "/data/x" and state["config"]["derived"]["mean"] == [0.1, 0.2, 0.3]
    TC.save_atomic(state, tmp_path / "ck.pth")
    ck = TC.load_training_checkpoint(tmp_path / "ck.pth")
    assert ck["epoch_meter"] == {"loss_sum": 1.5, "steps": 3} and ck["dataset"]["name"] == "cifar10"

    enc = C.load_encoder_checkpoint(tmp_path / "ck.pth")
    assert enc.source == "ours" and enc.dataset == "cifar10" and enc.data_path == "/data/x"
    assert enc.mean == dataset_info("cifar10").mean and enc.model.config == model.config
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in enc.model.state_dict().items())
    bigger = C.load_encoder_checkpoint(tmp_path / "ck.pth", input_size=64)  # positions regenerated
    assert bigger.model.img_size == 64 and torch.equal(bigger.model.blocks[0].mlp.fc1.weight,
                                                       model.blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize("layout", ["official encoder-only", "official fine-tuned", "bare state dict"])
def test_encoder_from_other_checkpoints_infers_the_architecture(tmp_path, layout):
    model = _micro()
    enc = {k: v for k, v in model.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    if layout == "official fine-tuned":  # a classifier head that is not part of the encoder
        enc = {**enc, "head.weight": torch.zeros(10, 96), "head.bias": torch.zeros(10),
               "fc_norm.weight": torch.ones(96)}
    torch.save(enc if layout == "bare state dict" else {"model": enc}, tmp_path / "x.pth")
    assert C.infer_model_name(enc) == "mae_vit_micro_patch4_32"
    loaded = C.load_encoder_checkpoint(tmp_path / "x.pth")
    assert loaded.source == "official" and loaded.mean == (0.485, 0.456, 0.406)
    assert loaded.model.config == model.config
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in enc.items() if k in loaded.model.state_dict())
    # a width no factory has is refused with a hint
    wide = {**enc, "cls_token": torch.zeros(1, 1, 100)}
    with pytest.raises(ValueError, match="pass --model"):
        C.infer_model_name(wide)
