"""Classroom assignments from the book's chapters: generate student notebooks, grade them.

    python -m mae_from_scratch.assignments annotate            # nbgrader metadata on the chapters
    python -m mae_from_scratch.assignments generate --out assignments
    python -m mae_from_scratch.assignments generate --out assignments --check
    python -m mae_from_scratch.assignments grade SUBMISSIONS_DIR   # -> grades-NN_name.csv
    python -m mae_from_scratch.assignments grade SUBMISSIONS_DIR --data cifar10-jpeg.tar.gz
    python -m mae_from_scratch.assignments generate --book ~/mae-from-scratch --out assignments

Every command reads the book folder: ``--book DIR``, or else the first folder holding
``_toc.yml`` and ``notebooks/`` found from the working directory upwards.

A chapter (``notebooks/NN_name.ipynb``, listed in ``_toc.yml``) is its own answer key:

- an *exercise cell* holds its reference solution between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; the next code cell is its *check cell* (asserts);
- a *written answer* is a markdown cell that starts with ``MODEL_ANSWER`` (a MyST dropdown
  holding the model answer, after the question's cell), graded by hand;
- a check cell may hold ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``: asserts
  that the student version does not show (they catch answers hard-coded to the visible check);
- a cell whose first line is ``# NBVAL_CHECK_OUTPUT`` is checked against its saved output.

``annotate`` writes nbgrader's cell metadata (``grade_id`` on every exercise and check cell),
so ``nbgrader generate_assignment`` works on the chapters too.  ``generate`` writes the
student notebooks: solutions replaced by ``raise NotImplementedError()``, hidden tests
removed, outputs cleared except those nbval compares, and the Colab install cell pinned to
the ref set under ``assignments:`` in ``_config.yml``.  ``grade`` runs nbval on every
submission, in a temporary copy of its own, with the instructor's check cells (hidden tests
included) put back by ``grade_id``, and writes one CSV row per student.  Every submission
runs with the GPUs hidden, so the chapters take the CPU profile their saved verdicts come
from on any grading machine, and ``--data`` (or ``$MAE_CIFAR10_TAR``) hands chapters 8 and 9
the CIFAR-10 archive.

Grading is formative, and no sandbox: what it guarantees and what it does not is written on
the book's page for instructors (``book/instructors.md``), and in :mod:`.kernel_guard`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .book import book_folder, chapters, settings
from .cells import annotate_notebook
from .generation import generate

BOOK_HELP = ("the book's folder, holding _toc.yml and notebooks/ (default: the first such "
             "folder from the working directory upwards)")


def _chapter_path(book: Path, name: str) -> Path:
    for path in chapters(book):
        if path.stem == name or path.stem.split("_", 1)[0] == name.zfill(2):
            return path
    raise SystemExit(f"no chapter {name!r} in _toc.yml")


def _selected(book: Path, names: list[str]) -> list[Path]:
    return [_chapter_path(book, n) for n in names] if names else chapters(book)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mae_from_scratch.assignments",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    # --book before the command, as it always was, or after it, beside the other options.
    ap.add_argument("--book", type=Path, default=None, help=BOOK_HELP)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("annotate", help="write nbgrader metadata into the chapters")
    a.add_argument("chapters", nargs="*", help="NN_name or NN (default: every chapter)")
    a.add_argument("--check", action="store_true", help="only report chapters that lack it")
    g = sub.add_parser("generate", help="write the student notebooks")
    g.add_argument("--out", type=Path, default=None, help="folder (default: assignments:)")
    g.add_argument("chapters", nargs="*", help="NN_name or NN (default: every chapter)")
    g.add_argument("--check", action="store_true", help="exit 1 if they are out of date")
    r = sub.add_parser("grade", help="grade a folder of submissions with nbval")
    r.add_argument("submissions", type=Path)
    r.add_argument("--out", type=Path, default=None,
                   help="the gradebook, a .csv file (default: grades-NN_name.csv); the "
                        "summary goes beside it as .txt")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing gradebook and summary")
    r.add_argument("--chapter", default=None,
                   help="NN_name or NN (default: the one chapter the notebooks name)")
    r.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    r.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell")
    r.add_argument("--timeout", type=float, default=None,
                   help="seconds per notebook (default: the cell timeout per cell, + 120)")
    r.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 as an ImageFolder .tar.gz, for chapters 8 and 9 (default: "
                        "$MAE_CIFAR10_TAR; without either they fall back to the photos)")
    # SUPPRESS: a command not given --book keeps the one given before the command.
    for p in (a, g, r):
        p.add_argument("--book", type=Path, default=argparse.SUPPRESS, help=BOOK_HELP)
    return ap


def _check_grade_flags(args) -> None:
    """Every flag checked before any grading: one line each (exit status 1)."""
    import math

    if args.jobs is not None and args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: at least 1")
    for flag, value in (("--cell-timeout", args.cell_timeout), ("--timeout", args.timeout)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SystemExit(f"{flag} {value}: seconds, a number above 0")
    if args.data is not None and not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (a CIFAR-10 ImageFolder .tar.gz)")
    if not args.submissions.is_dir():
        raise SystemExit(f"{args.submissions}: no such folder (the submissions: one notebook, "
                         f"or one folder, per student)")


def _grade(book: Path, args) -> int:
    from .gradebook import check_out
    from .grading import grade
    from .submissions import decide_chapter, find

    names = [p.stem for p in chapters(book)]
    asked = _chapter_path(book, args.chapter).stem if args.chapter else None
    subs = find(args.submissions, names, asked)
    if not subs:
        raise SystemExit(f"{args.submissions}: no submissions in it")
    chapter = decide_chapter(subs, names, asked)
    out = args.out or Path(f"grades-{chapter}.csv")
    check_out(out, args.submissions, args.overwrite)
    t0 = time.perf_counter()
    grade(args.submissions, book / "notebooks" / f"{chapter}.ipynb", out, jobs=args.jobs,
          cell_timeout=args.cell_timeout, timeout=args.timeout, data=args.data,
          overwrite=args.overwrite, chapters_in_book=names)
    print(f"graded in {time.perf_counter() - t0:.0f} s: {out}, {out.with_suffix('.txt')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command == "grade":
        _check_grade_flags(args)
    book = book_folder(args.book)

    if args.command == "annotate":
        import nbformat

        changed = []
        for path in _selected(book, args.chapters):
            nb = nbformat.read(path, as_version=4)
            if annotate_notebook(nb):
                changed.append(path.name)
                if not args.check:
                    nbformat.write(nb, path)
        for name in changed:
            print(("lacks nbgrader metadata: " if args.check else "annotated ") + name)
        return 1 if (args.check and changed) else 0
    if args.command == "generate":
        out = args.out or book / settings(book).folder
        names = generate(book, out, check=args.check,
                         only=[p.stem for p in _selected(book, args.chapters)])
        if args.check:
            for name in names:
                print(f"out of date: {out / name} (run generate --out {out})")
            return 1 if names else 0
        print(f"wrote {len(names)} student notebooks to {out}")
        return 0
    return _grade(book, args)
