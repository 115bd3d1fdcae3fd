"""Time one MAE training step (forward, backward, AdamW) of our model and of
``transformers.ViTMAEForPreTraining`` with the same configuration, and print our speed
over theirs.

Fair by construction: same architecture and parameter count (checked), same
input and mask noise, same precision (fp32, or autocast bf16/fp16 with --dtype;
fp16 with a GradScaler), same thread count (one process), SDPA attention on
both sides, both compiled (--compile) or neither, the same AdamW.  The two are
timed alternately, step by step, so a slow spell of the machine hits both; the
ratio is of the medians.  The timing code is
:func:`mae_from_scratch.hf_compare.compare_with_hf` (importable from a notebook).

    python benchmarks/bench_train_step.py                 # CPU, all configurations
    python benchmarks/bench_train_step.py --device cuda --dtype bf16
    python benchmarks/bench_train_step.py --configs tiny4_32 --reps 20
"""

from __future__ import annotations

import argparse
import json

import torch

from mae_from_scratch.hf_compare import compare_with_hf
from mae_from_scratch.model import create_model

# name: (our factory, batch on CPU, batch on GPU)
CONFIGS = {
    "micro4_32": ("mae_vit_micro_patch4_32", 64, 1024),
    "tiny4_32": ("mae_vit_tiny_patch4_32", 64, 1024),
    "tiny8_64": ("mae_vit_tiny_patch8_64", 64, 1024),
    "base16_224": ("mae_vit_base_patch16", 4, 128),
}


def bench(name: str, device: torch.device, dtype: str, reps: int, warmup: int, batch: int | None,
          norm_pix: bool, compile: bool = False, peak_tflops: float | None = None) -> dict:
    factory, cpu_batch, gpu_batch = CONFIGS[name]
    batch = batch or (gpu_batch if device.type == "cuda" else cpu_batch)
    torch.manual_seed(0)
    r = compare_with_hf(create_model(factory, norm_pix_loss=norm_pix), batch, device, precision=dtype,
                        steps=reps, warmup=warmup, compile=compile, peak_tflops=peak_tflops)
    ours, theirs = r["ours"], r["hf"]
    return {"config": name, "model": factory, "batch": batch, "params_M": round(r["params"] / 1e6, 2),
            "precision": ours["precision"], "compiled": compile,
            "ours_ms": round(ours["ms_per_step"], 2), "theirs_ms": round(theirs["ms_per_step"], 2),
            "ours_img_s": round(ours["images_per_s"], 1), "theirs_img_s": round(theirs["images_per_s"], 1),
            "speed_ratio": round(r["speed_ratio"], 3),
            "ours_mfu": None if ours["mfu"] is None else round(ours["mfu"], 4),
            "theirs_mfu": None if theirs["mfu"] is None else round(theirs["mfu"], 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["micro4_32", "tiny4_32", "tiny8_64", "base16_224"],
                   choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                   help="auto: the precision training would pick on this device")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="override every configuration's batch")
    p.add_argument("--norm_pix_loss", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (raise --warmup)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for MFU (default: known GPUs; none on a CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import transformers

    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, device {device}, "
          f"dtype {args.dtype}, threads {torch.get_num_threads()}, compiled {args.compile}", flush=True)
    print(f"{'config':<12}{'batch':>6}{'ours ms':>10}{'HF ms':>10}{'ours img/s':>12}{'ours/HF':>9}"
          f"{'ours MFU':>10}", flush=True)
    rows = []
    for name in args.configs:
        r = bench(name, device, args.dtype, args.reps, args.warmup, args.batch, args.norm_pix_loss,
                  args.compile, args.peak_tflops)
        rows.append(r)
        mfu = "-" if r["ours_mfu"] is None else f"{100 * r['ours_mfu']:.1f}%"
        print(f"{name:<12}{r['batch']:>6}{r['ours_ms']:>10.1f}{r['theirs_ms']:>10.1f}{r['ours_img_s']:>12.1f}"
              f"{r['speed_ratio']:>8.2f}x{mfu:>10}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
