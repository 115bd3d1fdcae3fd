"""What counts as a submission, and which chapter it is.

A submissions folder holds one entry per student:

- a file: that student's submission (``alice.ipynb``; a file that is not a notebook is
  graded 0 with the reason);
- a folder (nbgrader's and most learning platforms' layout): the notebook named after the
  chapter, else its only notebook, else its newest (by modification time), which is
  flagged with the others' names.  ``.ipynb_checkpoints`` never counts.

A notebook's chapter is the one its metadata names (``mae_assignment.chapter``, written by
``generate``), else its file name when that is a chapter's.  Without ``--chapter`` the
folder is graded as the one chapter its notebooks name: when they name more than one, the
grading is refused, naming the notebooks of each.  A notebook of another chapter than the
one graded, or of a chapter this book does not have, scores 0 with that reason, and the
others are graded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Submission:
    student: str
    path: Path | None  # the notebook graded (None: none found)
    chapter: str | None = None  # the chapter it says it is, if it says
    note: str = ""  # why it cannot be graded, when it cannot
    flags: list = field(default_factory=list)


def chapter_of(path: Path, names: set) -> str | None:
    """The chapter a notebook names in its metadata, else its file name if that is one."""
    try:
        meta = json.loads(path.read_text())["metadata"]["mae_assignment"]
        chapter = meta["chapter"]
        if isinstance(chapter, str) and chapter:
            return chapter
    except Exception:  # unreadable, or no such metadata: the name decides
        pass
    return path.stem if path.stem in names else None


def _pick(folder: Path, names: set, chapter: str | None) -> tuple[Path | None, list]:
    notebooks = [p for p in sorted(folder.rglob("*.ipynb"))
                 if ".ipynb_checkpoints" not in p.parts and p.is_file()]
    if not notebooks:
        return None, []
    named = [p for p in notebooks if p.stem == chapter] if chapter else \
        [p for p in notebooks if p.stem in names]
    if len(named) == 1:
        return named[0], []
    if len(notebooks) == 1:
        return notebooks[0], []
    candidates = named or notebooks
    newest = max(candidates, key=lambda p: (p.stat().st_mtime, str(p)))
    others = ", ".join(str(p.relative_to(folder)) for p in candidates if p != newest)
    return newest, [f"{len(candidates)} notebooks: graded {newest.relative_to(folder)}, the "
                    f"newest (also there: {others})"]


def find(folder: Path, names: list[str], chapter: str | None = None) -> list[Submission]:
    """One :class:`Submission` per entry of ``folder``; ``names`` are the book's chapters."""
    known = set(names)
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            sub = Submission(entry.stem, entry)
        elif entry.is_dir():
            path, flags = _pick(entry, known, chapter)
            sub = Submission(entry.name, path, flags=flags)
            if path is None:
                sub.note = "no notebook found in the submission's folder"
        else:
            continue
        if sub.path is not None and sub.path.suffix == ".ipynb":
            sub.chapter = chapter_of(sub.path, known)
            if sub.chapter is not None and sub.chapter not in known:
                sub.note = (f"its metadata names chapter {sub.chapter!r}, which this book "
                            f"does not have")
        found.append(sub)
    return found


def decide_chapter(subs: list[Submission], names: list[str], asked: str | None) -> str:
    """The chapter to grade: ``asked``, or the one the notebooks name.  Marks (with a note)
    the submissions of another chapter; refuses a folder whose notebooks disagree."""
    if asked is None:
        named = {}
        for s in subs:
            if s.chapter in names and not s.note:
                named.setdefault(s.chapter, []).append(s.student)
        if not named:
            raise SystemExit("cannot tell which chapter the submissions are (no notebook names "
                             "one): pass --chapter NN_name")
        if len(named) > 1:
            parts = [f"{c} ({', '.join(who[:5])}{', ...' if len(who) > 5 else ''})"
                     for c, who in sorted(named.items(), key=lambda kv: -len(kv[1]))]
            raise SystemExit("the submissions are of different chapters: " + "; ".join(parts)
                             + ". Grade each chapter's folder on its own, or pass --chapter "
                             "to grade them all as one (the others then score 0, with why)")
        (asked,) = named
    for s in subs:
        if not s.note and s.chapter is not None and s.chapter != asked:
            s.note = f"this is chapter {s.chapter}'s notebook, not {asked}'s: not graded"
    return asked
