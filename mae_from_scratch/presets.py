"""Named pretraining recipes, so nobody has to guess hyperparameters.

``python -m mae_from_scratch.pretrain --preset NAME`` starts from a preset; any
flag given on the command line (or keyword given to ``pretrain``) overrides it.
Each preset states its per-process batch size and the peak memory it is
expected to need; :func:`describe` prints them.  Memory figures for GPUs were
*computed*, not measured (see ``benchmarks/estimate_memory.py``): weights,
gradients and AdamW state in fp32 plus the activations autograd saves under
the preset's autocast dtype, plus 25% for the allocator and workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    hardware: str
    peak_memory: str  # what the preset is expected to need, and how that was found
    args: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    PRESETS[p.name] = p


_add(Preset(
    name="cpu_smoke",
    summary="ViT-micro/4 on 32 px, 4,096 images x 5 epochs: checks that everything runs (about a minute)",
    hardware="any CPU (2 cores: about a minute)",
    peak_memory="about 1.5 GB of RAM (measured: 1.4 GB peak on 2 cores)",
    args=dict(model="mae_vit_micro_patch4_32", input_size=32, batch_size=64, accum_iter=1, epochs=5,
              warmup_epochs=1, blr=1e-2, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75, norm_pix_loss=True,
              max_images=4096, num_workers=0, device="cpu", precision="fp32", save_every_steps=100,
              compile=False),
))

_add(Preset(
    name="cpu_cifar10",
    summary="ViT-micro/4 on all of CIFAR-10 (32 px), fp32 on the CPU: the preset of the book's recorded CPU run, "
            "which ran 45 epochs with 4 of warmup (about 50 s an epoch on 2 cores; choose --epochs for your time)",
    hardware="any CPU (2 cores: about 1,200 images/s)",
    peak_memory="about 2.5 GB of RAM (CIFAR-10 decoded once: 0.15 GB; the model and batch: under 1 GB)",
    args=dict(model="mae_vit_micro_patch4_32", dataset="cifar10", input_size=32, batch_size=256, accum_iter=1,
              epochs=60, warmup_epochs=5, blr=2e-3, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75,
              norm_pix_loss=True, num_workers=2, device="cpu", precision="fp32", save_every_steps=200,
              recon_every=5, compile=False),
))

_add(Preset(
    name="colab_t4_cifar10",
    summary="ViT-Tiny/4 on CIFAR-10 (32 px), 100 epochs, fp16 + GradScaler: about an hour on a Colab T4 (estimated)",
    hardware="one NVIDIA T4 (16 GB, 12 GB usable is enough), Colab's 2 CPU cores and 12.7 GB RAM",
    peak_memory="GPU about 4.1 GB in fp16 at batch 512 (computed: 3.9 GB for training plus 0.15 GB for "
                "CIFAR-10 held on the GPU by the device loader; fits the T4's 12 GB usable with room to spare); "
                "host RAM about 3 GB (CUDA libraries, CIFAR-10 decoded once), under Colab's 12.7 GB",
    args=dict(model="mae_vit_tiny_patch4_32", dataset="cifar10", input_size=32, batch_size=512, accum_iter=1,
              epochs=100, warmup_epochs=10, blr=1e-3, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75,
              norm_pix_loss=True, num_workers=2, device="cuda", precision="auto", save_every_steps=500,
              # Not compiled: compiling takes the first minutes of a one-hour session, and its gain
              # on a T4 has not been measured.
              compile=False),
))

_add(Preset(
    name="gpu_cifar10",
    summary="ViT-Tiny/4 on CIFAR-10, effective batch 4096 as in the paper, 800 epochs, bf16 (A100/H100-class)",
    hardware="one A100/H100-class GPU (or several through torchrun: divide --batch_size by their number)",
    peak_memory="GPU about 30 GB in bf16 at batch 4096 (computed; CIFAR-10 on the GPU adds 0.15 GB): "
                "a 40 GB A100 or larger",
    args=dict(model="mae_vit_tiny_patch4_32", dataset="cifar10", input_size=32, batch_size=4096, accum_iter=1,
              epochs=800, warmup_epochs=40, blr=1.5e-4, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75,
              norm_pix_loss=True, num_workers=8, device="cuda", precision="auto", save_every_steps=1000,
              compile=True),
))

_add(Preset(
    name="gpu_imagenet_base",
    summary="the paper's ViT-B/16 recipe on an ImageFolder (ImageNet): 224 px, effective batch 4096, 800 epochs",
    hardware="8 A100/H100-class GPUs through torchrun (batch 128 x accum 4 x 8 GPUs = 4096)",
    peak_memory="GPU about 19 GB per process in bf16 at batch 128 (computed)",
    args=dict(model="mae_vit_base_patch16", dataset="imagefolder", input_size=224, batch_size=128, accum_iter=4,
              epochs=800, warmup_epochs=40, blr=1.5e-4, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75,
              norm_pix_loss=True, num_workers=10, device="cuda", precision="auto", save_every_steps=1000,
              compile=True),
))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def describe() -> str:
    """A table of the presets: name, batch size, expected peak memory, hardware."""
    lines = []
    for p in PRESETS.values():
        a = p.args
        lines.append(f"{p.name}: {p.summary}\n    --model {a['model']} --batch_size {a['batch_size']} "
                     f"--accum_iter {a['accum_iter']} --epochs {a['epochs']}\n    hardware: {p.hardware}\n"
                     f"    peak memory: {p.peak_memory}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
