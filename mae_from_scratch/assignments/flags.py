"""What grading flags for a person to read: exercise cells that call the package's own
function instead of the student's code (such a cell passes its check)."""

from __future__ import annotations

import re

from .cells import grade_id, is_check, is_solution

PACKAGE_NAMES = ("mae_from_scratch", "mfs")


def package_calls(submission) -> list[str]:
    """Exercises whose cell uses the package instead of the student's own code."""
    found = []
    pattern = re.compile(r"\b(?:%s)\s*\.|^\s*(?:from|import)\s+mae_from_scratch\b" %
                         "|".join(PACKAGE_NAMES), re.M)
    for c in submission.cells:
        if c.cell_type == "code" and is_solution(c) and not is_check(c):
            code = "\n".join(line.split("#", 1)[0] for line in c.source.split("\n"))
            hit = pattern.search(code)
            if hit:
                found.append(f"{grade_id(c)} uses {hit.group(0).strip()}")
    return found
