"""The instructor's checks, put back into a submission by ``grade_id``: the notebook that
grading runs.

A student may delete, edit or copy a check cell; what runs is always the instructor's
cell (hidden tests included), once, in the place of the student's first copy or, where
the student deleted it, after the cell that preceded it.  An exercise counts by what the
kernel holds when its check runs, wherever the student typed it.
"""

from __future__ import annotations

import copy

from .cells import grade_id, is_check, is_solution
from .kernel_guard import MARK


def check_ids(key) -> list[str]:
    return [grade_id(c) for c in key.cells if is_check(c)]


def exercise_of(key) -> dict:
    """grade_id of a check -> grade_id of the exercise it grades (if any)."""
    out, last = {}, None
    for c in key.cells:
        if c.cell_type != "code":
            continue
        if is_solution(c):
            last = grade_id(c)
        elif is_check(c):
            out[grade_id(c)] = last
            last = None
    return out


def _find(cells, cell) -> int | None:
    """Index in ``cells`` of the student's copy of instructor cell ``cell``."""
    gid = grade_id(cell)
    for i, c in enumerate(cells):
        if gid is not None and grade_id(c) == gid:
            return i
    cid = cell.get("id")
    for i, c in enumerate(cells):
        if cid and c.get("id") == cid and grade_id(c) is None:
            return i
    return None


def exercise_names(key) -> list[str]:
    """Every function and class the chapter's exercise cells define."""
    return list(exercise_references(key))


def exercise_references(key) -> dict:
    """{each function or class an exercise cell defines: the names (``a`` or ``a.b``) its
    reference solution's cell uses}: what the kernel guard lets the exercise call."""
    import ast

    found = {}
    for c in key.cells:
        if c.cell_type != "code" or not is_solution(c) or is_check(c):
            continue
        try:
            tree = ast.parse(c.source)
        except SyntaxError:
            continue
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                used.add(f"{node.value.id}.{node.attr}")
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                found[n.name] = sorted(used)
    return found


def grading_notebook(submission, key, nonce: str | None = None, report: str = ""):
    """The submission with every instructor check cell put back (hidden tests included),
    each in its place or, where the student deleted it, after the cell that preceded it.
    Every other cell that carries a check's ``grade_id`` (a copy, pasted or edited) is
    removed: the grade comes from the instructor's cell.  With ``nonce``, the grader's own
    first cell (:mod:`.kernel_guard`) and last cell go around the notebook, and every check
    cell is marked for it.

    Returns ``(notebook, {grade_id: code cell number}, [missing exercise grade_ids])``;
    the grader's cells are numbered ``"grader-start"`` and ``"grader-finish"``."""
    import nbformat

    nb = copy.deepcopy(submission)
    check_gids = {grade_id(c) for c in key.cells if is_check(c)}
    cells, seen = [], set()
    for c in nb.cells:
        gid = grade_id(c)
        if gid in check_gids:
            if gid in seen:
                continue  # a copy of a check cell: only the first place counts
            seen.add(gid)
        cells.append(c)
    missing = [grade_id(c) for c in key.cells
               if c.cell_type == "code" and is_solution(c) and _find(cells, c) is None]
    for k, cell in enumerate(key.cells):
        if not is_check(cell):
            continue
        mine = copy.deepcopy(cell)
        if nonce is not None:
            mine.source = mine.source + "\n" + MARK.format(nonce=nonce, gid=grade_id(cell))
        i = _find(cells, cell)
        if i is not None:
            cells[i] = mine
            continue
        at = 0
        for before in reversed(key.cells[:k]):
            j = _find(cells, before)
            if j is not None:
                at = j + 1
                break
        cells.insert(at, mine)
    if nonce is not None:
        start = (f"from mae_from_scratch.assignments import kernel_guard as __grader\n"
                 f"__grader.install({nonce!r}, {report!r}, {exercise_references(key)!r})")
        cells = [nbformat.v4.new_code_cell(start), *cells,
                 nbformat.v4.new_code_cell("__grader.finish()")]
        cells[0].metadata["grader"] = "start"
        cells[-1].metadata["grader"] = "finish"
    nb.cells = cells
    numbers, n = {}, 0
    for c in cells:
        if c.cell_type == "code":
            if c.metadata.get("grader"):
                numbers[f"grader-{c.metadata['grader']}"] = n
            elif is_check(c):
                numbers[grade_id(c)] = n
            n += 1
    return nb, numbers, missing
