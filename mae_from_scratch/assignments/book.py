"""The book folder: where it is, its chapters (from ``_toc.yml``) and its settings
(``_config.yml``).

Everything is read from the folder handed in, never from where this package is installed:
instructors install the package and point it at their copy of the book.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHAPTER_RE = re.compile(r"^notebooks/(\d\d_[A-Za-z0-9_]+?)(?:\.ipynb)?$")


def is_book(folder: Path) -> bool:
    return (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir()


def find_book(start: Path | None = None) -> Path:
    """The first folder holding ``_toc.yml`` and ``notebooks/``: ``start`` (default: the
    working directory) or one above it.  There is no other fallback: a package installed
    from a wheel has no book beside it."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_book(folder):
            return folder
    raise SystemExit(f"no book folder (one with _toc.yml and notebooks/) in {here} or above: "
                     f"pass --book DIR")


def book_folder(book: Path | str | None = None) -> Path:
    """``book`` checked, or the folder ``find_book`` finds when it is None."""
    if book is None:
        return find_book()
    folder = Path(book).resolve()
    if not is_book(folder):
        raise SystemExit(f"--book {book}: not a book folder "
                         f"(it needs _toc.yml and notebooks/)")
    return folder


def _toc_files(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("file"), str):
            found.append(node["file"])
        for value in node.values():
            found += _toc_files(value)
    elif isinstance(node, list):
        for value in node:
            found += _toc_files(value)
    return found


def chapters(book: Path | None = None) -> list[Path]:
    """Every ``notebooks/NN_name.ipynb`` listed in ``_toc.yml``, in the book's order."""
    import yaml

    book = find_book() if book is None else Path(book)
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    paths = []
    for entry in _toc_files(toc):
        match = CHAPTER_RE.match(entry.strip())
        path = book / "notebooks" / f"{match.group(1)}.ipynb" if match else None
        if path is not None and path.is_file() and path not in paths:
            paths.append(path)
    return paths


@dataclass
class Settings:
    url: str  # https://github.com/OWNER/REPO
    ref: str  # the tag or commit a class's notebooks install
    folder: str  # where the student notebooks are committed
    branch: str = "main"  # the branch they are committed on, which their Colab links open


def settings(book: Path | None = None) -> Settings:
    """The book's ``repository:`` and ``assignments:`` settings, from its ``_config.yml``."""
    import yaml

    book = find_book() if book is None else Path(book)
    config = yaml.safe_load((book / "_config.yml").read_text())
    repo = config["repository"]
    own = config.get("assignments") or {}
    return Settings(
        url=repo["url"].rstrip("/"),
        ref=str(own.get("ref") or repo.get("branch", "main")),
        folder=str(own.get("folder", "assignments")),
        branch=str(repo.get("branch", "main")),
    )
