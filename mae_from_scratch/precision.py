"""Mixed precision chosen from the hardware.

=========================  ==========  ===========
device                     autocast    GradScaler
=========================  ==========  ===========
GPU, compute capability 8+ bfloat16    no
  (A100, L4, H100, RTX 30+)
older GPU (T4, V100)       float16     yes
CPU                        none (fp32) no
=========================  ==========  ===========

The rule reads the compute capability instead of calling
``torch.cuda.is_bf16_supported()``, which answers True on a T4 (it emulates
bf16 there, slowly).  bf16 has fp32's exponent range, so it needs no loss
scaling; fp16 does, or small gradients underflow to zero.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    name: str  # 'fp32', 'bf16' or 'fp16'
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    use_scaler: bool  # fp16 needs a GradScaler

    def autocast(self, device: torch.device):
        """The autocast context for ``device`` (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler for ``device``, enabled only for fp16.

        For fp32 and bf16 it is disabled: ``scale`` returns the loss as it is,
        ``unscale_`` and ``update`` do nothing and ``step`` calls the optimizer's, so
        training code always goes through a scaler and has a single path.
        """
        return torch.amp.GradScaler(torch.device(device).type, enabled=self.use_scaler)


_BY_NAME = {
    "fp32": Precision("fp32", None, False),
    "bf16": Precision("bf16", torch.bfloat16, False),
    "fp16": Precision("fp16", torch.float16, True),
}


def choose_precision(device, requested: str = "auto") -> Precision:
    """The precision to train in on ``device``.

    ``requested='auto'`` applies the table above; 'fp32', 'bf16' or 'fp16' force
    one (fp16 always comes with a GradScaler).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return _BY_NAME[requested]
    device = torch.device(device)
    if device.type != "cuda":
        return _BY_NAME["fp32"]
    major, _minor = torch.cuda.get_device_capability(device)
    return _BY_NAME["bf16"] if major >= 8 else _BY_NAME["fp16"]
