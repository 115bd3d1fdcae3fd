"""Training loops.

:func:`train_steps` is the smallest honest MAE training loop: a fixed batch,
the recipe's AdamW (:func:`~mae_from_scratch.optim.build_optimizer`), fresh
random masks at every step.  The chapters use it to train a tiny model for a
minute on a CPU.  :func:`train_one_epoch` is the pretraining epoch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm  # plain tqdm: the widget form does not render in the static book

from .distributed import all_reduce_mean
from .optim import build_optimizer, set_lr
from .precision import choose_precision


def train_steps(
    model: torch.nn.Module,
    imgs: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    mask_ratio: float = 0.75,
    weight_decay: float = 0.05,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Train ``model`` for ``steps`` AdamW steps on ``imgs`` and return a metrics log.

    The optimizer is the pretraining recipe's: AdamW with ``betas=(0.9, 0.95)``,
    ``weight_decay`` on the weight matrices and tokens but not on norms and
    biases, the fixed positional tables left out (see :mod:`mae_from_scratch.optim`).

    Each step draws its mask noise (and, with ``batch_size``, its mini-batch)
    from a generator seeded with ``seed``, so two calls with the same arguments
    and the same initial model give the same losses on the same device.

    Returns one dict per step: ``step``, ``loss`` (on removed patches, the
    training objective) and ``loss_visible`` (the same error on visible
    patches, which the objective ignores).
    """
    device = next(model.parameters()).device
    imgs = imgs.to(device)
    g = torch.Generator().manual_seed(seed)
    opt = build_optimizer(model, lr, weight_decay)
    n = imgs.shape[0]
    num_patches = model.patch_embed.num_patches
    log = []
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="train", ascii=True):
        batch = imgs
        if batch_size is not None and batch_size < n:
            batch = imgs[torch.randperm(n, generator=g)[:batch_size].to(device)]
        noise = torch.rand(batch.shape[0], num_patches, generator=g).to(device)
        loss, pred, mask = model(batch, mask_ratio=mask_ratio, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            # The same error on the patches the encoder saw (ignored by the objective).
            loss_visible = model.forward_loss(batch, pred, 1 - mask) if mask.sum() < mask.numel() else torch.tensor(float("nan"))
        log.append({"step": step, "loss": loss.item(), "loss_visible": loss_visible.item()})
    return log


# ==================================================================================
# The pretraining epoch (used by :mod:`mae_from_scratch.pretrain`)
# ==================================================================================


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the optimizer step."""


@dataclass
class EpochMeter:
    """Running sums for the epoch's averages; saved in checkpoints so a resumed
    epoch reports the same averages as an uninterrupted one."""

    loss_sum: float = 0.0
    steps: int = 0

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum, "steps": self.steps}

    def load_state_dict(self, d: dict) -> None:
        self.loss_sum, self.steps = float(d["loss_sum"]), int(d["steps"])

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


@dataclass
class StepInfo:
    """What the loop reports after every optimizer step."""

    epoch: int
    epoch_step: int  # optimizer steps done in this epoch (1-based after the step)
    global_step: int  # optimizer steps done since the start of training
    loss: float  # mean over ranks and accumulated micro-batches
    lr: float
    images_per_s: float  # all ranks together, since the start of this epoch's run


def train_one_epoch(
    model: torch.nn.Module,
    data_loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    lr_fn: Callable[[float], float],
    steps_per_epoch: int,
    *,
    mask_ratio: float = 0.75,
    accum_iter: int = 1,
    start_step: int = 0,
    precision=None,
    scaler=None,
    clip_grad: float | None = None,
    meter: EpochMeter | None = None,
    world_size: int = 1,
    after_step: Callable[[StepInfo], None] | None = None,
    progress: bool = True,
) -> EpochMeter:
    """Run optimizer steps ``start_step .. steps_per_epoch - 1`` of ``epoch``.

    ``data_loader`` yields ``(imgs (B, 3, s, s), noise (B, L))`` already positioned
    at ``start_step`` (see :class:`~mae_from_scratch.data.ResumableSampler`).
    The learning rate is set before every optimizer step from ``lr_fn(epoch +
    step / steps_per_epoch)``.  Every step goes through ``scaler`` (by default
    ``precision.grad_scaler(device)``: a real GradScaler for fp16, a disabled one,
    which changes nothing, for fp32 and bf16), so there is one code path.  ``after_step`` is called after each optimizer step
    (logging, checkpoints).  Raises :class:`NonFiniteLossError` before stepping on
    a NaN/inf loss, so the last checkpoint written stays the last good one.
    """
    precision = precision or choose_precision("cpu", "fp32")
    scaler = scaler if scaler is not None else precision.grad_scaler(device)
    meter = meter or EpochMeter()
    model.train()
    step = start_step
    micro_losses = []
    images = 0
    t0 = time.perf_counter()
    total_micro = (steps_per_epoch - start_step) * accum_iter
    # Plain tqdm (not tqdm.auto's widget, which a static book cannot render).
    bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", disable=not progress,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 2.0, file=sys.stderr)
    for i, (imgs, noise) in enumerate(data_loader):
        if i >= total_micro:
            break
        last_micro = (i + 1) % accum_iter == 0
        if i % accum_iter == 0:
            lr = lr_fn(epoch + step / steps_per_epoch)
            set_lr(optimizer, lr)
        imgs = imgs.to(device, non_blocking=True)
        noise = noise.to(device, non_blocking=True)
        # Under DDP, skip the gradient all-reduce on micro-batches that do not step.
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast(device):
                loss, _, _ = model(imgs, mask_ratio=mask_ratio, noise=noise)
            loss_value = loss.item()
            micro_losses.append(loss_value)
            scaler.scale(loss / accum_iter).backward()
        images += imgs.shape[0]
        if not last_micro:
            continue

        step_loss = all_reduce_mean(sum(micro_losses) / len(micro_losses), device)
        micro_losses = []
        if not math.isfinite(step_loss):
            bar.close()
            raise NonFiniteLossError(
                f"the loss is {step_loss} at epoch {epoch}, step {step} of {steps_per_epoch}; stopping "
                "before the optimizer step so the weights stay finite"
            )
        if clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        meter.loss_sum += step_loss
        meter.steps += 1

        ips = images * world_size / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
        if after_step is not None:
            after_step(StepInfo(epoch, step, epoch * steps_per_epoch + step, step_loss, lr, ips))
    bar.close()
    return meter


# ==================================================================================
# Compilation
# ==================================================================================


def compile_model(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` when ``enabled``, otherwise ``model`` itself.

    Compilation is meant for the GPU presets and is off on the CPU: the first
    steps are slow while the graphs are compiled, which a short CPU run never
    wins back.  The compiled module shares its parameters with ``model``, so keep
    a handle on ``model`` and save ``model.state_dict()`` in checkpoints (the
    compiled wrapper's keys carry an ``_orig_mod.`` prefix).  Prints nothing.

    Raises ``ValueError`` when ``enabled`` on a torch without ``torch.compile``.
    """
    if not enabled:
        return model
    if not hasattr(torch, "compile"):
        raise ValueError(f"compilation was asked for, but torch {torch.__version__} has no torch.compile "
                         "(it needs torch >= 2.0); turn compilation off")
    return torch.compile(model)
