"""The output folder of a pretraining run: checked, locked, and cleared only when asked.

An output folder that holds a run is continued (``--auto_resume``, ``--resume``) or
replaced (``--overwrite``), never silently mixed with a new run, and a lock file
(``.lock``, the owner's pid and host) keeps a second run out of it while the first
is running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

from .training_checkpoint import process_alive, remove_stale_temporaries
from .cli_checks import refuse
from .metrics import EPOCH_LOG, STEP_LOG
from .run_info import RUN_INFO
from .snapshots import RECON_DIR

LAST_CHECKPOINT = "checkpoint-last.pth"
LOCK_FILE = ".lock"


def check_output_dir(out: Path | None) -> None:
    """Refuse an output folder that is a file, sits under a file or cannot be written."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        refuse(f"--output_dir {out} is a file, not a folder; choose another --output_dir")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent != out and parent.exists() and not parent.is_dir():
        refuse(f"--output_dir {out} cannot be made: {parent} is a file; choose another --output_dir")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        refuse(f"--output_dir {out} cannot be written ({parent} is not writable); choose another --output_dir")


def holds_run(out: Path | None) -> bool:
    return out is not None and out.is_dir() and any((out / n).is_file() for n in (LAST_CHECKPOINT, EPOCH_LOG))


def check_not_overwriting(args, out: Path | None) -> None:
    """A folder that holds a run is continued (--auto_resume, --resume) or explicitly replaced (--overwrite)."""
    if not holds_run(out) or args.auto_resume or args.resume or args.overwrite:
        return
    what = f"{LAST_CHECKPOINT}" if (out / LAST_CHECKPOINT).is_file() else EPOCH_LOG
    refuse(f"--output_dir {out} already holds a run ({what}); continue it with --auto_resume, "
           "start over with --overwrite, or choose another --output_dir")


def mount_drive_if_asked(args) -> None:
    if args.mount_drive:
        try:
            from google.colab import drive  # type: ignore[import-not-found]
        except ImportError:
            refuse("--mount_drive only works inside Google Colab; leave it out elsewhere")
        drive.mount("/content/drive")
    if args.output_dir and str(args.output_dir).startswith("/content/drive") and not os.path.isdir("/content/drive"):
        refuse(f"--output_dir {args.output_dir} is on Google Drive, which is not mounted; "
               "add --mount_drive (or run `from google.colab import drive; drive.mount('/content/drive')`)")


class OutputLock:
    """An exclusive lock on an output folder: the file ``.lock`` (created with O_EXCL)
    holding the owner's pid and host.  A lock left by a dead process on this host is
    taken over; a live one makes the second run refuse, naming the first."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        host, me = socket.gethostname(), {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:  # removed in between
                    continue
                if owner is None:  # unreadable: a lock being written, or cut short by a kill
                    try:
                        age = time.time() - self.path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age < 10:
                        refuse(f"--output_dir {self.folder} is locked by another run ({self.path} is being "
                               "written); wait for it, or choose another --output_dir")
                elif owner.get("host") != host or process_alive(int(owner.get("pid", -1))):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
                    refuse(f"--output_dir {self.folder} is in use by another run (pid {owner.get('pid')} on host "
                           f"{owner.get('host')}, since {since}); wait for it to finish or choose another "
                           f"--output_dir (if that run is gone, delete {self.path})")
                try:  # stale: its process is gone
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        refuse(f"could not lock --output_dir {self.folder}: {self.path} keeps reappearing")

    def release(self) -> None:
        if self.held:
            self.held = False
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass


def clear_old_run(out: Path, checkpoints: bool) -> None:
    """Starting over: the old run's logs go (and with ``checkpoints``, for --overwrite, its
    checkpoints), so nothing of it mixes with the new run."""
    for p in sorted((out / RECON_DIR).glob("epoch-*.png")) if (out / RECON_DIR).is_dir() else []:
        p.unlink()
    for p in out.iterdir():
        if p.name in (EPOCH_LOG, STEP_LOG, RUN_INFO) or (checkpoints and re.fullmatch(r"checkpoint-(last|\d+)\.pth", p.name)):
            p.unlink()


@contextlib.contextmanager
def claimed(out: Path | None, main_process: bool = True):
    """The output folder, made if needed and locked for the length of the ``with`` block
    (by the main process only); a folder made here and left empty, by a run refused
    before it wrote anything, is removed again."""
    if out is None or not main_process:
        yield
        return
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out)
    try:
        lock.acquire()
        remove_stale_temporaries(out)
        yield
    finally:
        lock.release()
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
