"""Training checkpoints are written atomically and load with weights_only=True."""

from __future__ import annotations

import os

import pytest
import torch

from mae_from_scratch import checkpoint as C


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((4, 4), v)}, "epoch": int(v), "args": {"lr": v, "name": "x"},
            "rng": {"torch": torch.get_rng_state()}}


def test_save_then_load_weights_only(tmp_path):
    path = tmp_path / "ck.pth"
    C.save_atomic(_state(1.0), path)
    ck = C.load_training_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(4, 4)) and ck["args"] == {"lr": 1.0, "name": "x"}


@pytest.mark.parametrize("crash_in", ["torch.save", "os.replace"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "ck.pth"
    C.save_atomic(_state(1.0), path)

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
        C.save_atomic(_state(2.0), path)
    monkeypatch.undo()

    ck = C.load_training_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(4, 4)) and ck["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]  # no temporary file left behind


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "ck.pth"
    C.save_atomic(_state(1.0), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot read checkpoint .*ck.pth"):
        C.load_training_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        C.load_training_checkpoint(tmp_path / "missing.pth")
