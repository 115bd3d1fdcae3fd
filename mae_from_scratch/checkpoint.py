"""Reading checkpoints: any checkpoint file, official MAE checkpoints, encoders.

* **Official MAE checkpoints** (:func:`load_official_checkpoint`).  The release
  ships two kinds of files, both ``{'model': state_dict}``: full models with the
  decoder, e.g. ``mae_visualize_vit_large.pth`` (used for the reconstruction
  pictures), and encoder-only files, e.g. ``mae_pretrain_vit_base.pth`` (used
  for fine-tuning and linear probing).  Because our parameter names are the
  official ones, both load with ``strict=True``.  The positional embeddings are
  fixed sin-cos tables, so for another image size we *regenerate* them for the
  new grid instead of interpolating (interpolating a sin-cos table does not
  give a sin-cos table).
* **An encoder from any of them** (:func:`load_encoder_checkpoint`): ours, which
  carry the model's configuration and the data statistics, official ones, or a
  bare state dict; used by :func:`mae_from_scratch.features.load_encoder`.
* **Any checkpoint file** (:func:`read_checkpoint_file`): ``torch.load`` on
  the CPU, whose many failures (missing, empty, truncated, pickled objects)
  become one error naming the path; every reader goes through it.

Training checkpoints (built, written atomically, read back for ``--resume``)
are :mod:`mae_from_scratch.training_checkpoint`'s.
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .model import MODELS, MAEConfig, MaskedAutoencoderViT, create_model
from .photos import IMAGENET_MEAN, IMAGENET_STD
from .pos_embed import get_2d_sincos_pos_embed

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
# A sin-cos table in float32 is reproduced to ~1e-7; anything further away was not
# made by the sin-cos recipe (a learned table, say) and must not be silently replaced.
POS_EMBED_ATOL = 1e-5


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model."""


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read: empty, truncated, not a checkpoint, or not
    loadable with ``weights_only=True``.  The message names the path."""


class WeightsOnlyCheckpointError(ValueError):
    """A file that holds model weights only (an official release, say) was given where
    a training checkpoint, with the optimizer's state, is needed (``--resume``)."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights (the run that wrote it diverged)."""


def _torch_error_summary(e: BaseException) -> str:
    """The first sentence of a :func:`torch.load` error, without its advice.

    torch suggests ``weights_only=False`` for files it will not unpickle safely;
    that runs arbitrary code from the file and is never passed on.
    """
    text = str(e).strip()
    if isinstance(e, (KeyError, UnicodeDecodeError)) or "load key" in text or "Unsupported operand" in text:
        return "the file is not a PyTorch checkpoint"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
        return ("it is not a plain tensor checkpoint: it holds pickled Python objects, "
                "which cannot be read safely (only tensors, numbers, strings, lists and dicts are accepted)")
    if isinstance(e, EOFError) or not text:
        return "the file ends too early (truncated or empty)"
    if "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupted (not a complete PyTorch zip archive)"
    first = text.splitlines()[0].split(". ")[0]
    return f"{type(e).__name__}: {first}"


def read_checkpoint_file(path, weights_only: bool = True):
    """``torch.load(path)`` on the CPU, with one clear error naming the path.

    Raises :class:`FileNotFoundError` for a missing file and
    :class:`CheckpointReadError` for one that is empty, truncated, not a
    checkpoint, or (with ``weights_only``) holds pickled Python objects.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointReadError(f"checkpoint {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if os.path.getsize(path) == 0:
            raise CheckpointReadError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except CheckpointReadError:
        raise
    except OSError as e:
        raise CheckpointReadError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointReadError(f"cannot read checkpoint {path}: {_torch_error_summary(e)}") from None
    return obj


def check_finite_weights(state: dict, where: str = "the checkpoint") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the tensors with NaN or inf values."""
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteWeightsError(
            f"{where} holds NaN or infinite weights in {len(bad)} tensor(s) ({shown}): the run that wrote it "
            "diverged; use an earlier checkpoint"
        )


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
    where = "the checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        where = f"checkpoint {os.fspath(checkpoint)}"
        checkpoint = read_checkpoint_file(checkpoint, weights_only=weights_only)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{where} must hold a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} holds no state dict (expected {{'model': {{name: tensor}}}})")
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

    A path that is missing raises :class:`FileNotFoundError`; one that is empty,
    truncated or not a checkpoint raises :class:`CheckpointReadError` naming it.

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
# An encoder from any checkpoint: ours, official, or a bare state dict
# ==================================================================================

# Keys of official *fine-tuned* checkpoints that are not part of the encoder.
_HEAD_PREFIXES = ("head.", "fc_norm.")


