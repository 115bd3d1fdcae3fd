"""Training checkpoints: written by pretraining, read back by ``--resume`` and evaluation.

:func:`training_checkpoint` builds one, :func:`save_atomic` writes it (so a
kill mid-write never leaves a half-written file under its name),
:func:`remove_stale_temporaries` clears what such a kill left behind, and
:func:`load_training_checkpoint` reads it back.  Reading any checkpoint file,
official ones and encoders is :mod:`mae_from_scratch.checkpoint`'s.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict

import torch

from .checkpoint import WeightsOnlyCheckpointError, read_checkpoint_file

# Layout: the official one, ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``,
# plus what an exact resume needs (``step``, ``epoch_step``, ``rng``, ...) and
# what evaluation needs (``model_config``, ``dataset``).  Only tensors, numbers,
# strings, lists and dicts go in, so every file loads with
# ``torch.load(path, weights_only=True)`` (no pickled classes).


def training_checkpoint(model, optimizer, scaler, config, *, epoch: int, epoch_step: int, steps_per_epoch: int,
                        epoch_meter, dataset) -> dict:
    """The checkpoint of a pretraining run at optimizer step ``epoch_step`` of ``epoch``.

    ``model`` is the unwrapped :class:`~mae_from_scratch.MaskedAutoencoderViT`;
    ``config`` the run's :class:`~mae_from_scratch.run_config.RunConfig`, saved twice:
    as the official layout's flat ``args``, which a resume reads, and as ``config``,
    each setting under its source (asked, preset, default, checkpoint, derived); ``epoch_meter`` the running sums of the epoch
    (anything with ``state_dict()``); ``dataset`` a
    :class:`~mae_from_scratch.data.DatasetInfo` (name, statistics, classes).
    The epoch is complete when ``epoch_step == steps_per_epoch``.
    """
    # The CPU generator only: pretraining draws nothing from a CUDA generator, and the
    # per-GPU states would not fit a resume on another number of GPUs.
    rng = {"torch": torch.get_rng_state()}
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "scaler": scaler.state_dict(),
        "args": config.as_args(),
        "config": config.as_record(),
        "step": epoch * steps_per_epoch + epoch_step,  # optimizer steps since the start
        "epoch_step": epoch_step,  # optimizer steps done in `epoch` (the sampler position)
        "steps_per_epoch": steps_per_epoch,
        "epoch_meter": epoch_meter.state_dict(),
        "rng": rng,
        "model_config": asdict(model.config),
        "dataset": {"name": dataset.name, "mean": list(dataset.mean), "std": list(dataset.std),
                    "classes": list(dataset.classes) if dataset.classes else None},
    }


def _temporary_name(name: str, pid: int) -> str:
    """The file :func:`save_atomic` writes before renaming it to ``name``."""
    return f".{name}.{pid}.tmp"


_TEMPORARY = re.compile(r"^\.(?P<name>.+\.pth)\.(?P<pid>\d+)\.tmp$")  # _temporary_name's pattern


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def remove_stale_temporaries(folder) -> list:
    """Delete the temporary files that a :func:`save_atomic` killed mid-write left in
    ``folder`` (those whose process is gone); returns their paths."""
    removed = []
    if folder is None or not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        m = _TEMPORARY.match(entry.name)
        if m and entry.is_file():
            pid = int(m.group("pid"))
            if pid == os.getpid() or not process_alive(pid):
                try:
                    os.remove(entry.path)
                    removed.append(entry.path)
                except OSError:
                    pass
    return removed


def save_atomic(obj, path) -> None:
    """``torch.save(obj, path)`` so that ``path`` is always either the old or the new file.

    The object is written to a temporary file in the same folder, flushed to disk,
    then renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    A crash or kill in the middle leaves the previous ``path`` untouched and at
    worst a stray ``*.tmp`` file, which is removed when the error is seen (or, after a
    kill, by :func:`remove_stale_temporaries`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _temporary_name(os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # Make the rename itself durable (POSIX); not possible on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_training_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_atomic` (``weights_only=True``, on the CPU).

    Raises :class:`FileNotFoundError`, :class:`CheckpointReadError` (empty,
    truncated, garbage or pickled-object files), :class:`WeightsOnlyCheckpointError`
    for a file of model weights only (an official release: it cannot be resumed;
    start from it with :func:`load_official_checkpoint`), or :class:`ValueError`
    for any other dict without a ``'model'`` entry.  Every message names the path.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint (no 'model' entry)")
    if "optimizer" not in ckpt and "epoch" not in ckpt:
        raise WeightsOnlyCheckpointError(
            f"{path} holds model weights only (no optimizer state or epoch), so a run cannot resume from it; "
            "to start from these weights, load them with load_official_checkpoint(model, path) "
            "and train a new run"
        )
    return ckpt
