"""Classroom assignments from the book's chapters: generate student notebooks, grade them.

    python -m mae_from_scratch.assignments annotate            # nbgrader metadata on the chapters
    python -m mae_from_scratch.assignments generate --out assignments
    python -m mae_from_scratch.assignments generate --out assignments --check
    python -m mae_from_scratch.assignments grade SUBMISSIONS_DIR --out grades.csv
    python -m mae_from_scratch.assignments grade SUBMISSIONS_DIR --data cifar10-jpeg.tar.gz

A chapter (``notebooks/NN_name.ipynb``, listed in ``_toc.yml``) is its own answer key:

- an *exercise cell* holds its reference solution between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; the next code cell is its *check cell* (asserts);
- a *written answer* is a markdown cell that starts with ``MODEL_ANSWER`` (a MyST dropdown
  holding the model answer, after the question's cell), graded by hand;
- a check cell may hold ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``: asserts
  that the student version does not show (they catch answers hard-coded to the visible check);
- a cell whose first line is ``# NBVAL_CHECK_OUTPUT`` is checked against its saved output.

``annotate`` writes nbgrader's cell metadata (``grade_id`` on every exercise and check cell),
so ``nbgrader generate_assignment`` works on the chapters too.  ``generate`` writes the
student notebooks: solutions replaced by ``raise NotImplementedError()``, hidden tests
removed, outputs cleared except those nbval compares, and the Colab install cell pinned to
the ref set under ``assignments:`` in ``_config.yml``.  ``grade`` runs nbval on every
submission, in a temporary copy of its own, with the instructor's check cells (hidden tests
included) put back by ``grade_id``, and writes one CSV row per student.  Every submission
runs with the GPUs hidden, so the chapters take the CPU profile their saved verdicts come
from on any grading machine, and ``--data`` (or ``$MAE_CIFAR10_TAR``) hands chapters 8 and 9
the CIFAR-10 archive.

The grading is formative, not tamper-proof: solutions and checks are public, and a
student's code runs in the same kernel before the checks do.
"""

from __future__ import annotations

import argparse
import ast
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

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
ANSWER_STUB = "YOUR ANSWER HERE"
# A written answer's cell: a MyST dropdown (folded in the book) holding the model answer.
MODEL_ANSWER = "```{admonition} A model answer"
CHAPTER_RE = re.compile(r"^notebooks/(\d\d_[A-Za-z0-9_]+?)(?:\.ipynb)?$")
PACKAGE_NAMES = ("mae_from_scratch", "mfs")
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# The book: chapters and settings


def find_book(start: Path | None = None) -> Path:
    """The folder holding ``_toc.yml``: ``start`` (default: the working directory) or above,
    else the repository this module was installed from."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    if (ROOT / "_toc.yml").is_file():
        return ROOT
    raise SystemExit("no _toc.yml found: run this from the book's repository (or pass --book)")


def _toc_files(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("file"), str):
            found.append(node["file"])
        for value in node.values():
            found += _toc_files(value)
    elif isinstance(node, list):
        for value in node:
            found += _toc_files(value)
    return found


def chapters(book: Path) -> list[Path]:
    """Every ``notebooks/NN_name.ipynb`` listed in ``_toc.yml``, in the book's order."""
    import yaml

    toc = yaml.safe_load((book / "_toc.yml").read_text())
    paths = []
    for entry in _toc_files(toc):
        match = CHAPTER_RE.match(entry.strip())
        path = book / "notebooks" / f"{match.group(1)}.ipynb" if match else None
        if path is not None and path.is_file() and path not in paths:
            paths.append(path)
    return paths


@dataclass
class Settings:
    url: str  # https://github.com/OWNER/REPO
    ref: str  # the tag or commit a class's notebooks install
    folder: str  # where the student notebooks are committed
    branch: str = "main"  # the branch they are committed on, which their Colab links open


def settings(book: Path) -> Settings:
    import yaml

    config = yaml.safe_load((book / "_config.yml").read_text())
    repo = config["repository"]
    own = config.get("assignments") or {}
    return Settings(
        url=repo["url"].rstrip("/"),
        ref=str(own.get("ref") or repo.get("branch", "main")),
        folder=str(own.get("folder", "assignments")),
        branch=str(repo.get("branch", "main")),
    )


# --------------------------------------------------------------------------------------
# Cells


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


# --------------------------------------------------------------------------------------
# annotate: nbgrader metadata


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


# --------------------------------------------------------------------------------------
# generate: student notebooks

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
    for cell in out.cells:
        cell.source = student_source(cell)
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
    out.metadata["mae_assignment"] = {"chapter": Path(name).stem, "ref": s.ref}
    return out


