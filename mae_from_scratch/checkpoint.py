"""Loading official MAE checkpoints.

The official release ships two kinds of files, both ``{'model': state_dict}``:

* full models with the decoder, e.g. ``mae_visualize_vit_large.pth`` (used for
  the reconstruction pictures);
* encoder-only files, e.g. ``mae_pretrain_vit_base.pth`` (used for
  fine-tuning and linear probing).

Because our parameter names are the official ones, both load with
``strict=True``.  The positional embeddings are fixed sin-cos tables, so for
another image size we *regenerate* them for the new grid instead of
interpolating (interpolating a sin-cos table does not give a sin-cos table).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .pos_embed import get_2d_sincos_pos_embed

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
# A sin-cos table in float32 is reproduced to ~1e-7; anything further away was not
# made by the sin-cos recipe (a learned table, say) and must not be silently replaced.
POS_EMBED_ATOL = 1e-5


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model."""


@dataclass
class LoadReport:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    encoder_only: bool = False


def _is_decoder_key(k: str) -> bool:
    return k.startswith("decoder_") or k == "mask_token"


def read_state_dict(checkpoint, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Accept a path, a ``{'model': state_dict}`` dict or a plain state dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=weights_only)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the checkpoint holds no state dict (expected {'model': {name: tensor}})")
    return state


def _check_sincos(name: str, table: torch.Tensor) -> None:
    """Raise unless ``table`` (1, 1+L, D) is the standard 2-D sin-cos table with a cls row."""
    L, dim = table.shape[1] - 1, table.shape[2]
    grid = math.isqrt(L)
    if grid * grid != L:
        raise CheckpointMismatchError(f"{name} has {L} positions, which is not a square grid")
    expected = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
    err = (table[0].float() - expected).abs().max().item()
    if err > POS_EMBED_ATOL:
        raise CheckpointMismatchError(
            f"{name} in the checkpoint is not the fixed 2-D sin-cos table (max difference {err:.2e}); "
            "it cannot be regenerated for another image size"
        )


def load_official_checkpoint(model: nn.Module, checkpoint, strict: bool = True, weights_only: bool = True) -> LoadReport:
    """Load an official (or our own) MAE checkpoint into ``model``.

    Args:
        model: a :class:`~mae_from_scratch.MaskedAutoencoderViT`.
        checkpoint: a file path, a ``{'model': ...}`` dict or a state dict.
        strict: raise :class:`CheckpointMismatchError` on any mismatch, except that an
            encoder-only checkpoint loads its encoder with a warning that the
            decoder is missing (it keeps its fresh initialization).
        weights_only: passed to :func:`torch.load`.

    Positional-embedding tables whose grid differs from the model's are checked to be
    sin-cos tables and then replaced by the model's own table for its grid.
    """
    state = dict(read_state_dict(checkpoint, weights_only=weights_only))
    own = model.state_dict()
    report = LoadReport()

    for key in POS_EMBED_KEYS:
        if key in state and key in own and state[key].shape != own[key].shape:
            _check_sincos(key, state[key])
            state[key] = own[key].clone()
            report.regenerated.append(key)

    report.missing_keys = [k for k in own if k not in state]
    report.unexpected_keys = [k for k in state if k not in own]
    report.shape_mismatches = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    report.encoder_only = bool(report.missing_keys) and all(_is_decoder_key(k) for k in report.missing_keys)

    problems = report.unexpected_keys or report.shape_mismatches or (report.missing_keys and not report.encoder_only)
    if problems and strict:
        lines = ["the checkpoint does not fit the model:"]
        if report.missing_keys and not report.encoder_only:
            lines.append(f"  missing keys ({len(report.missing_keys)}): {report.missing_keys}")
        if report.unexpected_keys:
            lines.append(f"  unexpected keys ({len(report.unexpected_keys)}): {report.unexpected_keys}")
        if report.shape_mismatches:
            lines.append(f"  shape mismatches: {report.shape_mismatches}")
        raise CheckpointMismatchError("\n".join(lines))

    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
    if report.encoder_only:
        warnings.warn(
            "this is an encoder-only checkpoint: the encoder was loaded, the decoder is missing "
            f"({len(report.missing_keys)} tensors keep their random initialization), so "
            "reconstructions will be meaningless until the decoder is trained",
            UserWarning,
            stacklevel=2,
        )
    return report


# ==================================================================================
# Training checkpoints (written by pretraining, read by --resume and evaluation)
#
# Layout: the official one, ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``,
# plus what an exact resume needs (``step``, ``epoch_step``, ``rng``, ...).  Only
# tensors, numbers, strings, lists and dicts go in, so every file loads with
# ``torch.load(path, weights_only=True)`` (no pickled classes).
# ==================================================================================


def save_atomic(obj, path) -> None:
    """``torch.save(obj, path)`` so that ``path`` is always either the old or the new file.

    The object is written to a temporary file in the same folder, flushed to disk,
    then renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    A crash or kill in the middle leaves the previous ``path`` untouched and at
    worst a stray ``*.tmp`` file, which is removed when the error is seen.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
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
    """Read a checkpoint written by :func:`save_atomic` (``weights_only=True``, on the CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint (no 'model' entry)")
    return ckpt
