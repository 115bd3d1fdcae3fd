"""MAE pretraining: ``python -m mae_from_scratch.pretrain`` and :func:`pretrain`.

The flags are the official ones (``--model --input_size --batch_size --accum_iter
--epochs --mask_ratio --norm_pix_loss --weight_decay --blr --lr --min_lr
--warmup_epochs --data_path --output_dir --resume --seed --device --num_workers``)
plus ``--preset``, ``--dataset``, ``--precision``, ``--save_every_steps``,
``--auto_resume``, ``--overwrite``, ``--max_images``, ``--max_steps`` and ``--mount_drive``.

The run reads as stages, like the official ``main_pretrain.py``:

1. **configure** (:func:`configure`): every flag, the device, the output folder and
   the checkpoint to resume from are checked before any data is loaded or anything
   is written, and resolved once into a frozen
   :class:`~mae_from_scratch.run_config.RunConfig`; a bad one stops the run with one
   line naming the cause (:class:`~mae_from_scratch.cli_checks.InputError`);
2. **model and optimizer** (:func:`build_model_and_optimizer`), the checkpoint's
   weights checked against the model before any data is read;
3. **data** (:func:`build_data`);
4. **resume** (:meth:`PretrainRun.resume`): the position inside the schedule;
5. **loop** (:meth:`PretrainRun.train`): epochs of
   :func:`~mae_from_scratch.engine.train_one_epoch`, checkpoints, pictures, logs;
6. **finish** (:meth:`PretrainRun.finish`).

The output folder is handled by :mod:`~mae_from_scratch.run_folder`: a folder that
holds a run is continued (``--auto_resume``) or replaced (``--overwrite``), never
silently mixed with a new run, and locked while a run uses it.

Examples::

    python -m mae_from_scratch.pretrain --preset cpu_smoke --output_dir runs/smoke
    python -m mae_from_scratch.pretrain --preset colab_t4_cifar10 --output_dir runs/t4
    torchrun --nproc_per_node 8 -m mae_from_scratch.pretrain --preset gpu_imagenet_base \
        --data_path /data/imagenet --output_dir runs/base

From Python (a notebook)::

    from mae_from_scratch.pretrain import pretrain
    result = pretrain(preset="cpu_smoke", output_dir="runs/smoke")
    result.model, result.log_path

Exact resume: all randomness is a function of ``(seed, epoch, sample index)``
(augmentation and mask noise are drawn per sample, see
:class:`~mae_from_scratch.data.MAEPretrainDataset`; the shuffle is a function of
``(seed, epoch)``), and a checkpoint stores the position inside the epoch.  So
on a CPU a run that is killed and resumed ends with exactly the weights of a
run that was not, whatever the number of data-loader workers.  A resume keeps
what defines the run it continues (its data, seed, loader, mask ratio, target,
learning rate and effective batch; see
:data:`~mae_from_scratch.run_config.KEPT_ON_RESUME`): left out, they come from the
checkpoint; given with another value, they are refused.  ``run.json`` gives each
segment its command and what it changed (more epochs, say).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as D
from .checkpoint import CheckpointMismatchError
from .cli_checks import InputError, check_device, one_line, refuse
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from .engine import EpochMeter, StepInfo, compile_model, train_one_epoch
from .metrics import MetricsWriter
from .model import create_model
from .optim import build_optimizer, lr_at
from .precision import choose_precision
from .run_config import (
    RunConfig, check_args, check_resumed_batch, check_resumed_images, derive_settings, initial_config,
    kept_from_checkpoint, model_of, read_resume_checkpoint,
)
from .pretrain_data import PretrainData, build_pretrain_data
from .run_folder import (
    LAST_CHECKPOINT, check_not_overwriting, check_output_dir, claimed, clear_old_run, mount_drive_if_asked,
)
from .run_info import RunInfo, data_record
from .snapshots import fixed_noise, heldout_images, reconstruction_rows, save_grid, snapshot_path
from .train_step import NonFiniteLossError
from .training_checkpoint import save_atomic, training_checkpoint

@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: torch.nn.Module  # the trained MaskedAutoencoderViT (unwrapped, on its device)
    log_path: Path | None  # log.txt (per epoch); log_steps.jsonl sits beside it
    checkpoint: Path | None  # the last checkpoint written
    epoch_log: list  # the per-epoch metrics of this process's run
    config: RunConfig | None = None  # the run's settings and their sources


def pretrain(args=None, argv: list[str] | None = None, *, command: str | None = None, **kwargs) -> PretrainResult:
    """Pretrain an MAE; returns the model, the output folder and the metrics log path.

    Give either a parsed ``args`` namespace (from
    :func:`~mae_from_scratch.run_config.get_args_parser`), or
    command-line style ``argv``, or keywords named like the flags, e.g.
    ``pretrain(preset="cpu_smoke", output_dir="runs/smoke", epochs=3)``.
    """
    if command is None:
        command = _command_line(argv, kwargs) if args is None else "pretrain(args)"
    config, ckpt = configure(args, argv, kwargs)
    with claimed(_output_dir(config), main_process=os.environ.get("RANK", "0") == "0"):
        dist_info, device = init_distributed(config.device)
        try:
            return _pretrain(config, ckpt, dist_info, device, command)
        finally:
            cleanup_distributed()


def _pretrain(config: RunConfig, ckpt: dict | None, dist_info: DistInfo, device: torch.device,
              command: str) -> PretrainResult:
    precision = choose_precision(device, config.precision)
    config = derive_settings(config, dist_info.world_size, device, precision.name)
    saved = ckpt["args"] if ckpt is not None and isinstance(ckpt["args"], dict) else {}
    check_resumed_batch(config, saved)  # before the model and data are built
    model, optimizer, scaler = build_model_and_optimizer(config, ckpt, device, precision)
    config, data = build_data(config, model, dist_info, device, ckpt)
    check_resumed_images(config, saved)
    run = PretrainRun(config, model, optimizer, scaler, precision, data, dist_info, device)
    if ckpt is not None:
        run.resume(ckpt)
        del ckpt
    run.start(command)
    return run.train()


# ==================================================================================
# Stage 1: configure (nothing is loaded or written before every check has passed)
# ==================================================================================


def configure(args, argv, kwargs) -> tuple[RunConfig, dict | None]:
    """The run's settings, checked, and the checkpoint it continues (``None`` for a new run)."""
    config = initial_config(args, argv, kwargs)
    check_args(config)
    mount_drive_if_asked(config)
    check_device(config.device, purpose="pretraining")
    out = _output_dir(config)
    check_output_dir(out)
    check_not_overwriting(config, out)
    resume, auto = config.resume, not config.resume
    if auto and config.auto_resume and out is not None and (out / LAST_CHECKPOINT).is_file():
        resume = str(out / LAST_CHECKPOINT)
    if not resume:
        return config, None
    ckpt = read_resume_checkpoint(resume, config, auto=auto)
    saved = ckpt["args"] if isinstance(ckpt["args"], dict) else {}
    config = kept_from_checkpoint(resume, config, saved, auto=auto)
    if auto:
        config = config.derive(resume=resume)
    return config, ckpt


