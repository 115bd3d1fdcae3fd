"""Time one MAE training step (forward, backward, AdamW) of our model and of
``transformers.ViTMAEForPreTraining`` with the same configuration, and print our speed
over theirs.

Fair by construction: same architecture and parameter count (checked), same
input and mask noise, same dtype (fp32, or autocast bf16/fp16 with --dtype),
same thread count (one process), SDPA attention on both sides, neither model
compiled, the same AdamW.  The two are timed alternately, step by step, so
a slow spell of the machine hits both; the ratio is of the medians.

    python benchmarks/bench_train_step.py                 # CPU, all configurations
    python benchmarks/bench_train_step.py --device cuda --dtype bf16
    python benchmarks/bench_train_step.py --configs tiny4_32 --reps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mae_from_scratch.model import create_model

# name: (our factory, batch on CPU, batch on GPU)
CONFIGS = {
    "micro4_32": ("mae_vit_micro_patch4_32", 64, 1024),
    "tiny4_32": ("mae_vit_tiny_patch4_32", 64, 1024),
    "tiny8_64": ("mae_vit_tiny_patch8_64", 64, 1024),
    "base16_224": ("mae_vit_base_patch16", 4, 128),
}


def hf_model(cfg, norm_pix_loss: bool, mask_ratio: float):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    hf = ViTMAEConfig(
        image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, qkv_bias=True,
        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
    )
    return ViTMAEForPreTraining._from_config(hf, attn_implementation="sdpa")


def trainable(m) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def make_step(model, forward, device, dtype):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.05)
    model.train()

    def step(imgs, noise):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(imgs, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, loss.item()

    return step


def bench(name: str, device: torch.device, dtype, reps: int, warmup: int, batch: int | None, norm_pix: bool):
    factory, cpu_batch, gpu_batch = CONFIGS[name]
    batch = batch or (gpu_batch if device.type == "cuda" else cpu_batch)
    torch.manual_seed(0)
    ours = create_model(factory, norm_pix_loss=norm_pix).to(device)
    theirs = hf_model(ours.config, norm_pix, 0.75).to(device)
    if trainable(ours) != trainable(theirs):
        raise RuntimeError(f"{name}: parameter counts differ ({trainable(ours)} vs {trainable(theirs)})")
    L = ours.patch_embed.num_patches
    imgs = torch.randn(batch, 3, ours.img_size, ours.img_size, device=device)
    noise = torch.rand(batch, L, device=device)
    step_ours = make_step(ours, lambda x, n: ours(x, 0.75, n)[0], device, dtype)
    step_theirs = make_step(theirs, lambda x, n: theirs(pixel_values=x, noise=n).loss, device, dtype)
    t_ours, t_theirs = [], []
    for i in range(warmup + reps):
        # alternate which goes first, so neither always runs on a warm cache
        order = [(step_ours, t_ours), (step_theirs, t_theirs)]
        for fn, acc in (order if i % 2 == 0 else order[::-1]):
            dt, _ = fn(imgs, noise)
            if i >= warmup:
                acc.append(dt)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    return {"config": name, "model": factory, "batch": batch, "params_M": round(trainable(ours) / 1e6, 2),
            "ours_ms": round(mo * 1e3, 2), "theirs_ms": round(mt * 1e3, 2),
            "ours_img_s": round(batch / mo, 1), "theirs_img_s": round(batch / mt, 1),
            "speed_ratio": round(mt / mo, 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["micro4_32", "tiny4_32", "tiny8_64", "base16_224"],
                   choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="override every configuration's batch")
    p.add_argument("--norm_pix_loss", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    import transformers

    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, device {device}, "
          f"dtype {args.dtype}, threads {torch.get_num_threads()}", flush=True)
    print(f"{'config':<12}{'batch':>6}{'ours ms':>10}{'HF ms':>10}{'ours img/s':>12}{'ours/HF':>9}", flush=True)
    rows = []
    for name in args.configs:
        r = bench(name, device, dtype, args.reps, args.warmup, args.batch, args.norm_pix_loss)
        rows.append(r)
        print(f"{name:<12}{r['batch']:>6}{r['ours_ms']:>10.1f}{r['theirs_ms']:>10.1f}{r['ours_img_s']:>12.1f}"
              f"{r['speed_ratio']:>8.2f}x", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
