"""Grading: every submission of a chapter runs with nbval in a temporary copy of its own,
with the instructor's check cells (hidden tests included) put back by ``grade_id``; the
verdicts become one CSV row per student (the gradebook) and a readable summary.

Every submission runs with the GPUs hidden, so the chapters take the CPU profile their saved
verdicts come from on any grading machine.  The grading is formative, not tamper-proof:
solutions and checks are public, and a student's code runs in the same kernel before the
checks do.
"""

from __future__ import annotations

import copy
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cells import grade_id, is_check, is_solution
from .flags import package_calls


@dataclass
class Result:
    student: str
    checks: dict  # grade_id -> (passed, message)
    flags: list = field(default_factory=list)
    note: str = ""  # why nothing ran, when nothing did
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(ok for ok, _ in self.checks.values())

    def first_failure(self) -> str:
        if self.note:
            return self.note
        for gid, (ok, message) in self.checks.items():
            if not ok:
                return f"{gid}: {message}"
        return ""


def check_ids(key) -> list[str]:
    return [grade_id(c) for c in key.cells if is_check(c)]


def _exercise_for(key) -> dict:
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


def grading_notebook(submission, key):
    """The submission with every instructor check cell put back (hidden tests included),
    each in its place or, where the student deleted it, after the cell that preceded it.

    Returns ``(notebook, {grade_id: code cell number}, [missing exercise grade_ids])``."""
    nb = copy.deepcopy(submission)
    cells = list(nb.cells)
    missing = [grade_id(c) for c in key.cells
               if c.cell_type == "code" and is_solution(c) and _find(cells, c) is None]
    for k, cell in enumerate(key.cells):
        if not is_check(cell):
            continue
        mine = copy.deepcopy(cell)
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
    nb.cells = cells
    numbers, n = {}, 0
    for c in cells:
        if c.cell_type == "code":
            if is_check(c):
                numbers[grade_id(c)] = n
            n += 1
    return nb, numbers, missing


_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*[A-Za-z]")  # pytest writes ESC as #x1B in XML
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\b.*)$")


def _failure_message(text: str, message: str) -> str:
    text, message = _ANSI.sub("", text or ""), _ANSI.sub("", message or "")
    both = text + "\n" + message
    if "Failed to interrupt kernel" in both or "Kernel dead" in both:
        # nbval waits out the cell's timeout when the kernel has died.
        return ("the kernel died or stopped responding (a crash, running out of memory, or a "
                "loop that cannot be interrupted); the cells after it could not run")
    if "Previous cell timed out" in both:
        return "not run: an earlier cell timed out or the kernel died"
    found = re.search(r"Timeout of [\d.]+ seconds exceeded", both)
    if found:
        return f"{found.group(0)}: the cell did not finish (an endless loop?)"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    for line in reversed(lines):
        if _EXC_LINE.match(line):
            if line.rstrip(":") == "NotImplementedError":
                return "NotImplementedError: the exercise is not done yet"
            return line[:300]
    if "outputs differ" in both:
        return "the printed verdict differs from the expected one"
    return (message or (lines[-1] if lines else "failed")).strip()[:300]


def _junit_verdicts(xml_path: Path) -> dict:
    """code cell number -> (passed, message) from nbval's JUnit report."""
    out = {}
    root = ET.parse(xml_path).getroot()
    for case in root.iter("testcase"):
        found = re.search(r"Cell (\d+)$", case.get("name", ""))
        if not found:
            continue
        bad = [e for e in case if e.tag in ("failure", "error", "skipped")]
        if not bad:
            out[int(found.group(1))] = (True, "")
        else:
            out[int(found.group(1))] = (False, _failure_message(bad[0].text or "",
                                                                bad[0].get("message", "")))
    return out


