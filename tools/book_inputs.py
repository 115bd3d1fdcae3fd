"""Print one checksum of what the book's chapters run on, besides their own code cells.

The book keeps the executed chapters in jupyter-cache (``execute_notebooks: cache`` in
``_config.yml``, stored in ``_build/.jupyter_cache``), which matches a chapter by its code cells
alone.  A chapter also runs on the package, on the installed versions of everything else, on
Python, on ``_config.yml`` and on the ``MAE_*`` environment variables; ``make book`` empties the
cache whenever this checksum differs from the one stored beside it, so a cached output is always
one the current code gives.

    python tools/book_inputs.py          # the checksum, for the Python that runs it
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def installed_versions() -> str:
    """``pip freeze`` of this Python, less editable installs (the package itself is hashed as files:
    an editable line names the checkout's path or commit, which says nothing about its code)."""
    return subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                          capture_output=True, text=True, check=True).stdout


def inputs_sum(root: Path = ROOT, installed: str | None = None) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in (root / "mae_from_scratch").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in [*files, root / "_config.yml"]:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(sys.version.encode() + b"\0")
    h.update((installed_versions() if installed is None else installed).encode() + b"\0")
    for key in sorted(k for k in os.environ if k.startswith("MAE_")):
        h.update(f"{key}={os.environ[key]}\0".encode())
    return h.hexdigest()


if __name__ == "__main__":
    print(inputs_sum())
