"""What both command lines (``pretrain`` and ``evaluate``) share when they refuse input.

A bad input stops a command with one line that names the flag, the value and
the fix, before any data is loaded: :class:`InputError` carries that line,
:class:`OneLineParser` makes argparse's own errors one line too, and
:func:`one_line` is what ``main`` prints for any error it reports.
"""

from __future__ import annotations

import argparse
import math

import torch


class InputError(ValueError):
    """A flag, a folder or a file given on a command line cannot be used; the message
    names the cause and the fix.  Raised before any data is loaded."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`InputError` line, not usage text."""

    def error(self, message):
        raise InputError(f"{message} (see --help)")


def refuse(msg: str):
    raise InputError(msg)


def check_whole(name: str, value, low: int, optional: bool = False, hint: str = "") -> None:
    """``--name`` must be an integer ``>= low`` (``None`` passes when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        refuse(f"--{name} must be a whole number >= {low}, got {value!r}" + (f"; {hint}" if hint else ""))


def check_number(name: str, value, low: float = 0.0, strict: bool = False, optional: bool = False,
                 example: str = "") -> None:
    """``--name`` must be a finite number ``>= low`` (``> low`` when ``strict``)."""
    if value is None and optional:
        return
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if strict else value >= low))
    if not ok:
        refuse(f"--{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
               + (f"; e.g. --{name} {example}" if example else ""))


def check_device(name, allow_mps: bool = False, purpose: str = "this command") -> torch.device:
    """``name`` as a device this machine has (cpu, cuda, cuda:N; mps where allowed)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        refuse(f"--device {name!r} is not a device; use --device cpu or --device cuda (cuda:N for GPU N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            refuse(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            refuse(f"--device {name}: there is no GPU {device.index} (this machine has "
                   f"{torch.cuda.device_count()}); use --device cuda:0")
    elif device.type == "mps" and allow_mps:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            refuse(f"--device {name}: the Apple MPS backend is not available here; use --device cpu")
    elif device.type != "cpu":
        refuse(f"--device {name} is not supported for {purpose}; use --device cpu or --device cuda")
    return device


def one_line(e: BaseException) -> str:
    """An error's message on one line (what ``main`` prints after ``error:``)."""
    return "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
