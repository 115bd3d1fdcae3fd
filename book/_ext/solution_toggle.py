"""Hide each exercise's solution behind a toggle in the rendered book.

An exercise cell holds its reference solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION``.  The page shows the cell with the solution replaced by
``# YOUR CODE HERE`` -- the signature, the docstring and everything around the solution
stay visible -- followed by the whole cell folded behind a "solution" toggle
(sphinx-togglebutton, which Jupyter Book loads).  Hidden tests
(``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``) are left out of the page; they
belong to grading.  A written answer's model answer is a MyST ``dropdown`` admonition in its own
markdown cell, folded by the same toggle machinery.
"""

from __future__ import annotations

from docutils import nodes

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = ["# YOUR CODE HERE", "..."]


def replace_region(text: str, begin: str, end: str, stub: list[str] | None) -> str:
    out, inside = [], False
    for line in text.split("\n"):
        if not inside and line.strip() == begin:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in (stub or [])]
            continue
        if inside:
            inside = line.strip() != end
            continue
        out.append(line)
    return "\n".join(out)


def strip_markers(text: str) -> str:
    """The full cell, without the marker lines."""
    markers = {BEGIN_SOLUTION, END_SOLUTION}
    return "\n".join(line for line in text.split("\n") if line.strip() not in markers)


def _literal(block: nodes.literal_block, text: str) -> nodes.literal_block:
    new = nodes.literal_block(text, text, **{k: block[k] for k in ("language",) if k in block})
    new["classes"] = list(block["classes"])
    new["highlight_args"] = dict(block.get("highlight_args", {}))
    return new


def fold_solutions(doctree: nodes.Node) -> int:
    """Rewrite every literal block holding solution markers; returns how many were folded."""
    folded = 0
    for block in list(doctree.findall(nodes.literal_block)):
        text = block.astext()
        if BEGIN_HIDDEN not in text and BEGIN_SOLUTION not in text:
            continue
        text = replace_region(text, BEGIN_HIDDEN, END_HIDDEN, None)
        if BEGIN_SOLUTION not in text:
            block.replace_self(_literal(block, text))
            continue
        skeleton = _literal(block, replace_region(text, BEGIN_SOLUTION, END_SOLUTION, STUB))
        toggle = nodes.container(classes=["toggle", "exercise-solution"])
        toggle += _literal(block, strip_markers(text))
        block.replace_self([skeleton, toggle])
        folded += 1
    return folded


def _on_doctree_read(app, doctree) -> None:
    fold_solutions(doctree)


def setup(app):
    app.connect("doctree-read", _on_doctree_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