@dataclass
class Encoder:
    """A model read from a checkpoint, with what evaluating it needs to know."""

    model: MaskedAutoencoderViT
    mean: tuple  # the normalization it was pretrained with
    std: tuple
    dataset: str | None  # the data set it was pretrained on, when known
    data_path: str | None
    source: str  # 'ours', 'official' or 'random'


def infer_model_name(state: dict) -> str:
    """The factory in :data:`~mae_from_scratch.model.MODELS` whose encoder has the
    width, depth and patch size of the state dict ``state``."""
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for name, factory in MODELS.items():
        with torch.device("meta"):  # shapes only, no memory
            cfg = factory().config
        if (cfg.embed_dim, cfg.patch_size, cfg.depth) == (dim, patch, depth):
            return name
    raise ValueError(f"no model in MODELS has width {dim}, patch {patch} and depth {depth}; pass --model")


def _check_input_size(input_size, patch_size: int, path: str) -> None:
    if input_size is not None and input_size % patch_size:
        raise ValueError(
            f"input_size {input_size} is not divisible by the patch size {patch_size} of the model in {path}; "
            f"use a multiple of {patch_size}"
        )


def _infer_model_name(state: dict, path: str) -> str:
    needed = ("cls_token", "patch_embed.proj.weight")
    if any(k not in state for k in needed) or not any(k.startswith("blocks.") for k in state):
        raise ValueError(f"checkpoint {path} does not hold an MAE encoder (no {needed[0]}, "
                         f"{needed[1]} or blocks.* weights)")
    return infer_model_name(state)


def load_encoder_checkpoint(checkpoint, model: str | None = None, input_size: int | None = None) -> Encoder:
    """Build the model stored in ``checkpoint`` (a path) and load its encoder.

    * ours (a ``model_config`` entry): the architecture, statistics, data set
      and data path travel with the weights;
    * official ``{'model': state_dict}`` or a bare state dict: the architecture
      is ``model`` (a name in ``MODELS``) or inferred from the shapes, the
      statistics are ImageNet's.  Fine-tuning heads (``head.``, ``fc_norm.``)
      are dropped.

    An encoder-only file loads without the warning that its decoder is missing.
    ``input_size`` other than the stored one regenerates the sin-cos positions.
    """
    path = os.fspath(checkpoint)
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    raw = read_checkpoint_file(path)  # ours and official: {'model': ...}; or a bare state dict
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {path} must hold a dict, got {type(raw).__name__}")
    state = read_state_dict(raw)
    try:
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
        check_finite_weights(state, f"checkpoint {path}")
    except AttributeError:  # non-string keys
        raise ValueError(f"checkpoint {path} holds no state dict (its keys are not parameter names)") from None
    if "model_config" in raw:
        cfg = MAEConfig(**raw["model_config"])
        _check_input_size(input_size, cfg.patch_size, path)
        overrides = {"img_size": input_size} if input_size is not None else {}
        m = MaskedAutoencoderViT(cfg, **overrides)
        ds = raw.get("dataset", {})
        mean, std = tuple(ds.get("mean", IMAGENET_MEAN)), tuple(ds.get("std", IMAGENET_STD))
        pre_dataset, data_path, source = ds.get("name"), raw.get("args", {}).get("data_path"), "ours"
    else:
        if model:
            _infer_model_name(state, path)  # only its check that this is an MAE encoder
        name = model or _infer_model_name(state, path)
        with torch.device("meta"):  # only the configuration is needed
            meta_cfg = create_model(name).config
        if input_size is None:
            input_size = meta_cfg.img_size
        _check_input_size(input_size, meta_cfg.patch_size, path)
        m = create_model(name, img_size=input_size)
        mean, std, pre_dataset, data_path, source = IMAGENET_MEAN, IMAGENET_STD, None, None, "official"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="this is an encoder-only checkpoint")
        try:
            load_official_checkpoint(m, {"model": state}, strict=True)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"checkpoint {path} does not fit the model {_describe(m)}: "
                                          f"{_summary(e)}") from None
    return Encoder(m, mean, std, pre_dataset, data_path, source)


def _describe(m: MaskedAutoencoderViT) -> str:
    c = m.config
    return f"(width {c.embed_dim}, depth {c.depth}, patch {c.patch_size}, image {c.img_size})"


def _summary(e: Exception, keep: int = 3) -> str:
    """A :class:`CheckpointMismatchError` on one line, long key lists cut to their first items."""
    parts = []
    for line in str(e).splitlines()[1:] or [str(e)]:
        line = line.strip()
        head, sep, rest = line.partition(": [")
        if sep:
            try:
                items = [str(x) for x in ast.literal_eval("[" + rest)]
            except (ValueError, SyntaxError):
                items = [x.strip() for x in rest.rstrip("]").split(", ")]
            more = f" and {len(items) - keep} more" if len(items) > keep else ""
            line = f"{head}: {', '.join(items[:keep])}{more}"
        parts.append(line)
    return "; ".join(parts)
