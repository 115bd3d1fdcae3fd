"""Execute chapter notebooks in place: their saved outputs are what the book shows and
what nbval compares against.

    python tools/run_notebooks.py                    # every chapter
    python tools/run_notebooks.py notebooks/02_*.ipynb

Prints each notebook's execution time.  Each executed chapter is stamped with a hash of
its code cells (``metadata.mae_from_scratch.code_sha256``); ``tests/test_workflow.py``
refuses a chapter whose code changed after it was executed, since the book would then
show outputs of code it no longer holds.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def code_sha256(nb) -> str:
    """A hash of the notebook's code cells, in order (outputs and markdown left out)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode() + b"\0")
    return h.hexdigest()


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - t0
    nb.metadata["mae_from_scratch"] = {"code_sha256": code_sha256(nb)}
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    total = 0.0
    for p in paths:
        dt = run(p)
        total += dt
        print(f"{p.name}: {dt:.1f} s", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