def _output_dir(config) -> Path | None:
    return Path(config.output_dir) if config.output_dir else None


# ==================================================================================
# Stage 2: the model and its optimizer
# ==================================================================================


def build_model_and_optimizer(config: RunConfig, ckpt: dict | None, device: torch.device, precision):
    """The model, on ``device``, its AdamW and GradScaler; a resumed run's state loaded into them.

    The checkpoint's weights are checked against the model here, before any data is read.
    """
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = create_model(config.model, norm_pix_loss=config.norm_pix_loss, img_size=config.input_size)
    scaler = precision.grad_scaler(device)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
            refuse(f"{config.resume} holds {model_of(ckpt)}, which does not fit --model {config.model} at "
                   f"--input_size {config.input_size} ({lines[0] if lines else e}); resume with the checkpoint's "
                   "--model and --input_size")
    # On its device before the optimizer state is loaded: loading places each state tensor on its
    # parameter's device (and dtype), and a later move of the model would leave that state behind.
    model.to(device)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            refuse(f"the optimizer state in {config.resume} does not fit --model {config.model} ({e})")
    return model, optimizer, scaler


# ==================================================================================
# Stage 3: the data
# ==================================================================================


def build_data(config: RunConfig, model, dist_info: DistInfo, device: torch.device,
               ckpt: dict | None) -> tuple[RunConfig, PretrainData]:
    """The data stage; returns the configuration with what it learned (loader, data set, statistics)."""
    saved = ckpt.get("args") if ckpt is not None and isinstance(ckpt.get("args"), dict) else {}
    device_run = saved.get("loader") == "device"
    try:
        data = build_pretrain_data(config, model.patch_embed.num_patches, dist_info, device,
                                   resumed_from=config.resume if device_run else None)
    except D.DataError as e:
        if config.sources.get("data_path") == "checkpoint":
            raise D.DataError(f"{e} (the data path {config.data_path!r} comes from the checkpoint {config.resume}; "
                              "give --data_path)") from e
        raise
    data.steps_per_epoch = len(data.loader) // config.accum_iter
    if data.steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(data.dataset)} images) is too small for one optimizer step of "
            f"{config.batch_size} x {config.accum_iter} x {dist_info.world_size} images; lower --batch_size"
        )
    config = config.derive(loader=data.loader_name, dataset=data.info.name, mean=list(data.info.mean),
                           std=list(data.info.std), num_images=len(data.dataset),
                           steps_per_epoch=data.steps_per_epoch)
    return config, data


