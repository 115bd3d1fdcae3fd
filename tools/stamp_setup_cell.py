"""Write the shared setup cell into every chapter notebook.

Every chapter opens with the same setup cell (tagged ``setup``): in Google
Colab it installs this book's package from the repository named in
``_config.yml``; everywhere it seeds and picks the device.  The repository
URL and branch live only in ``_config.yml``; this script stamps them into the
notebooks, and ``tests/test_project.py`` fails when a notebook has drifted.

    python tools/stamp_setup_cell.py          # rewrite the setup cells
    python tools/stamp_setup_cell.py --check  # exit 1 if any notebook differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "setup"
# The book shows the setup cell folded ("hide-input"): readers can open it, it is the same everywhere.
TAGS = [TAG, "hide-input"]

TEMPLATE = '''\
# Setup, the same in every chapter: in Google Colab, install this book's package.
import sys

if "google.colab" in sys.modules:
    import subprocess

    package = "git+{url}@{branch}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

import torch

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", device)'''


def setup_source(config_path: Path = ROOT / "_config.yml") -> str:
    repo = yaml.safe_load(config_path.read_text())["repository"]
    return TEMPLATE.format(url=repo["url"].rstrip("/"), branch=repo.get("branch", "main"))


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def setup_cell_index(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and TAG in cell.metadata.get("tags", []):
            return i
    return None


def is_current(cell, src: str) -> bool:
    return cell.source == src and cell.metadata.get("tags") == TAGS


def drifted() -> list[str]:
    """Notebooks whose setup cell is missing or differs from the template."""
    src = setup_source()
    bad = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        i = setup_cell_index(nb)
        if i is None or not is_current(nb.cells[i], src):
            bad.append(path.name)
    return bad


def stamp() -> list[str]:
    src = setup_source()
    changed = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        i = setup_cell_index(nb)
        if i is None:
            cell = nbformat.v4.new_code_cell(src, metadata={"tags": list(TAGS)})
            # Right after the title cell.
            nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
        elif not is_current(nb.cells[i], src):
            nb.cells[i].source = src
            nb.cells[i].metadata["tags"] = list(TAGS)
        else:
            continue
        nbformat.write(nb, path)
        changed.append(path.name)
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report notebooks that differ")
    args = ap.parse_args()
    if args.check:
        bad = drifted()
        for name in bad:
            print(f"setup cell differs from _config.yml: {name}")
        return 1 if bad else 0
    for name in stamp():
        print(f"stamped {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
