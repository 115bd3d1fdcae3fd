"""``run.json``: what produced a run, written next to its logs as the run goes.

A number or a picture from a training run means little without knowing what made
it: the hardware and software it ran on, the code (git commit), the exact command
and flags, the data, and how long it took.  :class:`RunInfo` writes that into
``run.json`` in the output folder when the run starts and rewrites it (atomically)
at every epoch end, so a run that is killed still leaves an honest account of how
far it got.  A resumed run adds a segment to the same ``run.json``, with its own
command and every setting it changed (a resume refuses changes to what defines
the run, see :data:`~mae_from_scratch.run_config.KEPT_ON_RESUME`, but may extend
the epochs or move to another device, say).

Not to be confused with ``recording.json``, which ``tools/record_run.py`` writes
beside a copy of ``run.json`` when it records a run for the book (see
:mod:`~mae_from_scratch.recorded_runs`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    import resource
except ImportError:  # not on Windows: cpu_seconds falls back to os.times
    resource = None

RUN_INFO = "run.json"


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device | str = "cpu") -> dict:
    """The machine, in words and numbers: GPU model (when the run uses one), CPU model and cores."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    info["summary"] = (f"{info['gpu']} GPU" if "gpu" in info else
                       f"CPU only ({info['cpu']}, {info['cpu_cores']} cores)")
    return info


def git_commit(path: Path | str | None = None) -> str | None:
    """The commit the package's source folder is at (with ``+changes`` when its tracked
    files differ from it), or ``None`` outside a git checkout."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if dirty else "")


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_record(dataset: str, data_path, num_images: int) -> dict:
    """The data a run read: its name, path, size and, for an archive file, its sha256."""
    rec = {"dataset": dataset, "data_path": None if data_path is None else str(data_path),
           "train_images": num_images}
    if data_path is not None and Path(data_path).is_file():
        rec["sha256"] = file_sha256(data_path)
    return rec


def write_json(path, obj) -> None:
    """``obj`` as indented JSON in ``path``, replaced whole: a reader (or a kill) never meets
    half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes
    (on Windows, of this process only)."""
    if resource is None:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# How a segment was started rather than what it trained with: its command says these.
_HOW_STARTED = ("resume", "auto_resume")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunInfo:
    """``OUTPUT_DIR/run.json``, kept up to date while the run goes; :attr:`info` holds it.

    ``segments`` holds one entry per process that trained in the folder (the first
    run and each resume), each with its own command, wall and CPU time, and from the
    second on ``changed``: ``{setting: [before, after]}`` for every setting that differs
    from the segment before.  ``command`` is the one that started the run; ``args`` and
    ``config`` are the settings now (the last segment's), which its checkpoints hold.
    The totals sum the segments.
    """

    def __init__(self, folder: Path | str | None, enabled: bool = True):
        self.path = Path(folder) / RUN_INFO if folder else None
        self.enabled = enabled and self.path is not None
        self.info: dict = {}
        self._t0 = time.perf_counter()
        self._cpu0 = cpu_seconds()

    def start(self, *, args: dict, device, data: dict, epochs_scheduled: int, resumed: bool,
              command: str | None = None, note: str | None = None, config: dict | None = None) -> None:
        """``args``: every setting of the run, flat; ``config``: the same settings grouped by
        where each came from (asked, preset, default, checkpoint, derived), see
        :meth:`~mae_from_scratch.run_config.RunConfig.as_record`."""
        if not self.enabled:
            return
        command = command if command is not None else " ".join(sys.argv)
        old = {}
        if resumed and self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
        self.info = {
            "started": old.get("started", _now()),
            "hardware": hardware(device),
            "git_commit": git_commit(),
            "command": old.get("command", command),
            "preset": args.get("preset"),
            "seed": args.get("seed"),
            "args": args,
            **({"config": config} if config is not None else {}),
            "data": data,
            "epochs_scheduled": epochs_scheduled,
            "epochs_run": old.get("epochs_run", 0),
            "segments": old.get("segments", []),
        }
        if note:
            self.info["note"] = note
        segment = {"started": _now(), "command": command, "wall_s": 0.0, "cpu_s": 0.0, "images": 0,
                   "git_commit": self.info["git_commit"], "hardware": self.info["hardware"]["summary"]}
        if self.info["segments"]:
            self.info["segments"][0].setdefault("command", old.get("command"))  # written before segments had one
            before = old.get("args", {})
            segment["changed"] = {k: [before.get(k), args.get(k)] for k in sorted({*before, *args})
                                  if k not in _HOW_STARTED and before.get(k) != args.get(k)}
        self.info["segments"].append(segment)
        self._write()

    def update(self, *, epochs_run: int, images: int, finished: bool = False, **extra) -> None:
        """Called at each epoch end (and at the end): times, images seen, epochs run."""
        if not self.enabled or not self.info:
            return
        seg = self.info["segments"][-1]
        seg["wall_s"] = round(time.perf_counter() - self._t0, 1)
        seg["cpu_s"] = round(cpu_seconds() - self._cpu0, 1)
        seg["images"] = images
        segs = self.info["segments"]
        wall = sum(s["wall_s"] for s in segs)
        self.info.update(
            epochs_run=epochs_run,
            wall_s=round(wall, 1),
            cpu_s=round(sum(s["cpu_s"] for s in segs), 1),
            images_per_s=round(sum(s["images"] for s in segs) / wall, 1) if wall > 0 else None,
            updated=_now(),
            finished=finished,
            **extra,
        )
        self._write()

    def _write(self) -> None:
        write_json(self.path, self.info)
