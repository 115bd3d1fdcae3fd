"""The GPU presets' code paths, run on the CPU.

``colab_t4_cifar10``, ``gpu_cifar10`` and ``gpu_imagenet_base`` each run here with their
own flags on ``--device cpu``, for two optimizer steps (``--max_steps 2``) of a small
batch of a tiny data set.  Besides that, every run changes three things, none of which
selects a code path: the model is ViT-micro/4 at 32 px (the presets' ViT-Tiny and ViT-B
are too slow for a CPU test), and ``--warmup_epochs 0`` with a larger ``--blr`` make two
steps move the weights visibly (the presets' warmup holds the learning rate near 0 at first).

What the CPU stands in for, and what it cannot:

* precision: ``--precision auto`` picks fp32 on a CPU, so the first two tests force what
  auto picks on their GPUs (fp16 + GradScaler on a T4, bf16 on compute capability 8+);
  the DDP test keeps auto (fp32 here), which one process reproduces to rounding.  CPU autocast
  casts the same kinds of ops (matmuls, convolutions) and ``torch.amp.GradScaler('cpu')``
  runs the same scale / unscale / skip / update code as on CUDA; the CUDA kernels
  themselves (cuBLAS, flash attention) and where *they* overflow in fp16 are not tested.
* ``torch.compile``: inductor generates C++ kernels here, Triton kernels on a GPU; the
  presets' default mode uses no CUDA graphs.  On the CPU the masking code reads the
  noise's values (a finiteness check it skips on a GPU), which breaks the compiled
  forward into several graphs; on a GPU it is one graph.
* DDP: gloo instead of NCCL.  Under DDP the model is compiled with the ``aot_eager``
  backend (dynamo, DDP's graph splitting, AOTAutograd, no code generation): two ranks
  generating C++ kernels at once on two cores take several minutes, and inductor's code
  generation for this model is tested in one process.
* pinned memory: ``--pin_mem`` (on by default on CUDA) reaches the ``DataLoader``, but
  without a GPU torch leaves the memory unpinned.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from PIL import Image

from _engine_helpers import make_cifar_like_folder, make_image_folder, run_two_ranks
from mae_from_scratch import pretrain as P
from mae_from_scratch.training_checkpoint import load_training_checkpoint
from mae_from_scratch.metrics import read_step_log
from mae_from_scratch.model import mae_vit_micro_patch4_32

SMALL = ["--device", "cpu", "--model", "mae_vit_micro_patch4_32", "--input_size", "32", "--warmup_epochs", "0",
         "--no_progress"]


def _losses(out) -> list[float]:
    return [s["loss"] for s in read_step_log(out)]


def _record_linear_dtypes(monkeypatch) -> set:
    """The dtypes of every ``nn.Linear`` output in the models ``pretrain`` builds from now on."""
    seen: set = set()
    real = P.create_model

    def create(*a, **k):
        model = real(*a, **k)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
        return model

    monkeypatch.setattr(P, "create_model", create)
    return seen


def _adam_moments(ck: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """AdamW's first and second moments of every parameter, each as one flat vector."""
    states = [ck["optimizer"]["state"][i] for i in sorted(ck["optimizer"]["state"])]
    return (torch.cat([s["exp_avg"].flatten() for s in states]),
            torch.cat([s["exp_avg_sq"].flatten() for s in states]))


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- T4: fp16 + GradScaler
@pytest.mark.slow
def test_colab_t4_preset_trains_in_fp16_through_a_grad_scaler_that_is_saved_and_restored(tmp_path, monkeypatch):
    data = make_cifar_like_folder(tmp_path / "cifar", per_class=2)  # 20 images: 2 steps of 8 per epoch
    t4 = ["--preset", "colab_t4_cifar10", *SMALL, "--blr", "0.1", "--data_path", str(data), "--batch_size", "8"]
    dtypes = _record_linear_dtypes(monkeypatch)

    P.pretrain(argv=[*t4, "--precision", "fp16", "--max_steps", "2", "--output_dir", str(tmp_path / "fp16")])
    fp16_dtypes = set(dtypes)
    dtypes.clear()
    P.pretrain(argv=[*t4, "--precision", "fp32", "--max_steps", "2", "--output_dir", str(tmp_path / "fp32")])
    assert fp16_dtypes == {torch.float16} and dtypes == {torch.float32}  # autocast really ran in fp16

    half, full = _losses(tmp_path / "fp16"), _losses(tmp_path / "fp32")
    assert len(half) == 2 and torch.isfinite(torch.tensor(half)).all() and half[1] < half[0]
    # The same weights, images and masks: fp16 rounding moves the first loss a little, not much.
    assert 0 < abs(half[0] - full[0]) < 1e-2 * full[0]

    ck = load_training_checkpoint(tmp_path / "fp16" / "checkpoint-last.pth")
    assert ck["step"] == 2 and ck["args"]["precision"] == "fp16" and ck["args"]["loader"] == "device"
    assert ck["args"]["num_workers"] == 2 and ck["args"]["compile"] is False  # the preset's own
    # Two steps through an enabled scaler, neither of which overflowed.
    assert ck["scaler"] == {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                            "growth_interval": 2000, "_growth_tracker": 2}
    ck32 = load_training_checkpoint(tmp_path / "fp32" / "checkpoint-last.pth")
    assert ck32["scaler"] == {}  # fp32 goes through a disabled scaler
    # The optimizer saw unscaled gradients: AdamW's moments match fp32's, not 65536 (or 65536**2) times them.
    for m16, m32 in zip(_adam_moments(ck), _adam_moments(ck32)):
        assert torch.nn.functional.cosine_similarity(m16, m32, dim=0) > 0.99
        assert 0.9 < (m16.norm() / m32.norm()).item() < 1.1

    # --clip_grad (the advice when a run diverges) unscales before clipping; the step must not
    # unscale again.  A limit no gradient reaches leaves every number as it was.
    P.pretrain(argv=[*t4, "--precision", "fp16", "--clip_grad", "1e6", "--max_steps", "2",
                     "--output_dir", str(tmp_path / "clip")])
    clipped = load_training_checkpoint(tmp_path / "clip" / "checkpoint-last.pth")
    assert _same_state(clipped["model"], ck["model"]) and clipped["scaler"] == ck["scaler"]
    assert all(torch.equal(a, b) for a, b in zip(_adam_moments(clipped), _adam_moments(ck)))

    # Stop after one step, give the saved scaler a state of its own, and resume.
    P.pretrain(argv=[*t4, "--precision", "fp16", "--max_steps", "1", "--output_dir", str(tmp_path / "one")])
    first = load_training_checkpoint(tmp_path / "one" / "checkpoint-last.pth")
    assert first["step"] == 1 and first["scaler"]["_growth_tracker"] == 1

    def resume_with_scaler(name: str, **scaler) -> dict:
        out = tmp_path / name
        out.mkdir()
        torch.save({**first, "scaler": {**first["scaler"], **scaler}}, out / "checkpoint-last.pth")
        P.pretrain(argv=[*t4, "--precision", "fp16", "--max_steps", "2", "--output_dir", str(out), "--auto_resume"])
        return load_training_checkpoint(out / "checkpoint-last.pth")

    # 1,999 steps without overflow were counted: this step is the 2,000th, so the scale
    # doubles (a fresh scaler would hold 65536 with one step counted).  The run ends
    # bit for bit where the uninterrupted one did.
    grown = resume_with_scaler("grown", _growth_tracker=1999)
    assert grown["step"] == 2 and grown["scaler"]["scale"] == 2.0 ** 17 and grown["scaler"]["_growth_tracker"] == 0
    assert _same_state(grown["model"], ck["model"])
    # At a scale of 2**20 the fp16 gradients overflow: the scaler skips the optimizer step
    # (the weights and AdamW's state stay those of step 1) and halves the scale.
    skipped = resume_with_scaler("overflow", scale=2.0 ** 20)
    assert skipped["step"] == 2 and skipped["scaler"]["scale"] == 2.0 ** 19
    assert skipped["scaler"]["_growth_tracker"] == 0
    assert _same_state(skipped["model"], first["model"])
    assert all(int(s["step"]) == 1 for s in skipped["optimizer"]["state"].values())


