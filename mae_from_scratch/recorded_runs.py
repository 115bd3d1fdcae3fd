"""The recorded runs the book shows: long training runs that the book build does not repeat.

Each lives in ``mae_from_scratch/recorded/NAME/`` (installed with the package, so a
notebook in Colab finds it too), as ``tools/record_run.py`` wrote it:

``run.json``         what the engine writes for every run (:class:`~mae_from_scratch.run_info.RunInfo`):
                     hardware, torch, git commit, command, preset, flags, seed, data (with
                     the archive's sha256), wall and CPU time, images/s, epochs run against
                     epochs scheduled, dates; :attr:`RecordedRun.run_info`;
``recording.json``   what the recording script did: its arguments, its probe, its parts'
                     times, its messages; :attr:`RecordedRun.recording`;
``log.txt``          one line per epoch; ``log_steps.jsonl``: steps (first 100, then every 10th);
``recon/epoch-NNNN.png``  reconstructions of fixed held-out test images during training;
``mask_ratios.png``  the trained model's reconstructions at mask ratios 50% to 90%;
``attention.npz``    its encoder's attention on the pictured images;
``eval.json``        frozen-feature accuracies (kNN, linear probe) of it and of a random encoder.

No checkpoint is kept.  :attr:`RecordedRun.label` is the line every figure drawn from a
recorded run carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .metrics import read_jsonl
from .run_info import RUN_INFO

RECORDED = Path(__file__).resolve().parent / "recorded"
CPU_RUN = "cifar10-cpu-vit-micro"
RECORDING = "recording.json"  # what tools/record_run.py did (its own file; run.json is the engine's)


@dataclass
class RecordedRun:
    """One recorded run: its folder and what its files hold."""

    name: str
    folder: Path
    run_info: dict  # run.json, written by the engine (run_info.RunInfo)
    recording: dict  # recording.json, written by tools/record_run.py
    eval: dict | None  # eval.json (None while a recording is under way)
    epoch_log: list
    step_log: list

    def snapshots(self) -> list[tuple[int, Path]]:
        """``(epochs done, picture)`` for every saved reconstruction grid, in order."""
        return sorted((int(p.stem.split("-")[1]), p) for p in (self.folder / "recon").glob("epoch-*.png"))

    @property
    def hardware(self) -> str:
        return self.run_info["hardware"]["summary"]  # run_info.hardware's own words

    @property
    def date(self) -> str:
        return self.run_info["started"][:10]

    @property
    def label(self) -> str:
        """E.g. 'recorded run: CPU only (AMD EPYC, 2 cores); 73 epochs, 84 min, 2026-11-28'."""
        return (f"recorded run: {self.hardware}; {self.run_info['epochs_run']} epochs, "
                f"{self.run_info['wall_s'] / 60:.0f} min, {self.date}")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_recorded_run(name: str = CPU_RUN, folder: Path | str | None = None) -> RecordedRun:
    """Read a recorded run (by name from the package, or from ``folder``)."""
    folder = Path(folder) if folder else RECORDED / name
    if not (folder / RUN_INFO).is_file():
        raise FileNotFoundError(f"no recorded run in {folder} ({RUN_INFO} is missing)")
    return RecordedRun(
        name=name, folder=folder, run_info=_json(folder / RUN_INFO), recording=_json(folder / RECORDING) or {},
        eval=_json(folder / "eval.json"), epoch_log=read_jsonl(folder / "log.txt"),
        step_log=read_jsonl(folder / "log_steps.jsonl"),
    )

