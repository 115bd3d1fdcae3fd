"""The gradebook: one CSV row per student and a readable summary beside it, written from the
grader's memory once every submission is graded, each file replaced in one step; and the
checks on where it goes, made before any grading."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path


def check_out(out_csv: Path, folder: Path, overwrite: bool, summary_path: Path | None = None):
    """Refuse a gradebook path that would lose or mix up work, before any grading."""
    summary_path = summary_path or out_csv.with_suffix(".txt")
    if out_csv.is_dir():
        raise SystemExit(f"--out {out_csv}: is a folder; name the gradebook's .csv file")
    if out_csv.suffix.lower() != ".csv":
        raise SystemExit(f"--out {out_csv}: name a .csv file (the summary is written beside "
                         f"it, as {out_csv.with_suffix('.txt').name})")
    if out_csv.resolve().is_relative_to(folder.resolve()):
        raise SystemExit(f"--out {out_csv}: inside the submissions folder {folder}, where the "
                         f"next grading would take it for a student's; write it elsewhere")
    if not overwrite:
        for path in (out_csv, summary_path):
            if path.exists():
                raise SystemExit(f"{path}: exists (an earlier gradebook?); pass --overwrite "
                                 f"to replace it, or --out another name")


def write(results: list, ids: list[str], chapter: str, out_csv: Path,
          summary_path: Path) -> str:
    """Write the gradebook and its summary; returns the summary."""
    rows = [["student", "passed", "total", *ids, "flags", "first_failure"]]
    for r in results:
        rows.append([r.student, r.passed, len(ids),
                     *("pass" if r.checks[g][0] else "fail" for g in ids),
                     "; ".join(r.flags), r.first_failure()])
    text = summary(results, ids, chapter)
    _write_atomically(out_csv, _csv_text(rows))
    _write_atomically(summary_path, text)
    return text


def _csv_text(rows) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(results: list, ids: list[str], chapter: str) -> str:
    n = len(results)
    lines = [f"{chapter}: {n} submissions, {len(ids)} checks each", "",
             "check                               passed"]
    for gid in ids:
        k = sum(r.checks[gid][0] for r in results)
        lines.append(f"  {gid:<34}{k:>3} / {n}")
    lines += ["", "student                    score   first failure"]
    for r in results:
        lines.append(f"  {r.student[:24]:<24}{r.passed:>3} / {len(ids):<3} "
                     f"{r.first_failure()[:60]}")
    flagged = [r for r in results if r.flags]
    if flagged:
        lines += ["", "flagged (read these):"]
        lines += [f"  {r.student}: {'; '.join(r.flags)}" for r in flagged]
    return "\n".join(lines) + "\n"
