"""Training loops.

:func:`train_steps` is the smallest honest MAE training loop: a fixed batch,
the recipe's AdamW (:func:`~mae_from_scratch.optim.build_optimizer`), fresh
random masks at every step.  The chapters use it to train a tiny model for a
minute on a CPU.  :func:`train_one_epoch` is the pretraining epoch.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm  # plain tqdm: the widget form does not render in the static book

from .distributed import all_reduce_mean
from .optim import build_optimizer, set_lr
from .precision import choose_precision
from .train_step import train_step


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
        res = train_step(model, opt, lambda b: model(b, mask_ratio=mask_ratio, noise=noise), [batch],
                         device=device, where=f"step {step}")
        _, pred, mask = res.output
        with torch.no_grad():
            # The same error on the patches the encoder saw (ignored by the objective).
            loss_visible = model.forward_loss(batch, pred, 1 - mask) if mask.sum() < mask.numel() else torch.tensor(float("nan"))
        log.append({"step": step, "loss": res.loss, "loss_visible": loss_visible.item()})
    return log


# ==================================================================================
# The pretraining epoch (used by :mod:`mae_from_scratch.pretrain`)
# ==================================================================================


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
    end_step: int | None = None,
    precision=None,
    scaler=None,
    clip_grad: float | None = None,
    meter: EpochMeter | None = None,
    world_size: int = 1,
    after_step: Callable[[StepInfo], None] | None = None,
    progress: bool = True,
) -> EpochMeter:
    """Run optimizer steps ``start_step .. end_step - 1`` of ``epoch`` (``end_step``
    defaults to ``steps_per_epoch``, the whole epoch; a smaller one stops early).

    ``data_loader`` yields ``(imgs (B, 3, s, s), noise (B, L))`` already positioned
    at ``start_step`` (see :class:`~mae_from_scratch.data.ResumableSampler`); each
    optimizer step takes ``accum_iter`` of its batches.  The learning rate is set
    before every step from ``lr_fn(epoch + step / steps_per_epoch)``.  Each step is
    :func:`~mae_from_scratch.train_step.train_step` (precision, GradScaler,
    clipping, and a :class:`~mae_from_scratch.train_step.NonFiniteLossError` before
    the weights change, so the last checkpoint written stays the last good one).
    ``after_step`` is called after each step (logging, checkpoints).
    """
    end_step = steps_per_epoch if end_step is None else end_step
    precision = precision or choose_precision("cpu", "fp32")
    scaler = scaler if scaler is not None else precision.grad_scaler(device)
    meter = meter or EpochMeter()
    model.train()
    batches = iter(data_loader)
    images = 0
    t0 = time.perf_counter()
    # Plain tqdm (not tqdm.auto's widget, which a static book cannot render).
    bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", disable=not progress,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 2.0, file=sys.stderr)

    def loss_fn(batch):
        imgs, noise = batch
        return model(imgs.to(device, non_blocking=True), mask_ratio=mask_ratio,
                     noise=noise.to(device, non_blocking=True))

    try:
        for step in range(start_step, end_step):
            micro_batches = list(itertools.islice(batches, accum_iter))
            if len(micro_batches) < accum_iter:
                break  # the loader ran out (it holds whole steps only, so this is its end)
            lr = lr_fn(epoch + step / steps_per_epoch)
            set_lr(optimizer, lr)
            res = train_step(model, optimizer, loss_fn, micro_batches, device=device, precision=precision,
                             scaler=scaler, clip_grad=clip_grad, reduce=lambda x: all_reduce_mean(x, device),
                             where=f"epoch {epoch}, step {step} of {steps_per_epoch}")
            images += sum(imgs.shape[0] for imgs, _ in micro_batches)
            meter.loss_sum += res.loss
            meter.steps += 1
            ips = images * world_size / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
            if after_step is not None:
                after_step(StepInfo(epoch, step + 1, epoch * steps_per_epoch + step + 1, res.loss, lr, ips))
    finally:
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