def _student_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def submissions(folder: Path, chapter: str) -> list[tuple[str, Path | None]]:
    """(student, notebook path or None) for every entry of ``folder``: a file is one
    student's submission; a folder holds one (``chapter``.ipynb, or its only notebook)."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            found.append((entry.stem, entry))
        elif entry.is_dir():
            nbs = sorted(entry.rglob("*.ipynb"))
            nbs = [p for p in nbs if ".ipynb_checkpoints" not in p.parts]
            named = [p for p in nbs if p.stem == chapter]
            pick = named[0] if named else (nbs[0] if len(nbs) == 1 else None)
            found.append((entry.name, pick))
    return found


def grading_env(data: Path | None = None) -> dict:
    """The environment every submission runs in, the same on every grading machine.

    The GPUs are hidden: a chapter picks its profile by ``torch.cuda.is_available()``, and a
    check cell's saved verdict is the CPU profile's, so a grading machine with a GPU would
    fail correct work.  ``data`` (a CIFAR-10 ImageFolder archive) is passed on as
    ``MAE_CIFAR10_TAR``, which the chapters' data search reads first: a submission runs in a
    temporary folder, where the search would otherwise find nothing and download, or fall
    back to the photos."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1", CUDA_VISIBLE_DEVICES="")
    if data is not None:
        env["MAE_CIFAR10_TAR"] = str(Path(data).resolve())
    return env


def grade_one(student: str, path: Path | None, key, cell_timeout: float = 60,
              timeout: float | None = None, data: Path | None = None) -> Result:
    """Run one submission with nbval in a temporary folder of its own."""
    import nbformat

    t0 = time.perf_counter()
    ids = check_ids(key)
    zero = {gid: (False, "not run") for gid in ids}
    if path is None:
        return Result(student, zero, note="no notebook found in the submission")
    try:
        sub = nbformat.read(str(path), as_version=4)
        if not isinstance(sub.get("cells"), list):
            raise ValueError("no cells")
    except Exception as exc:  # any unreadable file: JSON, encoding, schema
        kind = type(exc).__name__
        return Result(student, zero, note=f"not a notebook ({kind}: {str(exc)[:120]})")
    flags = package_calls(sub)
    nb, numbers, missing = grading_notebook(sub, key)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    if timeout is None:
        timeout = cell_timeout * max(n_code, 1) + 120
    with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
        tmp = Path(tmp)
        nb_path = tmp / "submission.ipynb"
        nbformat.write(nb, str(nb_path))
        (tmp / "pytest.ini").write_text("[pytest]\naddopts =\n")
        env = grading_env(data)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout}",
               "--junitxml", str(tmp / "report.xml"), "-c", str(tmp / "pytest.ini"),
               "--rootdir", str(tmp), str(nb_path)]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        note = ""
        try:
            log = proc.communicate(timeout=timeout)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            log, note = "", f"stopped after {timeout:.0f} s"
        verdicts = {}
        if (tmp / "report.xml").is_file():
            try:
                verdicts = _junit_verdicts(tmp / "report.xml")
            except ET.ParseError:
                pass
        if not verdicts and not note:
            tail = log.strip().split("\n")[-1:] or ["no report"]
            note = f"nbval did not run the notebook ({tail[0][:160]})"
    exercise = _exercise_for(key)
    checks = {}
    for gid in ids:
        ok, message = verdicts.get(numbers.get(gid), (False, note or "not run"))
        if exercise.get(gid) in missing:
            ok, message = False, f"the exercise cell {exercise[gid]} is missing"
        checks[gid] = (ok, message)
    return Result(student, checks, flags, note=note if not verdicts else "",
                  seconds=time.perf_counter() - t0)


def grade(folder: Path, key_path: Path, out_csv: Path, jobs: int | None = None,
          cell_timeout: float = 60, timeout: float | None = None,
          summary_path: Path | None = None, quiet: bool = False,
          data: Path | None = None) -> list[Result]:
    """Grade every submission in ``folder`` against chapter ``key_path``; write the CSV and
    a readable summary next to it."""
    import nbformat

    key = nbformat.read(str(key_path), as_version=4)
    subs = submissions(folder, key_path.stem)
    jobs = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(
            lambda s: grade_one(s[0], s[1], key, cell_timeout, timeout, data), subs))
    ids = check_ids(key)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "passed", "total", *ids, "flags", "first_failure"])
        for r in results:
            writer.writerow([r.student, r.passed, len(ids),
                             *("pass" if r.checks[g][0] else "fail" for g in ids),
                             "; ".join(r.flags), r.first_failure()])
    text = summary(results, ids, key_path.stem)
    (summary_path or out_csv.with_suffix(".txt")).write_text(text)
    if not quiet:
        print(text)
    return results


def summary(results: list[Result], ids: list[str], chapter: str) -> str:
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
        lines += ["", "uses the package's function instead of its own (read these):"]
        lines += [f"  {r.student}: {'; '.join(r.flags)}" for r in flagged]
    return "\n".join(lines) + "\n"
