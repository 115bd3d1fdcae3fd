"""Student notebooks from the chapters: solutions replaced by stubs, hidden tests removed,
written-answer prompts without their pointer to the model answer, outputs cleared except those
nbval compares, an "Open in Colab" badge, and the setup cell's install pinned to the ref set
under ``assignments:`` in the book's ``_config.yml``."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from .book import Settings, chapters, find_book, settings
from .cells import ANSWER_STUB, BEGIN_HIDDEN, BEGIN_SOLUTION, checks_output, student_source

SETUP_PACKAGE = re.compile(r'package = "git\+(?P<url>[^@"]+)@(?P<ref>[^"]+)"')


def colab_link(s: Settings, name: str) -> str:
    """The student notebook on the branch it is committed on.  Not at ``ref``: the commit
    that ``ref`` names cannot hold notebooks that already name it, while the branch's
    notebooks do, so the link and the install agree."""
    owner_repo = s.url.split("github.com/", 1)[-1]
    return (f"https://colab.research.google.com/github/{owner_repo}/blob/{s.branch}/"
            f"{s.folder}/{name}")


def student_notebook(nb, s: Settings, name: str):
    """The student version of chapter ``nb`` (a new notebook; ``nb`` is left as it is)."""
    import nbformat

    out = copy.deepcopy(nb)
    for i, cell in enumerate(out.cells):
        try:
            cell.source = student_source(cell)
        except ValueError as e:
            raise ValueError(f"{name}, cell {i} (id {cell.get('id')}): {e}") from None
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if "setup" in cell.metadata.get("tags", []):
            # Two string pieces: with a 40-digit commit the line would pass 88 characters.
            cell.source = SETUP_PACKAGE.sub(
                lambda m: f'package = ("git+{m.group("url")}"\n               "@{s.ref}")',
                cell.source)
        if not checks_output(cell):
            # nbval compares only # NBVAL_CHECK_OUTPUT cells: they keep the expected output
            # (and the execution count, without which nbval does not compare them).
            cell.outputs, cell.execution_count = [], None
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({colab_link(s, name)})\n\n"
        f"**Assignment.** Replace every `raise NotImplementedError()` with your code and run "
        f"the check cell below it. Written answers go where it says `{ANSWER_STUB}`; they are "
        f"graded by hand. A prediction is recorded next to the result and not graded.")
    badge.id = "assignment-colab-badge"
    badge.metadata["tags"] = ["assignment"]
    first_md = 1 if out.cells and out.cells[0].cell_type == "markdown" else 0
    out.cells.insert(first_md, badge)
    out.metadata.pop("mae_from_scratch", None)  # the chapter's execution stamp: not the student's code
    out.metadata["mae_assignment"] = {"chapter": Path(name).stem, "ref": s.ref}
    return out


def refuse_answer_keys(out_dir: Path) -> None:
    """Student notebooks replace the files of their names: never an answer key's (a chapter,
    with its solutions and hidden tests, as in the book's ``notebooks/``)."""
    if not out_dir.is_dir():
        return
    for path in sorted(out_dir.glob("*.ipynb")):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if BEGIN_SOLUTION in text or BEGIN_HIDDEN in text:
            raise SystemExit(f"--out {out_dir}: {path.name} there is an answer key (it holds "
                             f"solutions); student notebooks would replace it. Choose "
                             f"another folder")


def generate(book: Path | None = None, out_dir: Path | None = None, check: bool = False,
             only: list[str] | None = None) -> list[str]:
    """Write (or, with ``check``, compare) one student notebook per chapter of ``book``
    (default: the book folder found from the working directory), or per chapter named in
    ``only``, into ``out_dir`` (default: the book's ``assignments: folder``).  Returns the
    names written, or with ``check`` those missing or out of date."""
    import nbformat

    book = find_book() if book is None else Path(book)
    s = settings(book)
    out_dir = book / s.folder if out_dir is None else Path(out_dir)
    if not check:
        refuse_answer_keys(out_dir)
    # Every notebook made before any is written: a chapter refused (ValueError) leaves the
    # class folder as it was.
    texts = {path.name: nbformat.writes(student_notebook(nbformat.read(path, as_version=4), s, path.name)) + "\n"
             for path in chapters(book) if only is None or path.stem in only}
    names = []
    for name, text in texts.items():
        target = out_dir / name
        if check:
            if not target.is_file() or target.read_text() != text:
                names.append(name)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
        names.append(name)
    return names
