"""How a chapter marks its exercises: the solution and hidden-test markers, nbgrader's cell
metadata, what a student sees of each cell, and ``annotate_notebook``, which writes that
metadata.

A chapter is its own answer key:

- an *exercise cell* holds its reference solution between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; the next code cell is its *check cell* (asserts);
- a *written answer* is a markdown cell that starts with ``MODEL_ANSWER``, graded by hand;
  the prompt above it may say the model answer is folded under the answer cell, a clause the
  student version drops (:func:`student_prompt`);
- a check cell may hold ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``;
- a cell whose first line is ``# NBVAL_CHECK_OUTPUT`` is checked against its saved output.
"""

from __future__ import annotations

import ast
import copy
import re

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
ANSWER_STUB = "YOUR ANSWER HERE"
# A written answer's cell: a MyST dropdown (folded in the book) holding the model answer.
MODEL_ANSWER = "```{admonition} A model answer"
# The book's prompt for a written answer, "Write your answer in the cell below; the model
# answer is folded under it.", as a clause or as a sentence of its own.  A student notebook
# has no model answer, so it loses them; any other mention of one is refused.
_FOLDED = r"the\s+model\s+answer\s+is\s+folded\s+under\s+it"
_FOLDED_CLAUSE = re.compile(r"\s*[;,]\s*" + _FOLDED + r"(?=\.)", re.IGNORECASE)
_FOLDED_SENTENCE = re.compile(r"[ \t]*\b" + _FOLDED + r"\.", re.IGNORECASE)
_MENTION = re.compile(r"model\s+answer", re.IGNORECASE)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def grade_id(cell) -> str | None:
    return _meta(cell).get("grade_id")


def is_solution(cell) -> bool:
    return bool(_meta(cell).get("solution"))


def is_check(cell) -> bool:
    """A cell that scores points automatically: a code cell with nbgrader ``grade``."""
    return cell.cell_type == "code" and bool(_meta(cell).get("grade"))


def is_written(cell) -> bool:
    return cell.cell_type == "markdown" and is_solution(cell)


def _first_line(source: str) -> str:
    return source.lstrip().split("\n", 1)[0].strip()


def checks_output(cell) -> bool:
    return cell.cell_type == "code" and _first_line(cell.source) == CHECK_OUTPUT


def _defined_name(source: str) -> str | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return node.name
    return None


def _replace_region(source: str, begin: str, end: str, stub: list[str] | None) -> str:
    """Replace each ``begin``...``end`` region (markers included) by ``stub``, indented like
    the marker; ``stub=None`` removes the region."""
    out, inside = [], False
    for line in source.split("\n"):
        stripped = line.strip()
        if not inside and stripped == begin:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if stub is not None:
                out += [indent + s for s in stub]
            continue
        if inside:
            if stripped == end:
                inside = False
            continue
        out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}")
    return "\n".join(out)


def without_hidden_tests(source: str) -> str:
    return _replace_region(source, BEGIN_HIDDEN, END_HIDDEN, None)


def student_prompt(source: str) -> str:
    """``source`` without the book's pointer to the folded model answer, which a student
    notebook does not hold: "Write your answer in the cell below; the model answer is folded
    under it." becomes "Write your answer in the cell below."  Raises ``ValueError`` if a
    model answer is still mentioned: the sentence is worded in a way this does not know, and
    shipping it would send students looking for an answer that is not there."""
    src = _FOLDED_SENTENCE.sub("", _FOLDED_CLAUSE.sub("", source))
    found = _MENTION.search(src)
    if found:
        line = src[: found.start()].count("\n") + 1
        text = src.split("\n")[line - 1].strip()
        raise ValueError(f"line {line} mentions a model answer, which the student notebook does not "
                         f"hold: {text!r}.  Word it as the book's prompt (\"Write your answer in the "
                         f"cell below; the model answer is folded under it.\") or drop the mention")
    return src


def student_source(cell) -> str:
    """What the student sees of a cell (``ValueError`` from :func:`student_prompt` if it
    would mention a model answer)."""
    src = cell.source
    if cell.cell_type == "markdown" and is_solution(cell) and BEGIN_SOLUTION not in src:
        return ANSWER_STUB
    if BEGIN_SOLUTION in src:
        if cell.cell_type == "markdown":
            src = _replace_region(src, BEGIN_SOLUTION, END_SOLUTION, [ANSWER_STUB])
        else:
            src = _replace_region(src, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB)
    if BEGIN_HIDDEN in src:
        src = without_hidden_tests(src)
    return student_prompt(src) if cell.cell_type == "markdown" else src


def annotate_notebook(nb) -> bool:
    """Give every exercise, written answer and check cell nbgrader metadata (in place).

    Exercise cells are named after the function or class they define, their check cells
    ``NAME-check``; the ``# NBVAL_CHECK_OUTPUT`` cells that check no single exercise are
    ``package-check``.  Existing ``grade_id``s are kept.  Returns whether anything changed.
    """
    before = copy.deepcopy([c.metadata for c in nb.cells])
    used = {grade_id(c) for c in nb.cells if grade_id(c)}

    def fresh(name: str) -> str:
        candidate, k = name, 2
        while candidate in used:
            candidate, k = f"{name}-{k}", k + 1
        used.add(candidate)
        return candidate

    def stamp(cell, gid: str, *, solution: bool, grade: bool, locked: bool) -> None:
        meta = {"grade": grade, "grade_id": grade_id(cell) or fresh(gid), "locked": locked,
                "schema_version": 3, "solution": solution, "task": False}
        if grade:
            meta["points"] = _meta(cell).get("points", 1)
        cell.metadata["nbgrader"] = meta

    pending = None  # the exercise whose check is the next code cell
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if BEGIN_SOLUTION in cell.source or cell.source.startswith(MODEL_ANSWER):
                stamp(cell, "written-answer", solution=True, grade=True, locked=False)
            elif "nbgrader" in cell.metadata:
                del cell.metadata["nbgrader"]
            continue
        if cell.cell_type != "code":
            continue
        if BEGIN_SOLUTION in cell.source:
            name = _defined_name(cell.source) or "exercise"
            stamp(cell, name, solution=True, grade=False, locked=False)
            pending = grade_id(cell)
        elif pending is not None:
            stamp(cell, f"{pending}-check", solution=False, grade=True, locked=True)
            pending = None
        elif checks_output(cell):
            stamp(cell, "package-check", solution=False, grade=True, locked=True)
        elif "nbgrader" in cell.metadata:
            del cell.metadata["nbgrader"]
    return before != [c.metadata for c in nb.cells]