# ==================================================================================
# Stages 4-6: resume, loop, finish
# ==================================================================================


class PretrainRun:
    """One run's training loop, and what happens between its steps: logs, checkpoints, pictures.

    Its state is the position in the schedule (``start_epoch``, ``start_step``, the
    epoch's running ``meter``), the images seen, and the last checkpoint written.
    """

    def __init__(self, config: RunConfig, model, optimizer, scaler, precision, data: PretrainData,
                 dist_info: DistInfo, device: torch.device):
        self.config, self.model, self.optimizer, self.scaler = config, model, optimizer, scaler
        self.precision, self.data, self.dist_info, self.device = precision, data, dist_info, device
        self.out = _output_dir(config)
        self.is_main = dist_info.is_main
        self.start_epoch, self.start_step, self.meter = 0, 0, EpochMeter()
        self.images_seen = 0
        self.last_loss: float | None = None
        self.last_checkpoint: Path | None = None  # written by this run
        self.last_written = None  # (path, step, loss) of the last checkpoint written or resumed from
        self.epoch_log: list[dict] = []
        self.snapshot_batch = None  # fixed held-out images and mask noise for the pictures
        self.epoch_seconds = 0.0

    # -------------------------------------------------------------------- stage 4: resume
    def resume(self, ckpt: dict) -> None:
        """Continue where ``ckpt`` stopped: at the next epoch, or inside the one it stopped in."""
        c, steps = self.config, self.data.steps_per_epoch
        saved = ckpt.get("args", {})
        epoch, epoch_step = int(ckpt["epoch"]), int(ckpt.get("epoch_step", steps))
        if epoch_step >= int(ckpt.get("steps_per_epoch", steps)):
            self.start_epoch, self.start_step = epoch + 1, 0  # the checkpoint closed its epoch
        else:
            saved_eff = saved.get("batch_size", 0) * saved.get("accum_iter", 1) * saved.get("world_size", 1)
            if saved_eff != c.effective_batch or ckpt.get("steps_per_epoch") != steps:
                raise ValueError(
                    f"{c.resume} stopped inside epoch {epoch} with an effective batch of {saved_eff} and "
                    f"{ckpt.get('steps_per_epoch')} steps per epoch; resuming inside an epoch needs the same "
                    f"(now {c.effective_batch} and {steps})"
                )
            self.start_epoch, self.start_step = epoch, epoch_step
            self.meter.load_state_dict(ckpt["epoch_meter"])
        # The CPU generator only; nothing in pretraining draws from a CUDA generator.
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.is_main:
            print(f"resumed from {c.resume}: epoch {self.start_epoch}, step {self.start_step} of {steps}",
                  flush=True)
        em = ckpt.get("epoch_meter") or {}
        self.last_written = (c.resume, ckpt.get("step"),
                             em["loss_sum"] / em["steps"] if em.get("steps") else None)

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0 or self.start_step > 0

    def start(self, command: str) -> None:
        """Logs opened (a new run's old ones cleared), the model wrapped, the run described."""
        c, data = self.config, self.data
        if self.out is not None and self.is_main and not self.resumed and (c.overwrite or c.auto_resume):
            clear_old_run(self.out, checkpoints=c.overwrite)  # starting over: nothing old mixes in
        self.writer = MetricsWriter(self.out, enabled=self.is_main)
        self.writer.truncate(self.start_epoch * data.steps_per_epoch + self.start_step, self.start_epoch)
        self.train_model = self.model
        if self.dist_info.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Compiled after the DDP wrap; checkpoints keep saving `model`, which shares the parameters.
        self.train_model = compile_model(self.train_model, c.compile)
        if self.is_main:
            # Short lines: they are printed in notebooks, whose pages fit 88 characters.
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            print(f"model {c.model} ({trainable / 1e6:.2f}M trainable)", flush=True)
            print(f"data {data.info.name}: {len(data.dataset)} images at {c.input_size} px ({c.loader} loader), "
                  f"{data.steps_per_epoch} steps/epoch", flush=True)
            print(f"effective batch {c.effective_batch} ({c.batch_size} x {c.accum_iter} accum x "
                  f"{c.world_size} processes), lr {c.lr:.3g}, precision {c.precision} on {self.device}",
                  flush=True)
        if c.recon_every and self.out is not None and self.is_main:
            imgs, _, _ = heldout_images(data.info.name, c.data_path, c.recon_images, c.input_size, data.info.mean,
                                        data.info.std, seed=c.seed, num_photos=c.num_photos)
            self.snapshot_batch = (imgs, fixed_noise(imgs.shape[0], self.model.patch_embed.num_patches, c.seed))
        self.run_info = RunInfo(self.out, enabled=self.is_main)
        self.run_info.start(args=c.as_args(), config=c.as_record(), device=self.device,
                            data=data_record(data.info.name, c.data_path, len(data.dataset)),
                            epochs_scheduled=c.epochs, resumed=self.resumed, command=command)
        if self.start_step == 0 and self.start_epoch % max(c.recon_every, 1) == 0:
            self.save_snapshot(self.start_epoch)

    # -------------------------------------------------------------------- stage 5: the loop
    def train(self) -> PretrainResult:
        """Epochs from where the run stands to ``--epochs``, or to ``--max_steps``."""
        c, steps = self.config, self.data.steps_per_epoch
        t_start = time.perf_counter()
        stopped = False
        try:
            for epoch in range(self.start_epoch, c.epochs):
                end_step = steps if c.max_steps is None else min(steps, c.max_steps - epoch * steps)
                if end_step <= self.start_step:  # a resumed run that had already reached --max_steps
                    stopped = True
                    break
                self.train_epoch(epoch, end_step)
                if end_step < steps:  # --max_steps inside this epoch: save where it stopped
                    self.save(epoch, end_step)
                    stopped = True
                    break
                self.close_epoch(epoch)
                if c.max_steps is not None and (epoch + 1) * steps >= c.max_steps and epoch + 1 < c.epochs:
                    stopped = True  # --max_steps reached at this epoch's end, which close_epoch saved
                    break
        except NonFiniteLossError as e:
            raise self._where_to_go_back(e) from e
        return self.finish(stopped, time.perf_counter() - t_start)

    def train_epoch(self, epoch: int, end_step: int) -> None:
        c, data = self.config, self.data
        data.sampler.set_position(epoch, self.start_step * c.accum_iter * c.batch_size)
        t0 = time.perf_counter()
        self.meter = train_one_epoch(
            self.train_model, data.loader, self.optimizer, self.device, epoch, self.lr_at, data.steps_per_epoch,
            mask_ratio=c.mask_ratio, accum_iter=c.accum_iter, start_step=self.start_step, end_step=end_step,
            precision=self.precision, scaler=self.scaler, clip_grad=c.clip_grad, meter=self.meter,
            world_size=c.world_size, after_step=self.after_step, progress=self.is_main and not c.no_progress,
        )
        self.epoch_seconds = time.perf_counter() - t0

    def lr_at(self, epoch_float: float) -> float:
        c = self.config
        return lr_at(epoch_float, c.lr, c.min_lr, c.warmup_epochs, c.epochs)

    def after_step(self, s: StepInfo) -> None:
        c = self.config
        self.last_loss = s.loss
        self.images_seen += c.effective_batch
        if self.is_main:
            self.writer.log_step({"step": s.global_step, "epoch": s.epoch, "epoch_step": s.epoch_step,
                                  "loss": s.loss, "lr": s.lr, "images_per_s": s.images_per_s})
        # An epoch's last step is saved when the epoch closes.
        inside = s.epoch_step < self.data.steps_per_epoch
        if inside and c.save_every_steps and s.global_step % c.save_every_steps == 0:
            self.save(s.epoch, s.epoch_step)

    def close_epoch(self, epoch: int) -> None:
        """An epoch's end: its log line, the checkpoints, the pictures, run.json."""
        c, steps = self.config, self.data.steps_per_epoch
        row = {"train_lr": self.optimizer.param_groups[0]["lr"], "train_loss": self.meter.loss, "epoch": epoch,
               "images_per_s": (steps - self.start_step) * c.effective_batch / max(self.epoch_seconds, 1e-9)}
        self.epoch_log.append(row)
        self.writer.log_epoch(row)
        self.save(epoch, steps)
        if c.recon_every and ((epoch + 1) % c.recon_every == 0 or epoch + 1 == c.epochs):
            self.save_snapshot(epoch + 1)
        self.run_info.update(epochs_run=epoch + 1, images=self.images_seen, last_train_loss=self.meter.loss)
        if epoch % c.save_freq == 0 or epoch + 1 == c.epochs:
            self.save(epoch, steps, name=f"checkpoint-{epoch}.pth")
        self.start_step, self.meter = 0, EpochMeter()

    def save(self, epoch: int, epoch_step: int, name: str = LAST_CHECKPOINT) -> None:
        if self.out is None or not self.is_main:
            return
        state = training_checkpoint(self.model, self.optimizer, self.scaler, self.config, epoch=epoch,
                                    epoch_step=epoch_step, steps_per_epoch=self.data.steps_per_epoch,
                                    epoch_meter=self.meter, dataset=self.data.info)
        save_atomic(state, self.out / name)
        self.last_checkpoint = self.out / name
        self.last_written = (self.last_checkpoint, epoch * self.data.steps_per_epoch + epoch_step, self.last_loss)

    def save_snapshot(self, epochs_done: int) -> None:
        if self.snapshot_batch is not None:
            imgs, noise = self.snapshot_batch
            rows = reconstruction_rows(self.model, imgs, self.data.info.mean, self.data.info.std,
                                       self.config.mask_ratio, noise)
            save_grid(rows, snapshot_path(self.out, epochs_done))

    def _where_to_go_back(self, e: NonFiniteLossError) -> NonFiniteLossError:
        where = ""
        if self.last_written is not None:
            path, step, loss = self.last_written
            where = f"; the last checkpoint written is {path} (step {step}" + (
                f", loss {loss:.4g})" if loss is not None else ")")
        return NonFiniteLossError(f"{e}{where}. Try a lower --blr, --clip_grad 1.0 or --precision fp32.")

    # -------------------------------------------------------------------- stage 6: finish
    def finish(self, stopped: bool, seconds: float) -> PretrainResult:
        barrier()
        epochs_run = (self.epoch_log[-1]["epoch"] + 1) if self.epoch_log else self.start_epoch
        self.run_info.update(epochs_run=epochs_run, images=self.images_seen, finished=not stopped)
        if self.is_main:
            print(f"{'stopped at --max_steps' if stopped else 'done'} in {seconds:.1f} s", flush=True)
        return PretrainResult(model=self.model, log_path=self.writer.epoch_log, checkpoint=self.last_checkpoint,
                              epoch_log=self.epoch_log, config=self.config)


def _command_line(argv, kwargs) -> str:
    """How this run was asked for, as a user would type it (for run.json)."""
    if argv is not None:
        return shlex.join(["python", "-m", "mae_from_scratch.pretrain", *map(str, argv)])
    return "pretrain(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def main(argv=None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        result = pretrain(argv=argv, command=_command_line(argv, {}))  # argv: which flags were given
    except (InputError, NonFiniteLossError, D.DataError, CheckpointMismatchError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    if result.epoch_log and int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result.epoch_log[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