# ---------------------------------------------------------------------------------- A100: compile + bf16
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # the preset's 8 workers, 2 cores
def test_gpu_cifar10_preset_compiles_with_inductor_and_trains_in_bf16(tmp_path, monkeypatch):
    data = make_cifar_like_folder(tmp_path / "cifar", per_class=2)
    gpu = ["--preset", "gpu_cifar10", *SMALL, "--blr", "0.1", "--data_path", str(data), "--batch_size", "8",
           "--max_steps", "2"]
    compiled = []
    real_compile = P.compile_model
    monkeypatch.setattr(P, "compile_model", lambda m, on: compiled.append(real_compile(m, on)) or compiled[-1])
    torch._dynamo.reset()  # graphs compiled by earlier tests would be reused and counted nowhere
    counters = torch._dynamo.utils.counters
    counters.clear()

    P.pretrain(argv=[*gpu, "--precision", "bf16", "--output_dir", str(tmp_path / "compiled")])
    assert isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    assert counters["stats"]["unique_graphs"] >= 1 and counters["aot_autograd"]["ok"] >= 1
    # inductor produced the kernels (or found the ones it produced for the same graphs before)
    assert sum(counters["inductor"][f"fxgraph_cache_{k}"] for k in ("miss", "hit", "bypass")) >= 1
    torch._dynamo.reset()

    dtypes = _record_linear_dtypes(monkeypatch)
    P.pretrain(argv=[*gpu, "--precision", "bf16", "--no_compile", "--output_dir", str(tmp_path / "eager")])
    assert dtypes == {torch.bfloat16}
    P.pretrain(argv=[*gpu, "--precision", "fp32", "--no_compile", "--output_dir", str(tmp_path / "fp32")])

    comp, eager, full = (_losses(tmp_path / n) for n in ("compiled", "eager", "fp32"))
    assert torch.isfinite(torch.tensor(comp)).all() and comp[1] < comp[0]
    # The first step's loss (the same weights, images and masks in all three): the compiled
    # graph computes in bf16 like eager bf16, well apart from fp32.
    assert abs(comp[0] - eager[0]) < abs(comp[0] - full[0]) / 5
    assert abs(comp[1] - eager[1]) < 2e-3 * eager[1]

    ck = load_training_checkpoint(tmp_path / "compiled" / "checkpoint-last.pth")
    a = ck["args"]
    assert (a["compile"], a["precision"], a["loader"], a["num_workers"]) == (True, "bf16", "device", 8)
    assert ck["step"] == 2 and ck["scaler"] == {}  # bf16 needs no loss scaling
    mae_vit_micro_patch4_32(norm_pix_loss=True).load_state_dict(ck["model"])  # strict: no "_orig_mod." keys


