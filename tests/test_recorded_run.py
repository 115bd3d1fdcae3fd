"""The recorded run the book shows (mae_from_scratch/recorded/): complete, small, and tied to the code.

The replay test re-runs the recorded run's first steps on this machine's CPU -- same
command, seed and data, fp32 -- and requires the logged losses back.  The record was made
in fp32 on a CPU, so the only differences are in the order of floating-point sums (thread
count, kernels); a relative tolerance of 1e-4 on the loss of each of the first five steps
leaves room for those and for nothing else.  (A bf16 or GPU record would need a looser one.)
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from _engine_helpers import cifar_tar_path
from mae_from_scratch.recorded_runs import CPU_RUN, RECORDED, load_recorded_run
from mae_from_scratch.run_record import file_sha256

FOLDER = RECORDED / CPU_RUN
REPLAY_STEPS = 5
REPLAY_RTOL = 1e-4


def test_record_names_what_produced_it():
    rec = load_recorded_run(CPU_RUN)
    run = rec.run
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
    assert "JPEG re-encoding" in rec.record["data_note"]
    # The pictures: before training, during, and after the last epoch.
    epochs = [e for e, _ in rec.snapshots()]
    assert epochs[0] == 0 and epochs[-1] == run["epochs_run"] and len(epochs) >= 4


def test_evaluation_is_complete():
    ev = load_recorded_run(CPU_RUN).eval
    for enc in ("trained", "random"):
        for pool in ("cls", "mean"):
            for metric in ("knn", "linear_probe"):
                assert 0.0 <= ev[f"{enc}_{pool}"][metric] <= 1.0
    assert 0.0 <= ev["raw_pixels"]["knn"] <= 1.0
    assert ev["protocol"]["test_images"] == 10_000 and ev["protocol"]["train_images"] == 50_000
    assert ev["protocol"]["tuning"].startswith("none")


def test_only_small_files_and_no_checkpoints():
    files = [p for p in FOLDER.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert p.suffix in {".json", ".jsonl", ".txt", ".png", ".npz"}, p
        assert p.stat().st_size < 1_000_000, f"{p} is {p.stat().st_size:,} bytes"


@pytest.mark.slow
def test_replay_reproduces_the_first_logged_losses(tmp_path):
    rec = load_recorded_run(CPU_RUN)
    tar = cifar_tar_path()
    if not tar.is_file():
        pytest.skip(f"the CIFAR-10 archive the run was recorded on is not here ({tar})")
    assert file_sha256(tar) == rec.run["data"]["sha256"], "a different CIFAR-10 archive than the recorded one"
    from mae_from_scratch.pretrain import _parse, pretrain

    argv = shlex.split(rec.run["command"])[3:]
    args = _parse(argv)  # the preset's values under the flags, as the run saw them
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
