"""Two ranks on the CPU (gloo) through torchrun: the ranks stay in sync, and together they
train like one process with the same global batch."""

from __future__ import annotations

import textwrap

import pytest
import torch

from _engine_helpers import run_two_ranks
from mae_from_scratch import pretrain as P
from mae_from_scratch.training_checkpoint import load_training_checkpoint
from mae_from_scratch.metrics import read_step_log

_RANK_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from mae_from_scratch.pretrain import pretrain
    result = pretrain(argv=sys.argv[2:])
    torch.save(result.model.state_dict(), os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
""")

ARGS = ["--preset", "cpu_smoke", "--num_photos", "64", "--max_images", "64", "--epochs", "2",
        "--warmup_epochs", "1", "--no_progress", "--num_workers", "0", "--save_every_steps", "0"]


@pytest.mark.slow
def test_two_gloo_ranks_stay_in_sync_and_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    r = run_two_ranks(_RANK_SCRIPT, tmp_path, [*ARGS, "--batch_size", "4", "--output_dir", str(out)])
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # bit-identical replicas
    assert r.stdout.count("effective batch 8 (4 x 1 accum x 2 processes)") == 1  # rank 0 alone logs
    ck = load_training_checkpoint(out / "checkpoint-last.pth")
    assert ck["args"]["world_size"] == 2 and ck["step"] == 16
    assert all(torch.equal(rank0[k], ck["model"][k]) for k in rank0)

    # One process, batch 8: the same 8 samples per step (DistributedSampler interleaves them
    # over the ranks) with the same per-sample crops and masks, and DDP averages gradients,
    # so the weights agree up to float rounding.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = P.pretrain(argv=[*ARGS, "--batch_size", "8", "--output_dir", str(tmp_path / "single")])
    finally:
        torch.set_num_threads(n)
    for k, v in single.model.state_dict().items():
        a = rank0[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias adds a constant to every score of a query, which softmax cancels:
            # its true gradient is 0, its computed one is rounding noise, and AdamW turns
            # noise into lr-sized steps.  Compare the query and value thirds only.
            d = v.numel() // 3
            a, v = torch.cat([a[:d], a[2 * d:]]), torch.cat([v[:d], v[2 * d:]])
        torch.testing.assert_close(a, v, rtol=1e-4, atol=1e-6, msg=k)
    ddp_losses = [s["loss"] for s in read_step_log(out)]
    one_losses = [s["loss"] for s in read_step_log(tmp_path / "single")]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(one_losses), rtol=1e-4, atol=1e-5)
