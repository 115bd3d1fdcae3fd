"""benchmarks/gpu_check.py, the one command a GPU session runs: every stage, tiny, on the CPU.

The slow test runs the command as the GPU machine would (a subprocess, from the
repository root), with the Jupyter and test packages made unimportable, because
that machine has none of them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# Installed here, not on the GPU machine (torch, torchvision, einops, matplotlib, scikit-image,
# tqdm, transformers and timm are).
ABSENT_THERE = ("pytest", "_pytest", "nbval", "myst_nb", "nbformat", "nbclient", "IPython", "ipykernel",
                "jupyter_core", "jupyter_client", "jupyter_book", "hypothesis")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _without_dev_packages(tmp_path: Path) -> dict:
    """An environment whose Python processes (the script's subprocesses too) cannot import
    ABSENT_THERE: a ``sitecustomize`` that marks them missing in ``sys.modules``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for _name in {ABSENT_THERE!r}:\n"
        "    sys.modules[_name] = None  # import fails, importlib.util.find_spec says missing\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = str(site)
    return env


def test_the_blocker_blocks(tmp_path):
    env = _without_dev_packages(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import pytest"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_a_failed_stage_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    gc = _load()

    def broken(ctx):
        raise ValueError("no such GPU")

    def fine(ctx):
        ctx["partial"]({"halfway": True})
        return {"images_per_s": 12.5}

    monkeypatch.setitem(gc.RUNNERS, "throughput", broken)
    monkeypatch.setitem(gc.RUNNERS, "loader", fine)
    out = tmp_path / "out"
    rc = gc.main(["--tiny", "--out", str(out), "--stages", "throughput", "loader", "--cifar10", str(tmp_path)])
    assert rc == 1
    rec = json.loads((out / "gpu_check.json").read_text())
    st = rec["stages"]
    assert st["throughput"]["status"] == "failed" and "ValueError: no such GPU" in st["throughput"]["error"]
    assert st["loader"]["status"] == "ok" and st["loader"]["result"] == {"images_per_s": 12.5}
    assert rec["finished"] is True and rec["all_ok"] is False and list(st) == ["throughput", "loader"]
    assert rec["hardware"]["cpu_cores"] >= 1 and rec["torch"] and rec["date"].startswith("20")
    log = (out / "gpu_check.log").read_text()
    assert "stage throughput failed: ValueError: no such GPU" in log and "stage loader: ok" in log


def test_arguments():
    gc = _load()
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", "x"])  # no --cifar10 and not --tiny
    a = gc.parse_args(["--out", "x", "--cifar10", "c.tar.gz", "--device", "cuda"])
    assert (a.budget_s, a.precision, a.compile_modes) == (510.0, "bf16", ["eager", "compiled"])
    a = gc.parse_args(["--out", "x", "--tiny", "--device", "cpu"])
    assert (a.budget_s, a.precision, a.compile_modes) == (900.0, "fp32", ["eager"])


def _ctx(gc, loader, **flags):
    a = gc.parse_args(["--out", "x", "--cifar10", "c.tar.gz", "--device", "cuda", *flags.get("argv", [])])
    return {"args": a, "cfg": dict(gc.GPU), "results": {"loader": loader}}


def test_record_plan_from_measured_speeds():
    gc = _load()
    loader = {"train_images": 50_000, "loader_img_s": 200_000.0,
              "train_step": {"eager": {"img_s": 40_000.0, "setup_s": 1.0},
                             "compiled": {"img_s": 60_000.0, "setup_s": 35.0}}}
    plan = gc._plan_record(_ctx(gc, loader), 200.0)
    # Compiling saves 200 x (1 - 40/60) = 67 s and costs 35 + 5: on.  The compile time comes off the
    # training time, and the run is planned at 85% of the compiled speed.
    assert plan["compile"] is True
    assert plan["planned_img_s"] == pytest.approx(0.85 * 60_000)
    assert plan["epochs"] == math.floor(165.0 * 0.85 * 60_000 / 50_000) == 168
    # A loader slower than both steps bounds the run: compiling saves nothing.
    slow = dict(loader, loader_img_s=30_000.0)
    plan = gc._plan_record(_ctx(gc, slow), 200.0)
    assert plan["compile"] is False and plan["epochs"] == math.floor(200 * 0.85 * 30_000 / 50_000) == 102
    # Off when asked; fixed epochs when asked; record_run.py's own probe without a measurement.
    assert gc._plan_record(_ctx(gc, loader, argv=["--record_compile", "off"]), 200.0)["compile"] is False
    assert gc._plan_record(_ctx(gc, loader, argv=["--record_epochs", "7"]), 200.0)["epochs"] == 7
    plan = gc._plan_record(_ctx(gc, {}), 240.0)
    assert "epochs" not in plan and plan["budget_min"] == 4.0 and plan["compile"] is False


@pytest.mark.slow
def test_every_stage_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = _without_dev_packages(tmp_path)
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["finished"] and rec["all_ok"] and rec["torch"] and rec["hardware"]["summary"].startswith("CPU")
    st = rec["stages"]
    assert list(st) == ["throughput", "loader", "resume", "record"]
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in st.values())

    tp = st["throughput"]["result"]["modes"]["eager"]
    assert tp["ours_img_s"] > 0 and tp["hf_img_s"] > 0 and tp["flops_per_step"] > 0
    assert tp["ours_over_hf"] == pytest.approx(tp["hf_ms"] / tp["ours_ms"], rel=1e-2)
    assert tp["ours_mfu"] is None  # no peak on a CPU

    ld = st["loader"]["result"]
    step = ld["train_step"]["eager"]
    assert ld["loader_img_s"] > 0 and step["img_s"] > 0 and ld["train_images"] == 256
    assert step["loader_over_step"] == pytest.approx(ld["loader_img_s"] / step["img_s"], rel=1e-2)

    rs = st["resume"]["result"]
    assert rs["killed_exit"] == -9 and 3 <= rs["resumed_from_step"] < 12
    assert rs["steps_compared"] == 12 - rs["resumed_from_step"] and rs["lr_equal"]
    assert rs["max_abs_diff"] == 0.0 and rs["exact"] and rs["weights_max_abs_diff"] == 0.0  # fp32 on a CPU
    assert all(math.isfinite(x) for x in rs["losses_resumed"])
    assert (out / "resume" / "killed.log").is_file() and (out / "resume" / "resumed.log").is_file()

    rd = st["record"]["result"]
    folder = out / rd["folder"]
    for name in ("run.json", "log.txt", "log_steps.jsonl", "eval.json", "recording.json", "mask_ratios.png",
                 "attention.npz", "recon/epoch-0000.png", "recon/epoch-0002.png"):
        assert (folder / name).is_file(), name
    assert rd["epochs_run"] == rd["epochs_scheduled"] == 2 and rd["finished"] is True
    assert rd["loss_finite"] and rd["first_epoch_loss"] > 0
    for enc in ("trained", "random"):
        assert 0.0 <= rd["eval"][f"{enc}_cls"]["linear_probe"] <= 1.0
    # No checkpoint comes back under OUT: the only weights are the record's half-precision model.
    assert [p.relative_to(folder).as_posix() for p in out.rglob("*.pth")] == ["model-fp16.pth"]
