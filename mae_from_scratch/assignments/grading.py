"""Grading: every submission of a chapter runs with nbval in a temporary copy of its own,
with the instructor's check cells (hidden tests included) put back by ``grade_id``; the
verdicts become one CSV row per student (the gradebook) and a readable summary.

Every submission runs with the GPUs hidden, so the chapters take the CPU profile their saved
verdicts come from on any grading machine.  The grading is formative, not tamper-proof:
solutions and checks are public, and a student's code runs in the same kernel before the
checks do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .checks import exercise_of, check_ids, grading_notebook
from . import gradebook
from .gradebook import check_out
from .submissions import decide_chapter, find


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


def grading_env(data: Path | None = None, home: Path | None = None,
                run: str | None = None) -> dict:
    """The environment every submission runs in, the same on every grading machine.

    The GPUs are hidden: a chapter picks its profile by ``torch.cuda.is_available()``, and a
    check cell's saved verdict is the CPU profile's, so a grading machine with a GPU would
    fail correct work.  ``data`` (a CIFAR-10 ImageFolder archive) is passed on as
    ``MAE_CIFAR10_TAR``, which the chapters' data search reads first: a submission runs in a
    temporary folder, where the search would otherwise find nothing and download, or fall
    back to the photos.  ``home`` is the run's own ``HOME``; the data cache stays the
    grading account's, so an archive is extracted (or a download made) once for the class.
    ``run`` marks every process of the run, so that none outlives it."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1", CUDA_VISIBLE_DEVICES="")
    if home is not None:
        from ..archives import data_cache_dir

        env["MAE_DATA_CACHE"] = str(data_cache_dir().resolve())  # read before HOME changes
        env.update(HOME=str(home), USERPROFILE=str(home), MPLCONFIGDIR=str(home / ".matplotlib"))
    if data is not None:
        env["MAE_CIFAR10_TAR"] = str(Path(data).resolve())
    if run is not None:
        env[RUN_MARK] = run
    return env


RUN_MARK = "MAE_GRADING_RUN"


def stop_run(run: str, pid: int | None = None) -> None:
    """Kill every process of a run: its process group, and (on Linux) any process whose
    environment carries the run's mark, which finds a child that left the group."""
    # The run was started in a session of its own, so its group id is its pid; never this
    # process's own group.
    if pid is not None and pid > 0 and pid != os.getpgrp():
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    mark = f"{RUN_MARK}={run}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone already, or another user's