def generate(book: Path, out_dir: Path, check: bool = False,
             only: list[str] | None = None) -> list[str]:
    """Write (or, with ``check``, compare) one student notebook per chapter (or per chapter
    named in ``only``).  Returns the names written, or with ``check`` those missing or out
    of date."""
    import nbformat

    s = settings(book)
    names = []
    for path in chapters(book):
        if only is not None and path.stem not in only:
            continue
        nb = nbformat.read(path, as_version=4)
        text = nbformat.writes(student_notebook(nb, s, path.name)) + "\n"
        target = out_dir / path.name
        if check:
            if not target.is_file() or target.read_text() != text:
                names.append(path.name)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
        names.append(path.name)
    return names


# --------------------------------------------------------------------------------------
# grade


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


# --------------------------------------------------------------------------------------
# command line


def _chapter_path(book: Path, name: str) -> Path:
    for path in chapters(book):
        if path.stem == name or path.stem.split("_", 1)[0] == name.zfill(2):
            return path
    raise SystemExit(f"no chapter {name!r} in _toc.yml")


def _selected(book: Path, names: list[str]) -> list[Path]:
    return [_chapter_path(book, n) for n in names] if names else chapters(book)


def _guess_chapter(book: Path, folder: Path) -> Path:
    import json

    names = {p.stem for p in chapters(book)}
    for path in sorted(folder.rglob("*")):
        if path.stem in names:
            return book / "notebooks" / f"{path.stem}.ipynb"
        if path.suffix == ".ipynb":
            try:
                meta = json.loads(path.read_text())["metadata"]["mae_assignment"]
                return _chapter_path(book, meta["chapter"])
            except Exception:
                continue
    raise SystemExit("cannot tell which chapter the submissions are: pass --chapter NN_name")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mae_from_scratch.assignments",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--book", type=Path, default=None, help="the book's folder (_toc.yml)")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("annotate", help="write nbgrader metadata into the chapters")
    a.add_argument("chapters", nargs="*", help="NN_name or NN (default: every chapter)")
    a.add_argument("--check", action="store_true", help="only report chapters that lack it")
    g = sub.add_parser("generate", help="write the student notebooks")
    g.add_argument("--out", type=Path, default=None, help="folder (default: assignments:)")
    g.add_argument("chapters", nargs="*", help="NN_name or NN (default: every chapter)")
    g.add_argument("--check", action="store_true", help="exit 1 if they are out of date")
    r = sub.add_parser("grade", help="grade a folder of submissions with nbval")
    r.add_argument("submissions", type=Path)
    r.add_argument("--out", type=Path, default=Path("grades.csv"))
    r.add_argument("--chapter", default=None, help="NN_name or NN (default: guessed)")
    r.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    r.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell")
    r.add_argument("--timeout", type=float, default=None, help="seconds per notebook")
    r.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 as an ImageFolder .tar.gz, for chapters 8 and 9 (default: "
                        "$MAE_CIFAR10_TAR; without either they fall back to the photos)")
    args = ap.parse_args(argv)
    if args.command == "grade" and args.data is not None and not args.data.is_file():
        ap.error(f"--data {args.data}: no such file (a CIFAR-10 ImageFolder .tar.gz)")
    book = args.book.resolve() if args.book else find_book()

    if args.command == "annotate":
        import nbformat

        changed = []
        for path in _selected(book, args.chapters):
            nb = nbformat.read(path, as_version=4)
            if annotate_notebook(nb):
                changed.append(path.name)
                if not args.check:
                    nbformat.write(nb, path)
        for name in changed:
            print(("lacks nbgrader metadata: " if args.check else "annotated ") + name)
        return 1 if (args.check and changed) else 0
    if args.command == "generate":
        out = args.out or book / settings(book).folder
        names = generate(book, out, check=args.check,
                         only=[p.stem for p in _selected(book, args.chapters)])
        if args.check:
            for name in names:
                print(f"out of date: {out / name} (run generate --out {out})")
            return 1 if names else 0
        print(f"wrote {len(names)} student notebooks to {out}")
        return 0
    key = (_chapter_path(book, args.chapter) if args.chapter
           else _guess_chapter(book, args.submissions))
    t0 = time.perf_counter()
    grade(args.submissions, key, args.out, jobs=args.jobs, cell_timeout=args.cell_timeout,
          timeout=args.timeout, data=args.data)
    print(f"graded in {time.perf_counter() - t0:.0f} s: {args.out}, "
          f"{args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
