"""The metrics log of a pretraining run, and how to read it back.

Two files in ``output_dir``, one JSON object per line:

* ``log.txt``: one line per epoch, as the official code writes it
  (``{"train_lr": ..., "train_loss": ..., "epoch": ...}``, plus ``images_per_s``);
* ``log_steps.jsonl``: one line per optimizer step
  (``{"step", "epoch", "loss", "lr", "images_per_s"}``), for curves within an epoch.

On resume both files are cut back to what the checkpoint had seen, so a run
that was killed and resumed leaves the same logs as one that was not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EPOCH_LOG = "log.txt"
STEP_LOG = "log_steps.jsonl"


def read_jsonl(path) -> list[dict]:
    """Every JSON object of a one-object-per-line file (``[]`` if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    return rows


def read_epoch_log(output_dir) -> list[dict]:
    """The per-epoch metrics of the run in ``output_dir`` (or of a log.txt path)."""
    p = Path(output_dir)
    return read_jsonl(p if p.is_file() else p / EPOCH_LOG)


def read_step_log(output_dir) -> list[dict]:
    """The per-step metrics of the run in ``output_dir``."""
    return read_jsonl(Path(output_dir) / STEP_LOG)


class MetricsWriter:
    """Appends metrics lines; only rank 0 writes (pass ``enabled=False`` elsewhere)."""

    def __init__(self, output_dir, enabled: bool = True):
        self.dir = Path(output_dir) if output_dir else None
        self.enabled = enabled and self.dir is not None
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def epoch_log(self) -> Path | None:
        return self.dir / EPOCH_LOG if self.dir else None

    def _append(self, name: str, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def log_step(self, row: dict) -> None:
        self._append(STEP_LOG, row)

    def log_epoch(self, row: dict) -> None:
        self._append(EPOCH_LOG, row)

    def truncate(self, global_step: int, completed_epochs: int) -> None:
        """Drop lines a killed run wrote after its last checkpoint."""
        if not self.enabled:
            return
        for name, keep in ((STEP_LOG, lambda r: r.get("step", 0) <= global_step),
                           (EPOCH_LOG, lambda r: r.get("epoch", 0) < completed_epochs)):
            path = self.dir / name
            if path.is_file():
                rows = [r for r in read_jsonl(path) if keep(r)]
                tmp = path.with_suffix(path.suffix + ".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                os.replace(tmp, path)
