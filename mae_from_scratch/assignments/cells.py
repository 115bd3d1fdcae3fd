"""How a chapter marks its exercises: the solution and hidden-test markers, nbgrader's cell
metadata, what a student sees of each cell, and ``annotate_notebook``, which writes that
metadata.

A chapter is its own answer key:

- an *exercise cell* holds its reference solution between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; the next code cell is its *check cell* (asserts);
- a *written answer* is a markdown cell that starts with ``MODEL_ANSWER``, graded by hand;
- a check cell may hold ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``;
- a cell whose first line is ``# NBVAL_CHECK_OUTPUT`` is checked against its saved output.
"""

from __future__ import annotations

import ast
import copy

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
ANSWER_STUB = "YOUR ANSWER HERE"
# A written answer's cell: a MyST dropdown (folded in the book) holding the model answer.
MODEL_ANSWER = "```{admonition} A model answer"


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


def student_source(cell) -> str:
    """What the student sees of a cell."""
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
    return src


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
