"""Measuring speed: loader and training-step throughput, model FLOPs utilisation.

Four questions come up when a run is slower than hoped, and each has a function:

* Can the data loader keep up?  :func:`loader_images_per_s` times batches
  coming out of any iterable of ``(imgs, noise)`` pairs, moved to the device.
* How fast is a training step?  :func:`train_step_images_per_s` times full
  steps (forward under the precision's autocast, backward, AdamW step) on
  random inputs, and reports the model FLOPs utilisation (MFU): the share of
  the GPU's peak FLOP rate that the model's own arithmetic uses.
* Is our model slower than a reference?
  :func:`~mae_from_scratch.hf_compare.compare_with_hf` times our model and
  Hugging Face's ``ViTMAEForPreTraining`` with the same configuration,
  alternately in one process, and reports the ratio (its own module, built on
  this one's training step and report).
* How much does dropping the masked tokens save (the paper's Table 2)?
  :func:`mask_token_speedup` times MAE (the encoder on the visible patches
  only) with decoders of several depths against one baseline, the paper's:
  the encoder with mask tokens and an 8-block decoder; it sets each measured
  ratio beside the FLOP ratio of the same model.

Step times are medians over the timed steps (after warm-up), so one slow
spell of a shared machine does not move the result.  On a GPU every timing
is bracketed by ``torch.cuda.synchronize()``: kernels run asynchronously, and
without it a timer measures only how fast they were queued.

From a notebook::

    from mae_from_scratch.model import create_model
    from mae_from_scratch.timing import train_step_images_per_s
    train_step_images_per_s(create_model("mae_vit_tiny_patch4_32"), 256, "cuda")
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from typing import Callable, Iterable

import torch

from .engine import compile_model
from .train_step import train_step
from .flops import encoder_decoder_flops, mask_token_baseline_flops
from .model import MAEConfig, MaskedAutoencoderViT, create_model
from .precision import Precision, choose_precision

__all__ = [
    "PEAK_TFLOPS",
    "gpu_peak_tflops",
    "loader_images_per_s",
    "mask_token_speedup",
    "train_step_images_per_s",
    "training_flops",
]

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendor's data sheets,
# in TFLOP/s, matched against torch.cuda.get_device_name() in this order.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,
    "L4": 121.0,
    "T4": 65.0,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak_tflops(device) -> float | None:
    """The dense bf16/fp16 peak of ``device`` in TFLOP/s, or None when unknown.

    None on a CPU and on GPUs missing from :data:`PEAK_TFLOPS` (pass your
    GPU's figure as ``peak_tflops=`` to the timing functions instead).  It is
    the low-precision peak: an fp32 run measured against it shows a low MFU,
    which is the point (fp32 leaves most of the tensor cores idle).
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        # a whole word: "L4" is not the L40S
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return value
    return None


# ----------------------------------------------------------------------------------
# The data loader
def _passes(loader: Iterable) -> Iterable:
    """Batches of ``loader``, starting a new pass when one ends (a new epoch); a
    one-shot iterator (a generator) ends when it is exhausted."""
    one_shot = isinstance(loader, Iterator)  # asked without calling iter(), which may start workers
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty or one_shot:
            return


def loader_images_per_s(loader: Iterable, device="cpu", batches: int = 20, warmup: int = 2) -> float:
    """Images per second that ``loader`` delivers onto ``device``.

    ``loader`` is any iterable of ``(imgs, noise)`` pairs (a ``DataLoader`` over
    :class:`~mae_from_scratch.data.MAEPretrainDataset`, a batched on-device
    loader, a generator).  Each batch is moved to ``device`` as training does
    (``non_blocking=True``); the first ``warmup`` batches (worker start-up,
    first-touch costs) are not timed, then ``batches`` batches are, and the
    clock stops after a final synchronization on CUDA.  When the loader ends
    early (a new pass is started if it can be iterated again) the rate is over
    the batches that were timed.  Nothing else runs, so this is the loader's
    ceiling: training is at most this fast.
    """
    device = torch.device(device)
    if batches < 1 or warmup < 0:
        raise ValueError(f"need batches >= 1 and warmup >= 0, got batches={batches}, warmup={warmup}")
    it = _passes(loader)

    def take() -> int | None:
        try:
            imgs, noise = next(it)
        except StopIteration:
            return None
        imgs.to(device, non_blocking=True)
        noise.to(device, non_blocking=True)
        return imgs.shape[0]

    try:
        for _ in range(warmup):
            if take() is None:
                raise ValueError(f"the loader ended during the {warmup} warm-up batches")
        _sync(device)
        images, timed = 0, 0
        t0 = time.perf_counter()
        for _ in range(batches):
            n = take()
            if n is None:
                break
            images += n
            timed += 1
        _sync(device)
        dt = time.perf_counter() - t0
    finally:
        it.close()  # let go of the loader's iterator (and its worker processes)
    if timed == 0:
        raise ValueError("the loader yielded no batch after the warm-up")
    return images / max(dt, 1e-9)


# ----------------------------------------------------------------------------------
# FLOPs
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def training_flops(model: MaskedAutoencoderViT, batch_size: int = 1, mask_ratio: float = 0.75) -> int:
    """FLOPs of one training step of ``model`` on ``batch_size`` images.

    Counted as 3 x the forward pass: :func:`~mae_from_scratch.flops.encoder_decoder_flops`
    of a copy of the model built on the ``meta`` device (no memory, no
    arithmetic) at ``mask_ratio``, and the backward pass taken as twice the
    forward (a gradient with respect to the inputs and one with respect to the
    weights for every matrix product).  Like the counter, it counts matrix
    products, convolutions and attention, not element-wise work, the loss or
    the optimizer: the usual convention for MFU.
    """
    model = _unwrap(model)
    with torch.device("meta"):
        meta = MaskedAutoencoderViT(model.config)
    return 3 * encoder_decoder_flops(meta, mask_ratio=mask_ratio, batch_size=batch_size).total


def _mfu(flops_per_step: int, seconds_per_step: float, peak: float | None) -> float | None:
    if peak is None:
        return None
    return flops_per_step / seconds_per_step / (peak * 1e12)


# ----------------------------------------------------------------------------------
# Training steps
def _as_precision(device: torch.device, precision) -> Precision:
    return precision if isinstance(precision, Precision) else choose_precision(device, precision)


def _make_step(model: torch.nn.Module, forward: Callable, device: torch.device, precision: Precision):
    """One training step of ``model`` as a function ``(imgs, noise) -> seconds``.

    The step is the one every loop trains with
    (:func:`~mae_from_scratch.train_step.train_step`, its non-finite check
    included), so the time is a training step's.  The same AdamW
    (``betas=(0.9, 0.95)``, weight decay 0.05 on every trainable tensor) for
    any model, so two models are timed on the same footing; fp16 goes through
    a GradScaler, as in training.
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.05)
    scaler = precision.grad_scaler(device)
    model.train()

    def step(imgs: torch.Tensor, noise: torch.Tensor) -> float:
        _sync(device)
        t = time.perf_counter()
        train_step(model, opt, lambda batch: forward(*batch), [(imgs, noise)], device=device, precision=precision,
                   scaler=scaler)
        _sync(device)
        return time.perf_counter() - t

    return step


def _alternate(steps_fns: list[Callable], imgs, noise, steps: int, warmup: int) -> list[list[float]]:
    """Run the step functions in turn, ``warmup + steps`` rounds, swapping the order
    every round so none always runs first (on a warm or a cold cache); returns the
    timed seconds of each."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    times: list[list[float]] = [[] for _ in steps_fns]
    order = list(range(len(steps_fns)))
    for i in range(warmup + steps):
        for k in (order if i % 2 == 0 else order[::-1]):
            dt = steps_fns[k](imgs, noise)
            if i >= warmup:
                times[k].append(dt)
    return times


def _random_batch(model: MaskedAutoencoderViT, batch_size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    s, L = model.img_size, model.patch_embed.num_patches
    imgs = torch.randn(batch_size, model.in_chans, s, s, generator=g).to(device)
    noise = torch.rand(batch_size, L, generator=g).to(device)
    return imgs, noise


def _report(times: list[float], batch_size: int, flops: int, peak: float | None, precision: Precision,
            compiled: bool) -> dict:
    sec = statistics.median(times)
    return {
        "images_per_s": batch_size / sec,
        "ms_per_step": sec * 1e3,
        "batch_size": batch_size,
        "steps": len(times),
        "precision": precision.name,
        "compiled": compiled,
        "flops_per_step": flops,
        "achieved_tflops": flops / sec / 1e12,
        "peak_tflops": peak,
        "mfu": _mfu(flops, sec, peak),
    }


def train_step_images_per_s(
    model: MaskedAutoencoderViT,
    batch_size: int,
    device="cpu",
    precision="auto",
    steps: int = 10,
    warmup: int = 3,
    mask_ratio: float = 0.75,
    compile: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    """Time full training steps of ``model`` on random inputs.

    A step is what :func:`~mae_from_scratch.engine.train_one_epoch` does per
    batch: the forward pass under ``precision``'s autocast (``'auto'``: bf16 on
    recent GPUs, fp16 with a GradScaler on older ones, fp32 on the CPU; see
    :mod:`~mae_from_scratch.precision`), the backward pass, an AdamW step.
    ``model`` is moved to ``device`` and trained in place on noise, so pass a
    copy if its weights matter.  With ``compile=True`` it is wrapped by
    :func:`~mae_from_scratch.engine.compile_model` (raise ``warmup``: the first
    steps compile).

    Returns a dict: ``images_per_s`` and ``ms_per_step`` (from the median
    step), ``flops_per_step`` (:func:`training_flops`: 3 x the forward FLOPs at
    ``mask_ratio``), ``achieved_tflops``, ``peak_tflops`` (given, or
    :func:`gpu_peak_tflops`) and ``mfu`` = achieved / peak (None when
    the peak is unknown, as on a CPU), plus ``batch_size``, ``steps``,
    ``precision`` and ``compiled``.
    """
    device = torch.device(device)
    prec = _as_precision(device, precision)
    model = _unwrap(model).to(device)
    run = compile_model(model, compile)
    step = _make_step(model, lambda x, n: run(x, mask_ratio, n)[0], device, prec)
    imgs, noise = _random_batch(model, batch_size, device)
    (times,) = _alternate([step], imgs, noise, steps, warmup)
    peak = peak_tflops if peak_tflops is not None else gpu_peak_tflops(device)
    return _report(times, batch_size, training_flops(model, batch_size, mask_ratio), peak, prec, compile)


# ----------------------------------------------------------------------------------
# The paper's Table 2: visible patches only against one baseline with mask tokens
def _config_of(model) -> MAEConfig:
    if isinstance(model, str):
        with torch.device("meta"):  # only the configuration
            return create_model(model).config
    if isinstance(model, MAEConfig):
        return model
    if isinstance(model, torch.nn.Module):
        return _unwrap(model).config
    raise TypeError(f"model must be a model name, an MAEConfig or a MaskedAutoencoderViT, got {type(model).__name__}")


def mask_token_speedup(
    model="mae_vit_base_patch16",
    batch_size: int = 2,
    mask_ratios=(0.75,),
    decoder_depths=(8, 1),
    device="cpu",
    precision="auto",
    steps: int = 3,
    warmup: int = 1,
    seed: int = 0,
    *,
    baseline_decoder_depth: int = 8,
) -> list[dict]:
    """Time MAE training steps against the paper's one baseline with mask tokens (Table 2).

    The baseline is a single entry, as in the paper's table: the encoder with
    mask tokens (every patch goes through it, a mask token in place of each
    removed one: ``model(x, r, noise, encoder_mask_tokens=True)``) followed by
    a decoder of ``baseline_decoder_depth`` blocks (the paper's 8).  Every
    decoder depth in ``decoder_depths`` is measured against that same entry,
    with the encoder on the visible patches only (``model(x, r, noise)``);
    the 1-block decoder is therefore credited with both savings, the encoder's
    and the lighter decoder's, as the paper's 3.7x is.

    Models are built with the architecture of ``model`` (a name in
    :data:`~mae_from_scratch.model.MODELS`, an
    :class:`~mae_from_scratch.model.MAEConfig` or a model, whose weights are
    not touched: fresh copies are built, each seeded with ``seed``), one per
    decoder depth, the baseline's included.  The encoder is the same in all
    of them, so a comparison is always within one model.  For every mask
    ratio the baseline and every visible-only entry take training steps as in
    :func:`train_step_images_per_s` (forward under autocast, backward, AdamW
    with its own state per entry) on the same inputs and the same mask, in
    turn in one loop (the order reversed every round), so a slow spell of the
    machine hits them all.

    Returns one dict per (decoder depth, mask ratio), decoder depths in the
    order given, mask ratios within each: ``decoder_depth``, ``mask_ratio``,
    ``visible_ms`` (the median step time of the visible-only entry),
    ``baseline_ms`` (the baseline's, shared by the rows of one mask ratio),
    ``speedup`` = ``baseline_ms / visible_ms`` (measured), ``flop_ratio`` =
    the baseline's forward FLOPs
    (:func:`~mae_from_scratch.flops.mask_token_baseline_flops`) over the
    entry's (:func:`~mae_from_scratch.flops.encoder_decoder_flops`), which is
    also the ratio of training FLOPs, plus ``baseline_decoder_depth``,
    ``batch_size``, ``steps``, ``precision`` and ``device``.  Printed::

        rows = mask_token_speedup("mae_vit_base_patch16", 2, (0.75,), (8, 1))
        print(f"baseline: mask tokens, {rows[0]['baseline_decoder_depth']}-block decoder")
        for r in rows:
            print(f"{r['decoder_depth']:>2} blocks {r['mask_ratio']:.0%} "
                  f"{r['visible_ms']:6.0f} ms against {r['baseline_ms']:6.0f} ms: "
                  f"{r['speedup']:.2f}x (FLOPs {r['flop_ratio']:.2f}x)")

    The paper's numbers (He et al. 2021, Table 2: ViT-L and ViT-H, decoder
    512 wide, mask ratio 0.75, 800 epochs of pretraining timed on 128 TPU-v3
    cores): the ViT-L baseline takes 42.4 h; with the encoder on the visible
    patches ViT-L trains 2.8x faster with the 8-block decoder (15.4 h) and
    3.7x faster with a 1-block decoder (11.6 h); ViT-H 3.5x and 4.1x.  The
    paper's FLOP figure is for ViT-L with the 8-block decoder, 3.3x fewer
    training FLOPs (Section 4.1 and Table 1c); it gives none for the 1-block
    decoder.  This package's counter gives 3.2x and 4.2x for ViT-L.

    The FLOP ratio depends on the model: the smaller the encoder, the larger
    the share of the (fixed-size) decoder, so ViT-B counts 2.35x with the
    8-block decoder and 4.45x with the 1-block one, ViT-H 3.6x and 4.1x.
    Set the paper's ViT-L speed-ups beside its own FLOP ratios, and a ViT-B
    measurement beside ViT-B's.  The FLOP ratio is what the speed-up would be
    if time followed FLOPs; every cost paid alike by both (LayerNorms, the
    optimizer step, the loss, moving memory) pulls the measured one below it,
    more so at a small batch on a CPU.

    The defaults are Table 2's setting (mask ratio 0.75, decoders of 8 and 1
    blocks, baseline with 8) on ViT-B/16 at batch 2 with 3 timed steps after
    1 warm-up step, sized for a CPU (12 ViT-B steps per mask ratio);
    ``mask_ratios=(0.5, 0.75, 0.9)`` shows the trend.  For ViT-L/H on a GPU
    pass ``device='cuda'`` and a larger batch.
    """
    device = torch.device(device)
    prec = _as_precision(device, precision)
    base = _config_of(model)
    depths = (base.decoder_depth,) if decoder_depths is None else tuple(int(d) for d in decoder_depths)
    ratios = tuple(mask_ratios)
    if not ratios or not depths:
        raise ValueError("need at least one mask ratio and one decoder depth")
    # One model per distinct depth; the baseline shares the model of its depth (its own AdamW, though).
    models = {}
    for depth in dict.fromkeys((baseline_decoder_depth, *depths)):
        torch.manual_seed(seed)
        models[depth] = MaskedAutoencoderViT(base, decoder_depth=depth).to(device)
    with torch.device("meta"):  # for the FLOP counts: shapes only
        metas = {depth: MaskedAutoencoderViT(base, decoder_depth=depth) for depth in models}
    baseline_flops = mask_token_baseline_flops(metas[baseline_decoder_depth]).total
    reference = models[baseline_decoder_depth]
    imgs, noise = _random_batch(reference, batch_size, device)
    cells = {}
    for j, ratio in enumerate(ratios):
        baseline = _make_step(reference, lambda x, n, r=ratio: reference(x, r, n, encoder_mask_tokens=True)[0],
                              device, prec)
        visible = [_make_step(models[d], lambda x, n, m=models[d], r=ratio: m(x, r, n)[0], device, prec)
                   for d in depths]
        t_base, *t_visible = _alternate([baseline, *visible], imgs, noise, steps, warmup)
        baseline_ms = statistics.median(t_base) * 1e3
        for i, (depth, times) in enumerate(zip(depths, t_visible)):
            visible_ms = statistics.median(times) * 1e3
            cells[i, j] = {
                "decoder_depth": depth, "mask_ratio": ratio, "visible_ms": visible_ms, "baseline_ms": baseline_ms,
                "speedup": baseline_ms / visible_ms,
                "flop_ratio": baseline_flops / encoder_decoder_flops(metas[depth], ratio).total,
                "baseline_decoder_depth": baseline_decoder_depth, "batch_size": batch_size, "steps": steps,
                "precision": prec.name, "device": str(device),
            }
    del models, reference
    return [cells[i, j] for i in range(len(depths)) for j in range(len(ratios))]
