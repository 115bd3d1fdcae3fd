"""One optimizer step, the same for every loop in the package.

Pretraining (:func:`~mae_from_scratch.engine.train_one_epoch`), the chapters' short
runs (:func:`~mae_from_scratch.engine.train_steps`), fine-tuning
(:func:`~mae_from_scratch.finetune.finetune`) and the speed benchmarks
(:mod:`~mae_from_scratch.timing`) all train through :func:`train_step`, so what is
timed is what trains, and a safeguard added here protects every loop.

One step, in order:

1. for each micro-batch: the forward pass under the chosen precision (autocast),
   then the backward pass of ``loss / number of micro-batches`` through the
   GradScaler (under DDP, the gradient all-reduce waits for the last micro-batch);
2. the mean loss (over micro-batches, and over ranks with ``reduce``) must be
   finite, or :class:`NonFiniteLossError` is raised before the weights change;
3. with ``clip_grad``: unscale the gradients, then clip their norm (the true
   gradients, not the scaled ones);
4. the optimizer step (skipped by the GradScaler when fp16 gradients overflowed),
   the scaler's update, and the gradients set to ``None``.

For fp32 and bf16 the scaler is a disabled ``GradScaler``, which changes nothing,
so there is one code path for every precision.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .precision import Precision, choose_precision


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the step stopped before the optimizer step."""


@dataclass
class StepResult:
    """What :func:`train_step` returns."""

    loss: float  # the mean loss over the micro-batches (and the ranks, with ``reduce``)
    output: Any  # what ``loss_fn`` returned for the last micro-batch


def _loss_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any], Any],
    micro_batches: Sequence,
    *,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    reduce: Callable[[float], float] | None = None,
    where: str = "",
) -> StepResult:
    """One optimizer step of ``model`` over ``micro_batches`` (gradient accumulation).

    ``loss_fn(batch)`` runs the forward pass of one micro-batch and returns the
    loss, or a tuple whose first item is the loss (e.g. ``(loss, pred, mask)``).
    ``model`` is only used to skip DDP's gradient all-reduce (``no_sync``) on all
    micro-batches but the last.  ``scaler`` defaults to a disabled GradScaler for
    fp32/bf16; fp16 needs a real one, kept across steps (``precision.grad_scaler``).
    ``reduce`` turns this rank's mean loss into the mean over ranks, so every rank
    takes the same decision on a non-finite loss.  ``where`` (e.g. ``"epoch 3,
    step 12"``) is named in the error.
    """
    n = len(micro_batches)
    if n < 1:
        raise ValueError("train_step needs at least one micro-batch")
    precision = precision or choose_precision("cpu", "fp32")
    scaler = scaler if scaler is not None else precision.grad_scaler(device)
    losses, output = [], None
    for i, batch in enumerate(micro_batches):
        last = i == n - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast(device):
                output = loss_fn(batch)
            loss = _loss_of(output)
            losses.append(loss.detach().float())
            scaler.scale(loss / n).backward()

    value = torch.stack(losses).mean().item() if n > 1 else losses[0].item()
    if reduce is not None:
        value = reduce(value)
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        at = f" at {where}" if where else ""
        raise NonFiniteLossError(f"the loss is {value}{at}; stopping before the optimizer step so the "
                                 "weights stay finite")
    if clip_grad is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    scaler.step(optimizer)  # skipped when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(value, output)
