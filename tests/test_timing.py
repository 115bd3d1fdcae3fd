"""mae_from_scratch.timing: loader and training-step throughput, MFU; engine.compile_model."""

import math
import time

import pytest
import torch

from mae_from_scratch import hf_compare, timing
from mae_from_scratch.engine import compile_model
from mae_from_scratch.flops import encoder_decoder_flops
from mae_from_scratch.model import MaskedAutoencoderViT

STEP_KEYS = {"images_per_s", "ms_per_step", "batch_size", "steps", "precision", "compiled", "flops_per_step",
             "achieved_tflops", "peak_tflops", "mfu"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _sleepy_batches(n_batches: int, batch: int, sleep: float):
    for _ in range(n_batches):
        time.sleep(sleep)
        yield torch.zeros(batch, 3, 4, 4), torch.zeros(batch, 4)


def test_loader_rate_counts_images_over_time():
    # 4 batches of 8 images, 0.05 s each: 32 images in about 0.2 s
    rate = timing.loader_images_per_s(_sleepy_batches(4, 8, 0.05), "cpu", batches=4, warmup=0)
    assert 100 < rate <= 165


def test_loader_warmup_batches_are_not_timed():
    def batches():
        time.sleep(0.3)  # a slow first batch (worker start-up)
        yield torch.zeros(8, 3, 4, 4), torch.zeros(8, 4)
        yield from _sleepy_batches(4, 8, 0.05)

    assert 100 < timing.loader_images_per_s(batches(), "cpu", batches=4, warmup=1) <= 165


def test_loader_rate_restarts_a_reiterable_loader_and_stops_a_generator():
    data = [(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4))] * 3  # a list can be iterated again
    assert _positive(timing.loader_images_per_s(data, "cpu", batches=7, warmup=1))
    # a generator ends: the rate is over the batches it had
    assert _positive(timing.loader_images_per_s(_sleepy_batches(2, 2, 0.0), "cpu", batches=5, warmup=0))
    with pytest.raises(ValueError, match="warm-up"):
        timing.loader_images_per_s(_sleepy_batches(1, 2, 0.0), "cpu", batches=5, warmup=2)


def test_train_step_reports_positive_numbers_and_no_mfu_on_cpu(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    r = timing.train_step_images_per_s(model, 4, "cpu", steps=2, warmup=1)
    assert set(r) == STEP_KEYS
    for key in ("images_per_s", "ms_per_step", "flops_per_step", "achieved_tflops"):
        assert _positive(r[key]), key
    assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1e3))
    assert r["precision"] == "fp32" and r["compiled"] is False and r["steps"] == 2
    assert r["peak_tflops"] is None and r["mfu"] is None
    assert timing.gpu_peak_tflops("cpu") is None


def test_training_flops_are_three_forward_passes(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    forward = encoder_decoder_flops(model, mask_ratio=0.75, batch_size=4).total
    assert timing.training_flops(model, batch_size=4) == 3 * forward
    assert timing.training_flops(model, batch_size=4, mask_ratio=0.5) > 3 * forward  # more visible patches


def test_mfu_is_achieved_over_the_given_peak(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    r = timing.train_step_images_per_s(model, 4, "cpu", steps=2, warmup=1, peak_tflops=0.5)
    flops = timing.training_flops(model, batch_size=4)
    assert r["flops_per_step"] == flops and r["peak_tflops"] == 0.5
    assert r["achieved_tflops"] == pytest.approx(flops / (r["ms_per_step"] / 1e3) / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.5)
    assert timing._mfu(3 * 10**12, 2.0, peak=3.0) == pytest.approx(0.5)  # 1.5 TFLOP/s of 3


def test_peak_table_matches_whole_gpu_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [("Tesla T4", 65.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA H100 80GB HBM3", 989.0),
                       ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA L4", 121.0),
                       ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 3090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert timing.gpu_peak_tflops("cuda") == peak, name


def test_hf_model_names_the_missing_package(monkeypatch, micro_config):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match="pip install transformers"):
        hf_compare.hf_model(MaskedAutoencoderViT(**micro_config).config)


@pytest.mark.slow
def test_compare_with_hf_times_both(micro_config):
    pytest.importorskip("transformers")
    r = hf_compare.compare_with_hf(MaskedAutoencoderViT(**micro_config), 4, "cpu", steps=2, warmup=1)
    assert set(r["ours"]) == STEP_KEYS and set(r["hf"]) == STEP_KEYS
    assert r["ours"]["flops_per_step"] == r["hf"]["flops_per_step"]
    assert r["speed_ratio"] == pytest.approx(r["hf"]["ms_per_step"] / r["ours"]["ms_per_step"])
    assert _positive(r["speed_ratio"]) and r["params"] > 0


def test_compile_model_off_returns_the_model(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    assert compile_model(model, False) is model


def test_compile_model_without_torch_compile_is_a_clear_error(monkeypatch, micro_config):
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(ValueError, match="torch.compile"):
        compile_model(MaskedAutoencoderViT(**micro_config), True)


def test_compile_model_shares_parameters(micro_config):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile needs torch >= 2.0")
    model = MaskedAutoencoderViT(**micro_config)
    compiled = compile_model(model, True)  # wrapping compiles nothing yet
    assert compiled is not model and compiled._orig_mod is model
    assert timing._unwrap(compiled) is model