# ---------------------------------------------------------------------------------- 8 GPUs: DDP + compile + accum
_RANK_SCRIPT = textwrap.dedent("""
    import functools, os, sys, torch
    from mae_from_scratch import pretrain as P

    # See the module docstring: dynamo and DDP's graph splitting, without C++ code generation.
    torch.compile = functools.partial(torch.compile, backend="aot_eager")
    wrapped = []
    compile_model = P.compile_model

    def recording(model, enabled):
        wrapped.append(compile_model(model, enabled))
        return wrapped[-1]

    P.compile_model = recording
    result = P.pretrain(argv=sys.argv[2:])
    torch.save({"model": result.model.state_dict(), "outer": type(wrapped[0]).__name__,
                "inner": type(getattr(wrapped[0], "_orig_mod", None)).__name__,
                "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]},
               os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".pt"))
""")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # the preset's 10 workers, 2 cores
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")
def test_gpu_imagenet_base_preset_under_ddp_compiled_after_the_wrap_matches_one_process(tmp_path):
    """Two gloo ranks with the preset's accumulation over 4 micro-batches (DDP's no_sync on
    3 of them) and compilation after the DDP wrap.  Images of two sizes, like ImageNet's,
    make ``--loader auto`` choose the PIL loader with the preset's 10 workers per rank."""
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=8, size=48, splits=("train",))
    for p in sorted((data / "train" / "b").glob("*.png")):
        Image.open(p).resize((40, 56)).save(p)
    # 32 images, 2 ranks x 2 images x 4 micro-batches: 2 steps an epoch.  --precision auto is
    # the preset's: fp32 on a CPU, which a single process reproduces to rounding (bf16 is above).
    args = ["--preset", "gpu_imagenet_base", *SMALL, "--blr", "0.01", "--data_path", str(data), "--pin_mem",
            "--max_steps", "2"]
    out = tmp_path / "ddp"
    r = run_two_ranks(_RANK_SCRIPT, tmp_path, [*args, "--batch_size", "2", "--output_dir", str(out)], timeout=400)
    assert r.stdout.count("effective batch 16 (2 x 4 accum x 2 processes)") == 1
    assert "(pil loader)" in r.stdout and "precision fp32" in r.stdout
    assert "'pin_memory' argument is set as true" in r.stderr  # reached the DataLoader (which has no GPU to pin for)
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    for rk in ranks:  # compiled after the DDP wrap, and dynamo captured graphs
        assert (rk["outer"], rk["inner"]) == ("OptimizedModule", "DistributedDataParallel") and rk["graphs"] >= 1
    assert _same_state(ranks[0]["model"], ranks[1]["model"])  # bit-identical replicas
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    a = ck["args"]
    assert (a["world_size"], a["accum_iter"], a["compile"], a["loader"], a["num_workers"]) == (2, 4, True, "pil", 10)
    assert ck["step"] == 2 and _same_state(ck["model"], ranks[0]["model"])

    # One process, uncompiled, batch 4: the same 16 images per step (the ranks interleave
    # them), the same crops and masks, and DDP averages the gradients.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = P.pretrain(argv=[*args, "--batch_size", "4", "--no_compile", "--output_dir", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(n)
    for k, v in single.model.state_dict().items():
        w = ranks[0]["model"][k]
        if k.endswith("attn.qkv.bias"):
            # The key bias's true gradient is 0 (softmax cancels it), its computed one rounding
            # noise that AdamW turns into lr-sized steps: compare the query and value thirds.
            d = v.numel() // 3
            w, v = torch.cat([w[:d], w[2 * d:]]), torch.cat([v[:d], v[2 * d:]])
        torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-6, msg=k)
    ddp_losses, one_losses = _losses(out), _losses(tmp_path / "one")
    assert ddp_losses[1] < ddp_losses[0]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(one_losses), rtol=1e-5, atol=1e-6)
