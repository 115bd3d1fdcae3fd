"""Estimate a preset's peak GPU memory without a GPU.

Peak training memory is about: fp32 weights + fp32 gradients + AdamW's two fp32
moments (16 bytes per trainable parameter; frozen tables 4 bytes), plus the
activations autograd keeps for the backward pass.  The activations are counted
exactly by running one forward pass on the CPU under the preset's autocast
dtype with :func:`torch.autograd.graph.saved_tensors_hooks` (each stored tensor
counted once), at a small batch, then scaled linearly to the preset's batch.
A 25% margin covers the CUDA allocator's rounding, cuBLAS/attention workspaces
and the temporaries of the backward pass.  The CUDA context itself (about 0.3-0.5
GB) is not part of the figure PyTorch reports.

    python benchmarks/estimate_memory.py colab_t4_cifar10 gpu_cifar10 gpu_imagenet_base
"""

from __future__ import annotations

import argparse

import torch

from mae_from_scratch.model import create_model
from mae_from_scratch.precision import choose_precision
from mae_from_scratch.presets import get_preset

MARGIN = 1.25


def saved_activation_bytes(model, batch: int, dtype) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    x = torch.randn(batch, 3, model.img_size, model.img_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _, _ = model(x, 0.75)
    # parameters (and their autocast copies, made once per step) are not activations
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def estimate(preset_name: str, probe_batch: int = 8) -> dict:
    preset = get_preset(preset_name)
    a = preset.args
    # the precision the preset gets on its GPU (T4: fp16; A100/H100: bf16)
    gpu_capability = (7, 5) if "t4" in preset_name else (8, 0)
    precision = "fp16" if gpu_capability[0] < 8 else "bf16"
    dtype = choose_precision("cpu", precision).dtype
    model = create_model(a["model"], norm_pix_loss=a.get("norm_pix_loss", False))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    states = 16 * trainable + 4 * frozen
    act = saved_activation_bytes(model, probe_batch, dtype) / probe_batch * a["batch_size"]
    total = (states + act) * MARGIN
    return {"preset": preset_name, "model": a["model"], "batch_size": a["batch_size"], "precision": precision,
            "weights_grads_adam_GB": round(states / 1e9, 3), "activations_GB": round(act / 1e9, 2),
            "estimated_peak_GB": round(total / 1e9, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="+")
    p.add_argument("--probe_batch", type=int, default=8)
    args = p.parse_args(argv)
    for name in args.presets:
        print(estimate(name, args.probe_batch), flush=True)


if __name__ == "__main__":
    main()