def nbval_alone(args: list, env: dict) -> tuple[list, dict]:
    """``python -m pytest`` with nbval its only plugin, and its environment: whatever other
    plugins the machine has are neither loaded nor given a say, and nothing is
    assertion-rewritten (which, with no bytecode cache, cost about 2 s a run)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "nbval", "-p", "no:cacheprovider", "--assert=plain", *args]
    return cmd, dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")


def _run_nbval(nb, tmp: Path, cell_timeout: float, timeout: float, data) -> tuple:
    """One run of a grading notebook in ``tmp``: (verdicts, note, report lines)."""
    import nbformat

    work, home = tmp / "work", tmp / "home"
    work.mkdir()
    home.mkdir()
    nb_path = work / "submission.ipynb"
    nbformat.write(nb, str(nb_path))
    (tmp / "pytest.ini").write_text("[pytest]\naddopts =\n")
    run = uuid.uuid4().hex
    cmd, env = nbval_alone(["--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout}",
                            "--junitxml", str(tmp / "report.xml"), "-c", str(tmp / "pytest.ini"),
                            "--rootdir", str(work), str(nb_path)], grading_env(data, home, run))
    proc = subprocess.Popen(cmd, cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    note = ""
    try:
        log = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        stop_run(run, proc.pid)
        proc.communicate()
        log, note = "", f"stopped after {timeout:.0f} s"
    stop_run(run, proc.pid)  # children that outlived the notebook go too
    verdicts = {}
    if (tmp / "report.xml").is_file():
        try:
            verdicts = _junit_verdicts(tmp / "report.xml")
        except ET.ParseError:
            pass
    if not verdicts and not note:
        tail = log.strip().split("\n")[-1:] or ["no report"]
        note = f"nbval did not run the notebook ({tail[0][:160]})"
    report = tmp / "grader-report.jsonl"
    lines = report.read_text().splitlines() if report.is_file() else None
    return verdicts, note, lines


def _report_flags(lines, finished: bool) -> list[str]:
    """The kernel guard's flags; a report that the grader's last cell should have completed
    and did not is itself flagged."""
    import json

    flags, complete = [], False
    for line in lines or []:
        try:
            item = json.loads(line)
        except ValueError:
            flags.append("the grading report was altered")
            break
        if "flag" in item:
            flags.append(str(item["flag"]))
        complete = complete or bool(item.get("complete"))
    if finished and not complete:
        flags.append("the grading report is missing or incomplete (the notebook removed it?)")
    return flags


def grade_one(student: str, path: Path | None, key, cell_timeout: float = 60,
              timeout: float | None = None, data: Path | None = None, note: str = "",
              flags: list | None = None) -> Result:
    """Run one submission with nbval, in a temporary folder of its own with its own HOME,
    after the grader's own first cell; a run whose kernel never started is run again once."""
    import nbformat

    t0 = time.perf_counter()
    ids = check_ids(key)
    flags = list(flags or [])
    zero = {gid: (False, "not run") for gid in ids}
    if note:
        return Result(student, zero, flags, note=note)
    if path is None:
        return Result(student, zero, flags, note="no notebook found in the submission")
    try:
        sub = nbformat.read(str(path), as_version=4)
        if not isinstance(sub.get("cells"), list):
            raise ValueError("no cells")
    except Exception as exc:  # any unreadable file: JSON, encoding, schema
        kind = type(exc).__name__
        return Result(student, zero, flags, note=f"not a notebook ({kind}: {str(exc)[:120]})")
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
            tmp = Path(tmp)
            nonce = uuid.uuid4().hex[:16]
            nb, numbers, missing = grading_notebook(sub, key, nonce, str(tmp / "grader-report.jsonl"))
            n_code = sum(c.cell_type == "code" for c in nb.cells)
            limit = timeout if timeout is not None else cell_timeout * max(n_code, 1) + 120
            verdicts, run_note, lines = _run_nbval(nb, tmp, cell_timeout, limit, data)
        started = verdicts.get(numbers["grader-start"], (False, ""))[0]
        if started or attempt == 2:
            break
        flags.append("graded twice: the first time the kernel died before running any cell")
    finished = verdicts.get(numbers["grader-finish"], (False, ""))[0]
    flags += _report_flags(lines, finished)
    exercise = exercise_of(key)
    checks = {}
    for gid in ids:
        ok, message = verdicts.get(numbers.get(gid), (False, run_note or "not run"))
        if not ok and exercise.get(gid) in missing:
            message += f" (the exercise cell {exercise[gid]} is not in the notebook)"
        checks[gid] = (ok, message)
    return Result(student, checks, flags, note=run_note if not verdicts else "",
                  seconds=time.perf_counter() - t0)


def grade(folder: Path, key_path: Path, out_csv: Path, jobs: int | None = None,
          cell_timeout: float = 60, timeout: float | None = None,
          summary_path: Path | None = None, quiet: bool = False,
          data: Path | None = None, overwrite: bool = False,
          chapters_in_book: list[str] | None = None) -> list[Result]:
    """Grade every submission in ``folder`` against chapter ``key_path``; write the CSV and
    a readable summary next to it.

    Every submission is copied before any runs, and read from the copy; each runs in a
    folder of its own; the gradebook is written from the grader's memory once all are done,
    each file replaced in one step."""
    import nbformat

    summary_path = summary_path or out_csv.with_suffix(".txt")
    check_out(out_csv, folder, overwrite, summary_path)
    key = nbformat.read(str(key_path), as_version=4)
    names = chapters_in_book or [key_path.stem]
    with tempfile.TemporaryDirectory(prefix="handed_in_") as copy_dir:
        handed_in = Path(copy_dir) / folder.name
        shutil.copytree(folder, handed_in, symlinks=True)
        subs = find(handed_in, names, key_path.stem)
        decide_chapter(subs, names, key_path.stem)
        jobs = jobs or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(
                lambda s: grade_one(s.student, s.path, key, cell_timeout, timeout, data,
                                    note=s.note, flags=s.flags), subs))
    text = gradebook.write(results, check_ids(key), key_path.stem, out_csv, summary_path)
    if not quiet:
        print(text)
    return results


