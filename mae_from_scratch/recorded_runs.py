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
``eval.json``        frozen-feature accuracies (kNN, linear probe) of it and of a random encoder;
``model-fp16.pth``   the trained model (encoder and decoder) in half precision, about 1.1 MB,
                     whose sha256 ``recording.json`` holds (:func:`load_recorded_model`).

No training checkpoint is kept (optimizer state, full precision).  :attr:`RecordedRun.label` is the line every figure drawn from a
recorded run carries.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .metrics import read_jsonl
from .model import MaskedAutoencoderViT, create_model
from .run_info import RUN_INFO

RECORDED = Path(__file__).resolve().parent / "recorded"
CPU_RUN = "cifar10-cpu-vit-micro"
RECORDING = "recording.json"  # what tools/record_run.py did (its own file; run.json is the engine's)
MODEL_FILE = "model-fp16.pth"
# The fixed sin-cos tables are not saved: the model computes them itself, in full precision.
FIXED_TABLES = ("pos_embed", "decoder_pos_embed")


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



def save_recorded_model(model: MaskedAutoencoderViT, model_name: str, path: Path | str) -> str:
    """Save ``model``'s weights in half precision (the sin-cos tables left out) and return
    the file's sha256, which the recording keeps beside it.  Written to a temporary file,
    then renamed, so a killed save leaves no half-written file under ``path``'s name."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items() if k not in FIXED_TABLES}
    buffer = io.BytesIO()
    torch.save({"model": model_name, "norm_pix_loss": model.norm_pix_loss, "state_dict": state}, buffer)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def load_recorded_model(name: str = CPU_RUN, folder: Path | str | None = None) -> MaskedAutoencoderViT:
    """The trained model of a recorded run, in float32 and eval mode.

    Its file must match the sha256 its ``recording.json`` gives: a damaged or replaced
    file is refused with a message, not loaded.  The weights were saved in half
    precision, so features differ from the run's own in the third decimal; the test
    of this function checks that they reproduce ``eval.json``'s kNN accuracy.
    """
    folder = Path(folder) if folder else RECORDED / name
    path = folder / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the recorded run {name!r} ships no model: {path} is missing")
    expected = (_json(folder / RECORDING) or {}).get("model_sha256")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if expected != actual:
        raise ValueError(f"{path} has sha256 {actual[:12]}..., but {RECORDING} names "
                         f"{str(expected)[:12]}...: the file is damaged or not this run's model")
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = create_model(saved["model"], norm_pix_loss=saved["norm_pix_loss"])
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()},
                                                strict=False)
    if sorted(missing) != sorted(FIXED_TABLES) or unexpected:
        raise ValueError(f"{path} does not fit {saved['model']}: missing {missing}, unexpected {unexpected}")
    return model.eval()


EXPERIMENTS = "cifar10-cpu-experiments"


@dataclass
class RecordedExperiments:
    """The paper's experiments at small scale, as ``tools/record_experiments.py`` wrote them:
    one ``NAME.json`` per experiment and the script's ``recording.json``."""

    folder: Path
    recording: dict
    runs: dict  # name -> that experiment's file

    @property
    def label(self) -> str:
        """The line every figure drawn from these records carries."""
        dates = sorted(r["finished"][:10] for r in self.runs.values())
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        return f"recorded: {self.recording['hardware']['summary']}; {when}"


def load_recorded_experiments(name: str = EXPERIMENTS, folder: Path | str | None = None) -> RecordedExperiments:
    """Read the recorded experiments (by name from the package, or from ``folder``)."""
    folder = Path(folder) if folder else RECORDED / name
    recording = _json(folder / RECORDING)
    if recording is None:
        raise FileNotFoundError(f"no recorded experiments in {folder} ({RECORDING} is missing)")
    runs = {p.stem: _json(p) for p in sorted(folder.glob("*.json")) if p.name != RECORDING}
    return RecordedExperiments(folder=folder, recording=recording, runs=runs)
