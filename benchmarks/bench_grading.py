"""Time the grading of a class: N submissions of one chapter, graded in parallel with nbval.

The submissions are a mix, as a real class hands in: a quarter solved, a quarter untouched,
a quarter with one exercise unsolved, a quarter with a wrong answer.  Prints the machine's
cores, the load average before the run, the wall time and the time per submission.

    python benchmarks/bench_grading.py                          # 40 submissions of chapter 2
    python benchmarks/bench_grading.py --n 10 --chapter 01_patches --jobs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from mae_from_scratch import assignments as A

ROOT = Path(__file__).resolve().parents[1]


def submissions(chapter: str, n: int) -> list:
    key = nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4)
    blank = A.student_notebook(key, A.settings(ROOT), f"{chapter}.ipynb")
    solutions = {A.grade_id(c): c.source for c in key.cells
                 if c.cell_type == "code" and A.is_solution(c)}

    def variant(k: int):
        nb = nbformat.from_dict(nbformat.reads(nbformat.writes(blank), as_version=4))
        if k % 4 == 1:
            return nb  # untouched
        for j, cell in enumerate(c for c in nb.cells if A.grade_id(c) in solutions):
            cell.source = solutions[A.grade_id(cell)]
            if k % 4 == 2 and j == 0:  # one exercise left unsolved
                cell.source = A.student_source(cell)
            if k % 4 == 3 and j == 0:  # a wrong answer: the body replaced by a constant
                head = cell.source.split("### BEGIN SOLUTION")[0].rstrip()
                cell.source = head + "\n    return None\n"
        return nb

    return [variant(k) for k in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapter", default="02_masking")
    ap.add_argument("--n", type=int, default=40, help="submissions")
    ap.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    ap.add_argument("--cell-timeout", type=float, default=60)
    args = ap.parse_args(argv)
    jobs = args.jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        for k, nb in enumerate(submissions(args.chapter, args.n)):
            nbformat.write(nb, folder / f"student{k:03d}.ipynb")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        t0 = time.perf_counter()
        results = A.grade(folder, ROOT / "notebooks" / f"{args.chapter}.ipynb",
                          Path(tmp) / "grades.csv", jobs=jobs, cell_timeout=args.cell_timeout,
                          quiet=True)
        wall = time.perf_counter() - t0
    scores = [r.passed for r in results]
    print(f"{args.n} submissions of {args.chapter}, {jobs} parallel runs on "
          f"{os.cpu_count()} cores (load average before: {load:.2f}), python {sys.version.split()[0]}")
    print(f"wall time {wall:.0f} s, {wall / args.n:.1f} s per submission; "
          f"scores min {min(scores)} max {max(scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
