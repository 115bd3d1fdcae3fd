"""The prompts of written answers in the student notebooks.

A chapter's prompt says "Write your answer in the cell below; the model answer is folded
under it.", and the folded model answer follows.  The student version has the answer stub
instead of the model answer, so its prompt must not point at one: generation drops that
clause, and refuses a mention of a model answer that it does not know how to drop.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from mae_from_scratch import assignments as A

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = A.settings(ROOT)
PROMPT = "Write your answer in the cell below; the model answer is folded under it."
MENTION = re.compile(r"model\s+answer", re.IGNORECASE)


def _key(path: Path):
    return nbformat.read(path, as_version=4)


def _written(nb) -> bool:
    return any(c.cell_type == "markdown" and c.source.startswith(A.MODEL_ANSWER) for c in nb.cells)


CHAPTERS = A.chapters(ROOT)
WRITTEN = [p for p in CHAPTERS if _written(_key(p))]


def _chapter(*prompt: str):
    """A chapter of one written answer: the question, ``prompt`` cells, the model answer."""
    nb = nbformat.v4.new_notebook()
    answer = nbformat.v4.new_markdown_cell(f"{A.MODEL_ANSWER}\n:class: dropdown\n\nBecause.\n```")
    nb.cells = [nbformat.v4.new_markdown_cell("## Written answer (graded by hand)\n\nWhy?"),
                *[nbformat.v4.new_markdown_cell(p) for p in prompt], answer]
    A.annotate_notebook(nb)
    return nb


def test_chapters_with_a_written_answer_are_found():
    assert {p.stem for p in WRITTEN} >= {"01_patches", "03_positional_embeddings", "04_encoder",
                                         "07_the_whole_model"}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_notebooks_never_mention_the_model_answer(path):
    key = _key(path)
    nb = A.student_notebook(key, SETTINGS, path.name)
    for cell in nb.cells:
        assert not MENTION.search(cell.source), (path.name, cell.get("id"), cell.source)
    # The student gets the book's prompt without the clause, and every other markdown cell
    # but the written answers as the book has it, byte for byte.
    book = {c.get("id"): c.source for c in key.cells if c.cell_type == "markdown"}
    for cell in nb.cells:
        if cell.get("id") not in book or A.is_written(cell):
            continue
        expected = book[cell.get("id")].replace(PROMPT, "Write your answer in the cell below.")
        assert cell.source == expected, (path.name, cell.get("id"))


@pytest.mark.parametrize("source, expected", [
    (PROMPT, "Write your answer in the cell below."),
    ("Two sentences at most. Write your answer in the cell below;\nthe Model  Answer is\nfolded under it.",
     "Two sentences at most. Write your answer in the cell below."),
    ("Write your answer below, the model answer is folded under it.", "Write your answer below."),
    ("Write your answer below. The model answer is folded under it.", "Write your answer below."),
    ("Nothing to drop here.  \nA hard line break above stays.", "Nothing to drop here.  \nA hard line break above stays."),
])
def test_the_prompt_loses_its_pointer_to_the_model_answer(source, expected):
    assert A.cells.student_prompt(source) == expected


@pytest.mark.parametrize("prompt", [
    "Write your answer in the cell below; compare it with the model answer afterwards.",
    "Write your answer in the cell below; the model answer is hidden under it.",
    "MODEL ANSWER: see below.",
])
def test_an_unknown_mention_of_the_model_answer_is_refused(prompt):
    with pytest.raises(ValueError, match=r"99_test\.ipynb, cell 1 .*mentions a model answer"):
        A.student_notebook(_chapter(prompt), SETTINGS, "99_test.ipynb")


def test_a_model_answer_without_grading_metadata_is_refused():
    """A model answer that ``annotate_notebook`` never marked would reach students as it is."""
    nb = _chapter(PROMPT)
    del nb.cells[-1].metadata["nbgrader"]
    with pytest.raises(ValueError, match=r"cell 2 .*mentions a model answer"):
        A.student_notebook(nb, SETTINGS, "99_test.ipynb")


def test_generate_writes_nothing_when_a_chapter_is_refused(tmp_path):
    book = tmp_path / "book"
    (book / "notebooks").mkdir(parents=True)
    nbformat.write(_chapter(PROMPT), book / "notebooks" / "01_good.ipynb")
    nbformat.write(_chapter("See the model answer below."), book / "notebooks" / "02_bad.ipynb")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nparts:\n  - chapters:\n"
                                   "      - file: notebooks/01_good\n      - file: notebooks/02_bad\n")
    (book / "_config.yml").write_text(yaml.safe_dump(yaml.safe_load((ROOT / "_config.yml").read_text())))
    out = tmp_path / "class"
    with pytest.raises(ValueError, match=r"02_bad\.ipynb, cell 1"):
        A.generate(book, out)
    assert not out.exists()
    assert A.generate(book, out, only=["01_good"]) == ["01_good.ipynb"]
    text = (out / "01_good.ipynb").read_text()
    assert "Write your answer in the cell below." in text and not MENTION.search(text)
