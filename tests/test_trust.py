"""Grading a teacher can trust, and the commands around it honest about what they did: one
table per part, one row per case, each named by the number of the point it answers.

- Grading (1-6, 8-10): a wrong answer never scores, a student's code touches no one else's
  work, nothing is overwritten unasked, a class is graded as its own chapter, bad flags stop
  before any work.  The rows marked ``kept`` held already and stay held.  The kernel cases
  grade one class folder together, on a one-exercise cut of chapter 1 (its setup, imports,
  ``my_patchify`` and its check: seconds per notebook), plus two notebooks of the real
  chapter 3, whose checks compare with the package under other names.
- Recording (7): ``tools/record_run.py``'s two folders never mix with an older record or run.
  The fast cases stand in for the slow steps (training, the held-out pictures, the
  evaluation) with functions that write what those steps write; one slow case records twice
  with the real engine.
- Evaluation and resume (11-14): the data path evaluation reads, a resume that would change
  what defines its run, STL-10's unlabelled images and one-class data, and reports that were
  silently wrong.  Each row runs the command (``main`` in this process, or a real one where a
  signal is sent) and checks its exit, its one error line or its JSON by value.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import nbformat
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from _engine_helpers import make_cifar_like_folder, make_image_folder
from _engine_helpers import one_thread  # noqa: F401  (autouse: one torch thread in this module)
from mae_from_scratch import assignments as A
from mae_from_scratch import data as D
from mae_from_scratch import evaluate as E
from mae_from_scratch import finetune as FT
from mae_from_scratch import pretrain as P
from mae_from_scratch.assignments import grading
from mae_from_scratch.cli_checks import InputError
from mae_from_scratch.model import create_model
from mae_from_scratch.run_config import check_args, derive_settings, initial_config
from mae_from_scratch.run_config import parse_args as parse_pretrain_args
from mae_from_scratch.run_folder import check_not_overwriting, clear_old_run
from mae_from_scratch.run_info import RUN_INFO
from mae_from_scratch.training_checkpoint import load_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ('    return rearrange(imgs, "n c (h p1) (w p2) -> n (h w) (p1 p2 c)", '
            'p1=p, p2=p)\n')
WRONG = "def my_patchify(imgs, p):\n    return imgs.flatten(2).transpose(1, 2)\n"
VERDICT = "patchify and unpatchify match mae_from_scratch for p = 16, 4, 14 and 8"

def _read(path: Path):
    return nbformat.read(path, as_version=4)

def _by_id(nb, gid):
    return next(c for c in nb.cells if A.grade_id(c) == gid)

def _tiny_book(folder: Path) -> Path:
    """A book of two chapters: chapter 1 cut to one exercise, and the real chapter 3."""
    key = _read(ROOT / "notebooks" / "01_patches.ipynb")
    setup = next(c for c in key.cells if "setup" in c.metadata.get("tags", []))
    imports = nbformat.v4.new_code_cell(
        "import torch\nfrom einops import rearrange\n\n"
        "from mae_from_scratch import patchify, unpatchify")
    key.cells = [setup, imports, _by_id(key, "my_patchify"), _by_id(key, "my_patchify-check")]
    (folder / "notebooks").mkdir(parents=True)
    nbformat.write(key, folder / "notebooks" / "01_patches.ipynb")
    shutil.copy(ROOT / "notebooks" / "03_positional_embeddings.ipynb", folder / "notebooks")
    (folder / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - chapters:\n"
        "      - file: notebooks/01_patches\n      - file: notebooks/03_positional_embeddings\n")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    return folder

@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """The book, in a folder of its own (``book.parent``) that also holds the class folder,
    the gradebook, a HOME and what a submission might plant."""
    return _tiny_book(tmp_path_factory.mktemp("trust") / "book")

def _student(book: Path, chapter: str):
    return A.student_notebook(_read(book / "notebooks" / f"{chapter}.ipynb"),
                              A.settings(book), f"{chapter}.ipynb")

def _solved(book: Path, chapter: str = "01_patches"):
    key, nb = _read(book / "notebooks" / f"{chapter}.ipynb"), _student(book, chapter)
    for cell in nb.cells:
        if cell.cell_type == "code" and A.is_solution(cell):
            cell.source = _by_id(key, A.grade_id(cell)).source
    return nb

def _code(source: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(source))

def _exercise(nb, source: str):
    _by_id(nb, "my_patchify").source = textwrap.dedent(source)
    return nb

def _insert_after(nb, gid: str, *cells):
    i = next(i for i, c in enumerate(nb.cells) if A.grade_id(c) == gid)
    nb.cells[i + 1:i + 1] = list(cells)
    return nb

# --------------------------------------------------------------------------------------
# The kernel cases: one class folder of the cut chapter 1.  Each row: the student, how the
# notebook is made from a solved one, the score (of 1), a text the first failure starts
# with ("" when it passes), and texts the flags must hold (every flag must be expected).

def _copied_check(book, nb):  # 1: a pasted copy of the check, gutted, after the original
    copy_ = nbformat.from_dict(_by_id(nb, "my_patchify-check"))
    copy_.source, copy_.id = f"# NBVAL_CHECK_OUTPUT\nprint({VERDICT!r})", "pasted-below"
    return _insert_after(_exercise(nb, WRONG), "my_patchify-check", copy_)

def _pasted_above(book, nb):  # 1: the gutted copy pasted above the exercise, which is wrong
    copy_ = nbformat.from_dict(_by_id(nb, "my_patchify-check"))
    copy_.source, copy_.id = f"# NBVAL_CHECK_OUTPUT\nprint({VERDICT!r})", "pasted-above"
    i = next(i for i, c in enumerate(nb.cells) if A.grade_id(c) == "my_patchify")
    nb.cells.insert(i, copy_)
    nb.cells.insert(i, _code("def my_patchify(imgs, p):\n    return imgs\n"))
    return _exercise(nb, WRONG)

def _chapter_import(book, nb):  # 2: the chapter's own import of patchify
    return _exercise(nb, "def my_patchify(imgs, p):\n    return patchify(imgs, p)\n")

def _importlib(book, nb):  # 2: the package reached by a name text search cannot see
    return _exercise(nb, """\
        import importlib

        def my_patchify(imgs, p):
            return importlib.import_module("mae_" + "from_scratch").patchify(imgs, p)
        """)

def _bound(book, nb):  # 2: the exercise's name bound to the package's function
    return _exercise(nb, "my_patchify = patchify\n")

def _partial(book, nb):  # 2: ... or wrapped in something that is not a function
    return _exercise(nb, "import functools\n\nmy_patchify = functools.partial(patchify)\n")

def _rebinds(book, nb):  # 3: the comparison functions rebound
    return _exercise(nb, WRONG + textwrap.dedent("""\

        torch.equal = lambda *a, **k: True
        torch.testing.assert_close = lambda *a, **k: None
        """))

def _transformer(book, nb):  # 3: an input transformer that swaps the check for its verdict
    return _exercise(nb, WRONG + textwrap.dedent(f"""\

        def _swap(lines):
            if any("assert_close" in line for line in lines):
                return ["print({VERDICT!r})\\n"]
            return lines

        get_ipython().input_transformers_cleanup.append(_swap)
        """))

def _custom_exc(book, nb):  # 3: a custom exception handler that swallows the failure
    return _exercise(nb, WRONG + textwrap.dedent(f"""\

        get_ipython().set_custom_exc(
            (AssertionError,), lambda *a, **k: print({VERDICT!r}))
        """))

def _hides_torch(book, nb):  # 3: a name of the notebook's that hides the torch module
    return _exercise(nb, WRONG + textwrap.dedent("""\

        import types

        torch = types.SimpleNamespace(
            Generator=__import__("torch").Generator, rand=__import__("torch").rand,
            testing=types.SimpleNamespace(assert_close=lambda *a, **k: None))
        """))

def _writes_home(book, nb):  # 4: writes into HOME and the folder it runs in
    return _insert_after(nb, "my_patchify-check", _code("""\
        from pathlib import Path

        (Path.home() / "planted.txt").write_text("x")
        Path("planted.txt").write_text("x")
        """))

def _overwrites(book, nb):  # 4: overwrites a classmate's submission, by its absolute path
    victim = book.parent / "class" / "victim.ipynb"
    return _insert_after(nb, "my_patchify-check",
                         _code(f"open({str(victim)!r}, 'w').write('{{}}')\n"))

def _detached(book, nb):  # 4: a detached process that outlives its notebook
    gradebook = book.parent / "out" / "grades.csv"
    planted, started = book.parent / "late.txt", book.parent / "detached-started.txt"
    # Detached by start_new_session (a session of its own: out of the run's process group).
    script = (f"import time\nopen({str(started)!r}, 'w').write(repr(time.time()))\ntime.sleep(8)\n"
              f"open({str(planted)!r}, 'w').write('x')\n"
              f"open({str(gradebook)!r}, 'w').write('student,passed\\nlate,1\\n')\n")
    return _insert_after(nb, "my_patchify-check", _code(f"""\
        import subprocess, sys

        subprocess.Popen([sys.executable, "-c", {script!r}], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        """))

def _retyped(book, nb):  # 8: the exercise cell deleted, its code typed into a new cell
    i = next(i for i, c in enumerate(nb.cells) if A.grade_id(c) == "my_patchify")
    source = nb.cells[i].source
    nb.cells[i] = _code(source.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", ""))
    return nb

def _deleted_exercise(book, nb):  # kept: no exercise at all
    nb.cells = [c for c in nb.cells if A.grade_id(c) != "my_patchify"]
    return nb

def _gutted(book, nb):  # kept: the check edited to print its verdict
    _by_id(nb, "my_patchify-check").source = f"# NBVAL_CHECK_OUTPUT\nprint({VERDICT!r})"
    return _exercise(nb, WRONG)

def _deleted_check(book, nb):  # kept: the check deleted
    nb.cells = [c for c in nb.cells if A.grade_id(c) != "my_patchify-check"]
    return nb

def _asks_input(book, nb):  # kept: input() in the exercise
    return _exercise(nb, "name = input('name? ')\n\n\ndef my_patchify(imgs, p):\n"
                         "    return imgs\n")

def _exits(book, nb):  # kept: sys.exit in the exercise
    return _exercise(nb, "import sys\n\nsys.exit(0)\n")

def _loops(book, nb):  # kept: an endless loop
    return _exercise(nb, "def my_patchify(imgs, p):\n    while True:\n        pass\n")

KERNEL_CASES = [
    # student, make, passed, first failure starts with, flags hold
    ("solved", lambda b, nb: nb, 1, "", []),
    ("victim", lambda b, nb: nb, 1, "", []),
    ("1-copied-check", _copied_check, 0, "my_patchify-check: AssertionError", []),
    ("1-copied-check-above", _pasted_above, 0, "my_patchify-check: AssertionError", []),
    ("2-chapter-import", _chapter_import, 1, "",
     ["my_patchify calls the package's own mae_from_scratch.patching.patchify"]),
    ("2-importlib", _importlib, 1, "",
     ["my_patchify calls the package's own mae_from_scratch.patching.patchify"]),
    ("2-name-bound", _bound, 1, "",
     ["my_patchify is the package's own mae_from_scratch.patching.patchify"]),
    ("2-partial", _partial, 1, "", ["my_patchify is a partial, not a function or class"]),
    ("3-rebinds-comparisons", _rebinds, 0, "my_patchify-check: AssertionError",
     ["torch.equal was rebound", "torch.testing.assert_close was rebound"]),
    ("3-input-transformer", _transformer, 0, "my_patchify-check: AssertionError",
     ["changed IPython's cleanup_transforms"]),
    ("3-custom-exception-handler", _custom_exc, 0, "my_patchify-check: AssertionError",
     ["set a custom exception handler"]),
    ("3-hides-torch", _hides_torch, 0, "my_patchify-check: AssertionError",
     ["the notebook's 'torch' hides the real one"]),
    ("4-writes-home", _writes_home, 1, "", []),
    ("4-overwrites-a-classmate", _overwrites, 1, "", []),
    ("4-detached-process", _detached, 1, "", []),
    ("8-retyped-in-a-new-cell", _retyped, 1, "", []),
    ("kept-exercise-deleted", _deleted_exercise, 0,
     "my_patchify-check: NameError: name 'my_patchify' is not defined (the exercise cell", []),
    ("kept-check-gutted", _gutted, 0, "my_patchify-check: AssertionError", []),
    ("kept-check-deleted", _deleted_check, 1, "", []),
    ("kept-input", _asks_input, 0, "my_patchify-check:", []),
    ("kept-sys-exit", _exits, 0, "my_patchify-check:", []),
    ("kept-endless-loop", _loops, 0, "my_patchify-check: Timeout of 20 seconds", []),
]

@pytest.fixture(scope="module")
def graded(book, tmp_path_factory, monkeypatch_module):
    """The class folder, graded once: (csv rows, results, what the test looks at after)."""
    home = book.parent / "home"  # the grading account's HOME, to look for planted files in
    home.mkdir()
    monkeypatch_module.setenv("HOME", str(home))
    monkeypatch_module.setenv("MAE_DATA_CACHE", str(book.parent / "cache"))
    folder = book.parent / "class"
    folder.mkdir()
    for student, make, *_ in KERNEL_CASES:
        nbformat.write(make(book, _solved(book)), folder / f"{student}.ipynb")
    victim = (folder / "victim.ipynb").read_bytes()
    out = book.parent / "out" / "grades.csv"
    results = A.grade(folder, book / "notebooks" / "01_patches.ipynb", out, jobs=2,
                      cell_timeout=20, quiet=True, chapters_in_book=["01_patches"])
    written = out.read_text()
    # The detached process started (it wrote down when) and would write 8 s later: wait
    # until then, with a second to spare, if the other submissions took less.
    started = float((book.parent / "detached-started.txt").read_text())
    time.sleep(max(0.0, started + 9 - time.time()))
    with out.open() as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    return rows, {r.student: r for r in results}, dict(
        home=home, folder=folder, victim=victim, written=written, out=out,
        late=book.parent / "late.txt")

@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp

@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("student,make,passed,failure,flags", KERNEL_CASES,
                         ids=[c[0] for c in KERNEL_CASES])
def test_kernel_case(graded, student, make, passed, failure, flags):
    rows, results, _ = graded
    result = results[student]
    assert result.passed == passed, result.checks
    assert result.first_failure().startswith(failure), result.first_failure()
    for text in flags:
        assert any(text in f for f in result.flags), (text, result.flags)
    assert len(result.flags) == len(flags), result.flags  # nothing else flagged
    assert rows[student]["passed"] == str(passed)

@pytest.mark.slow
@pytest.mark.notebooks
def test_4_no_submission_reaches_outside_its_own_run(graded):
    rows, results, seen = graded
    assert not (seen["home"] / "planted.txt").exists()  # its HOME was its own
    assert not list(seen["folder"].glob("planted.txt"))
    # The classmate's file was overwritten on disk (no sandbox), but graded as handed in.
    assert (seen["folder"] / "victim.ipynb").read_bytes() == b"{}" != seen["victim"]
    assert results["victim"].passed == 1
    # The detached process was killed with its run: the gradebook is the grader's.
    assert not seen["late"].exists()
    assert seen["out"].read_text() == seen["written"]
    assert "late" not in rows

# --------------------------------------------------------------------------------------
# 2, on the real chapter 3: its tables under other names (sincos_1d) and a hard-coded
# answer that the hidden tests catch (kept).

@pytest.mark.slow
@pytest.mark.notebooks
def test_2_chapter_3_aliases_are_flagged_and_hard_coded_tables_fail(book, tmp_path):
    chapter = "03_positional_embeddings"
    alias = _solved(book, chapter)
    _by_id(alias, "get_1d_sincos_pos_embed").source = (
        "def get_1d_sincos_pos_embed(embed_dim, pos):\n    return sincos_1d(embed_dim, pos)\n")
    hard_coded = _solved(book, chapter)
    _by_id(hard_coded, "get_2d_sincos_pos_embed").source = textwrap.dedent("""\
        def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
            if embed_dim == 768:
                return pe_2d_cls.clone()  # the worked example's table
            return torch.zeros(grid_size * grid_size, embed_dim)
        """)
    folder = tmp_path / "class"
    folder.mkdir()
    nbformat.write(alias, folder / "alias.ipynb")
    nbformat.write(hard_coded, folder / "hard_coded.ipynb")
    results = {r.student: r for r in A.grade(
        folder, book / "notebooks" / f"{chapter}.ipynb", tmp_path / "grades.csv", jobs=2,
        quiet=True, chapters_in_book=["01_patches", chapter])}
    assert results["alias"].flags == [
        "get_1d_sincos_pos_embed-check: get_1d_sincos_pos_embed calls the package's own "
        "mae_from_scratch.pos_embed.get_1d_sincos_pos_embed"]
    assert results["alias"].passed == results["alias"].checks.__len__()
    ok, message = results["hard_coded"].checks["get_2d_sincos_pos_embed-check"]
    assert not ok and message.startswith("AssertionError"), message
    assert results["hard_coded"].flags == []

# --------------------------------------------------------------------------------------
# 10: a kernel that dies before replying is run again, once, and flagged.

def test_10_a_run_that_never_started_is_graded_again_once(book, monkeypatch):
    calls = []

    def fake_run(nb, tmp, cell_timeout, timeout, data):
        calls.append(nb)
        if len(calls) == 1:  # the kernel died before running any cell
            return {}, "nbval did not run the notebook (Kernel died before replying)", None
        n = sum(c.cell_type == "code" for c in nb.cells)
        return {i: (True, "") for i in range(n)}, "", ['{"complete": true, "checks_seen": 1}']

    monkeypatch.setattr(grading, "_run_nbval", fake_run)
    key = _read(book / "notebooks" / "01_patches.ipynb")
    path = book.parent / "retry.ipynb"
    nbformat.write(_solved(book), path)
    result = A.grade_one("r", path, key)
    assert len(calls) == 2 and result.passed == 1
    assert result.flags == ["graded twice: the first time the kernel died before running any cell"]
    calls.clear()
    monkeypatch.setattr(grading, "_run_nbval", lambda *a: (calls.append(1), ({}, "x", None))[1])
    assert A.grade_one("r", path, key).passed == 0 and len(calls) == 2  # never a third time

# --------------------------------------------------------------------------------------
# Without a kernel: the book's folders, the gradebook, the class's chapter, the flags.

def _nb_of(chapter: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["mae_assignment"] = {"chapter": chapter, "ref": "x"}
    return nb

def _folder(tmp_path: Path, files: dict) -> Path:
    folder = tmp_path / "subs"
    for name, nb in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / name)
    folder.mkdir(exist_ok=True)
    return folder

@pytest.fixture
def no_grading(monkeypatch):
    """The grading itself must not start: each of these stops before it."""
    def refuse(*a, **k):
        raise AssertionError("grading started")
    monkeypatch.setattr(grading, "grade_one", refuse)

def _main(book, *argv):
    """(exit status or message, stdout) of the command line; SystemExit's text included."""
    try:
        return A.main(["--book", str(book), *map(str, argv)]), None
    except SystemExit as e:
        return e.code, None

NO_KERNEL_CASES = {
    # 5: student notebooks never replace an answer key
    "5-generate-into-the-chapters": (
        lambda b, t: ["generate", "--out", b / "notebooks"],
        "01_patches.ipynb there is an answer key"),
    "5-generate-into-a-folder-with-a-key": (
        lambda b, t: (shutil.copytree(b / "notebooks", t / "keys"), ["generate", "--out", t / "keys"])[1],
        "is an answer key (it holds solutions)"),
    # 6: the gradebook
    "6-existing-gradebook": (
        lambda b, t: ((t / "g.csv").write_text("student\n"),
                      ["grade", _folder(t, {"a.ipynb": _nb_of("01_patches")}), "--out", t / "g.csv"])[1],
        "g.csv: exists (an earlier gradebook?); pass --overwrite"),
    "6-existing-summary": (
        lambda b, t: ((t / "g.txt").write_text("x"),
                      ["grade", _folder(t, {"a.ipynb": _nb_of("01_patches")}), "--out", t / "g.csv"])[1],
        "g.txt: exists"),
    "6-out-a-text-file": (
        lambda b, t: ["grade", _folder(t, {"a.ipynb": _nb_of("01_patches")}), "--out", t / "grades.txt"],
        "name a .csv file (the summary is written beside it, as grades.txt)"),
    "6-out-inside-the-submissions": (
        lambda b, t: ["grade", _folder(t, {"a.ipynb": _nb_of("01_patches")}), "--out", t / "subs" / "g.csv"],
        "inside the submissions folder"),
    "6-out-a-folder": (
        lambda b, t: ["grade", _folder(t, {"a.ipynb": _nb_of("01_patches")}), "--out", t],
        "is a folder; name the gradebook's .csv file"),
    # 8: one class, one chapter
    "8-a-stray-notebook-of-another-chapter": (
        lambda b, t: ["grade", _folder(t, {"bob.ipynb": _nb_of("03_positional_embeddings"),
                                           "carol.ipynb": _nb_of("03_positional_embeddings"),
                                           "alice/01_patches.ipynb": _nb_of("01_patches")})],
        "the submissions are of different chapters: 03_positional_embeddings (bob, carol); "
        "01_patches (alice)"),
    "8-no-chapter-named": (
        lambda b, t: ["grade", _folder(t, {"x.ipynb": nbformat.v4.new_notebook()})],
        "cannot tell which chapter the submissions are"),
    # 9: flags checked before any grading, one line each
    "9-timeout-0": (lambda b, t: ["grade", t, "--timeout", "0"], "--timeout 0.0: seconds, a number above 0"),
    "9-timeout-negative": (lambda b, t: ["grade", t, "--timeout", "-5"], "--timeout -5.0: seconds"),
    "9-timeout-nan": (lambda b, t: ["grade", t, "--timeout", "nan"], "--timeout nan: seconds"),
    "9-cell-timeout-0": (lambda b, t: ["grade", t, "--cell-timeout", "0"], "--cell-timeout 0.0: seconds"),
    "9-cell-timeout-negative": (lambda b, t: ["grade", t, "--cell-timeout", "-1"], "--cell-timeout -1.0"),
    "9-jobs-negative": (lambda b, t: ["grade", t, "--jobs", "-1"], "--jobs -1: at least 1"),
    "9-missing-folder": (lambda b, t: ["grade", t / "nowhere"], "nowhere: no such folder"),
    "9-empty-folder": (lambda b, t: ["grade", _folder(t, {}), "--chapter", "01"], "subs: no submissions in it"),
    "9-unknown-chapter": (lambda b, t: ["grade", t, "--chapter", "99"], "no chapter '99' in _toc.yml"),
}

@pytest.mark.parametrize("case", sorted(NO_KERNEL_CASES))
def test_refused_in_one_line_before_any_work(book, tmp_path, no_grading, case):
    argv, expected = NO_KERNEL_CASES[case]
    keys = {p.name: p.read_bytes() for p in (book / "notebooks").iterdir()}
    code, _ = _main(book, *argv(book, tmp_path))
    assert isinstance(code, str) and "\n" not in code, code
    assert expected in code, code
    assert {p.name: p.read_bytes() for p in (book / "notebooks").iterdir()} == keys

def test_9_a_wrong_book_is_one_line(tmp_path):
    code, _ = _main(tmp_path / "nobook", "grade", tmp_path)
    assert code == f"--book {tmp_path / 'nobook'}: not a book folder (it needs _toc.yml and notebooks/)"

def test_6_the_default_gradebook_is_named_after_the_chapter(book, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(grading, "grade", lambda folder, key, out, **kw: seen.update(out=out, key=key))
    monkeypatch.chdir(tmp_path)
    folder = _folder(tmp_path, {"a.ipynb": _nb_of("01_patches")})
    assert A.main(["--book", str(book), "grade", str(folder)]) == 0
    assert seen["out"] == Path("grades-01_patches.csv") and seen["key"].stem == "01_patches"
    Path("grades-01_patches.csv").write_text("x")  # there now: refused, then allowed
    with pytest.raises(SystemExit, match="pass --overwrite"):
        A.main(["--book", str(book), "grade", str(folder)])
    assert A.main(["--book", str(book), "grade", str(folder), "--overwrite"]) == 0

def test_6_the_gradebook_is_replaced_in_one_step(tmp_path, monkeypatch):
    """Written after all the grading, from memory: a failure while writing leaves the old
    gradebook whole."""
    from mae_from_scratch.assignments import gradebook

    out = tmp_path / "g.csv"
    out.write_text("old\n")
    result = A.Result("a", {"x-check": (True, "")})
    gradebook.write([result], ["x-check"], "01_patches", out, tmp_path / "g.txt")
    assert out.read_text().splitlines()[1] == "a,1,1,pass,,"
    monkeypatch.setattr(gradebook.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        gradebook.write([], ["x-check"], "01_patches", out, tmp_path / "g.txt")
    assert out.read_text().splitlines()[1] == "a,1,1,pass,,"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv", "g.txt"]  # no leftovers

def test_8_chapter_99_is_that_notebooks_note_and_the_class_goes_on(book, tmp_path):
    folder = _folder(tmp_path, {"a.ipynb": _nb_of("01_patches"), "b.ipynb": _nb_of("01_patches"),
                                "odd.ipynb": _nb_of("99_nothing")})
    subs = A.find(folder, ["01_patches", "03_positional_embeddings"])
    assert A.decide_chapter(subs, ["01_patches", "03_positional_embeddings"], None) == "01_patches"
    notes = {s.student: s.note for s in subs}
    assert notes == {"a": "", "b": "",
                     "odd": "its metadata names chapter '99_nothing', which this book does not have"}

def test_8_with_chapter_given_another_chapters_notebook_scores_0_with_why(tmp_path):
    folder = _folder(tmp_path, {"a.ipynb": _nb_of("01_patches"),
                                "b.ipynb": _nb_of("03_positional_embeddings")})
    names = ["01_patches", "03_positional_embeddings"]
    subs = A.find(folder, names, "03_positional_embeddings")
    A.decide_chapter(subs, names, "03_positional_embeddings")
    assert [s.note for s in subs] == [
        "this is chapter 01_patches's notebook, not 03_positional_embeddings's: not graded", ""]

def test_8_a_folder_of_drafts_grades_the_newest_and_says_so(tmp_path):
    folder = _folder(tmp_path, {"alice/draft.ipynb": _nb_of("01_patches"),
                                "alice/final.ipynb": _nb_of("01_patches"),
                                "alice/.ipynb_checkpoints/final-checkpoint.ipynb": _nb_of("01_patches"),
                                "bob/01_patches.ipynb": _nb_of("01_patches"),
                                "bob/scratch.ipynb": _nb_of("01_patches")})
    now = time.time()
    os.utime(folder / "alice" / "draft.ipynb", (now - 60, now - 60))
    alice, bob = A.find(folder, ["01_patches"])
    assert alice.path.name == "final.ipynb"
    assert alice.flags == ["2 notebooks: graded final.ipynb, the newest (also there: draft.ipynb)"]
    assert bob.path.name == "01_patches.ipynb" and bob.flags == []  # named after the chapter

def test_the_instructors_page_says_what_grading_guarantees():
    page = (ROOT / "book" / "instructors.md").read_text()
    for text in ("What the grader guarantees", "What it does not", "no sandbox"):
        assert text in page, text

# ======================================================================================
# 7: recording a run (tools/record_run.py)
# ======================================================================================

RECORD = {"run.json", "log.txt", "log_steps.jsonl", "mask_ratios.png", "attention.npz", "eval.json",
          "model-fp16.pth", "recording.json"}

@pytest.fixture(scope="module")
def rr():
    spec = importlib.util.spec_from_file_location("record_run_under_test", ROOT / "tools" / "record_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def tree(root: Path, skip=()) -> dict:
    """Every file and folder under ``root`` (outside ``skip``): its bytes and mtime, or None for a folder."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames:
            found[(here / name).relative_to(root).as_posix()] = None
        for name in filenames:
            p = here / name
            found[p.relative_to(root).as_posix()] = (p.read_bytes(), p.stat().st_mtime_ns)
    return found

def files(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

@pytest.fixture
def engine(rr, monkeypatch):
    """The slow steps replaced; the list of commands the stand-in engine was given."""
    commands = []

    def pretrain(argv):
        commands.append(list(argv))
        args = parse_pretrain_args(argv)
        work, epochs, tag = Path(args.output_dir), args.epochs, f"run {len(commands)}"
        check_not_overwriting(args, work)  # the engine's rule, and its clearing below
        work.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            clear_old_run(work, checkpoints=True)
        (work / "run.json").write_text(json.dumps({"tag": tag, "epochs_run": epochs, "finished": True}))
        (work / "log.txt").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0}) + "\n"
                                              for e in range(epochs)))
        (work / "log_steps.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 0.1}) + "\n"
                                                      for s in range(1, 4 * epochs + 1)))
        (work / "recon").mkdir(exist_ok=True)
        for e in range(epochs + 1):
            (work / "recon" / f"epoch-{e:04d}.png").write_text(f"{tag}, epoch {e}")
            (work / f"checkpoint-{e}.pth").write_text(tag)
        (work / "checkpoint-last.pth").write_text(tag)
        return SimpleNamespace(model=create_model(args.model, norm_pix_loss=True))

    def heldout_images(dataset, data_path, n, input_size, mean, std, seed=0):
        return torch.randn(2, 3, input_size, input_size), [0, 1], ["a/0.png", "b/1.png"]

    def evaluate_encoders(model, args, device, out, log):
        rr.write_json(out / "eval.json", {"trained_cls": {"knn": 0.5}})

    def no_probe(*args, **kwargs):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(rr, "pretrain", pretrain)
    monkeypatch.setattr(rr, "heldout_images", heldout_images)
    monkeypatch.setattr(rr, "evaluate_encoders", evaluate_encoders)
    monkeypatch.setattr(rr, "train_step_images_per_s", no_probe)
    return commands

def record(rr, tmp_path, out, work, *flags, epochs=1):
    return rr.main(["--data_path", str(tmp_path / "data"), "--preset", "cpu_smoke", "--epochs", str(epochs),
                    "--recon_every", "1", "--max_images", "64", "--device", "cpu", "--compile", "off",
                    "--out", str(out), "--work", str(work), *flags])

def refusal(rr, argv) -> str:
    with pytest.raises(SystemExit) as e:
        rr.main(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code  # one line, not a traceback
    return e.value.code

def test_an_out_that_holds_a_record_is_refused_before_anything_runs(rr, engine, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert record(rr, tmp_path, out, work, epochs=3) == 0
    assert "--overwrite" not in engine[0]  # nothing to replace: the engine is not told to
    before = tree(tmp_path)
    # --budget_min: the probe (which would fail here) comes after the check, as does training.
    msg = refusal(rr, ["--data_path", str(tmp_path / "data"), "--budget_min", "1", "--max_images", "64",
                       "--out", str(out), "--work", str(tmp_path / "other-work")])
    assert msg == (f"--out {out} already holds a recorded run (attention.npz, eval.json, log.txt and 9 more); "
                   "pass --overwrite to replace it, or choose another --out")
    assert len(engine) == 1 and tree(tmp_path) == before  # nothing written, not even the new --work

def test_a_work_that_holds_a_run_is_refused_and_its_checkpoints_kept(rr, engine, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert record(rr, tmp_path, out, work, epochs=3) == 0
    assert {"checkpoint-last.pth", "checkpoint-3.pth"} <= files(work)
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        record(rr, tmp_path, tmp_path / "new-out", work)
    assert e.value.code == (f"--work {work} already holds a run (checkpoint-last.pth); pass --overwrite to "
                            "replace it, or choose another --work")
    assert len(engine) == 1 and tree(tmp_path) == before  # checkpoints: same bytes, same mtimes; no new-out

def test_overwrite_replaces_a_longer_record_and_nothing_else(rr, engine, tmp_path):
    out, work = tmp_path / "recorded" / "run", tmp_path / "work"
    assert record(rr, tmp_path, out, work, epochs=3) == 0
    assert {f"recon/epoch-{e:04d}.png" for e in range(4)} <= files(out)
    # Beside the two folders: files named like a record's, which must not be mistaken for it.
    for folder in (tmp_path / "recorded" / "other", tmp_path / "data"):
        (folder / "recon").mkdir(parents=True)
        (folder / "recon" / "epoch-0002.png").write_text("not ours")
        (folder / "run.json").write_text("{}")
    around = tree(tmp_path, skip=(out, work))
    at_root = {n for n in RECORD | {"recon"} if (ROOT / n).exists()}

    assert record(rr, tmp_path, out, work, "--overwrite", epochs=1) == 0
    assert "--overwrite" in engine[1]
    assert files(out) == RECORD | {"recon/epoch-0000.png", "recon/epoch-0001.png"}  # 0002, 0003 gone
    assert (out / "recon" / "epoch-0001.png").read_text() == "run 2, epoch 1"
    assert json.loads((out / "run.json").read_text()) == {"tag": "run 2", "epochs_run": 1, "finished": True}
    assert len((out / "log.txt").read_text().splitlines()) == 1
    recording = json.loads((out / "recording.json").read_text())
    assert "--overwrite" in recording["argv"] and rr.parse_args(recording["argv"]).overwrite is True
    assert "probe" not in recording and "messages" in recording  # this run's recording.json, not the old one's
    assert "checkpoint-3.pth" not in files(work)  # the engine (stand-in) replaced its old run
    assert tree(tmp_path, skip=(out, work)) == around
    assert {n for n in RECORD | {"recon"} if (ROOT / n).exists()} == at_root

def test_an_old_run_never_reaches_the_record(rr, engine, tmp_path, monkeypatch):
    """With --overwrite the old record is cleared first; if the engine then refuses (another
    run holds --work, say) the old run's files in --work must not be copied in instead."""
    out, work = tmp_path / "out", tmp_path / "work"
    assert record(rr, tmp_path, out, work, epochs=3) == 0
    work_before = tree(work)

    def refused(argv):
        raise InputError(f"--output_dir {work} is in use by another run")

    monkeypatch.setattr(rr, "pretrain", refused)
    with pytest.raises(InputError):
        record(rr, tmp_path, out, work, "--overwrite")
    assert files(out) == {"recording.json"} and tree(work) == work_before

@pytest.mark.parametrize("other", ["notes.md", "recon/notes.txt", "linked recon"])
def test_an_out_with_other_files_is_refused_even_with_overwrite(rr, engine, tmp_path, other):
    out, work, elsewhere = tmp_path / "out", tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "epoch-0005.png").write_text("someone else's picture")
    out.mkdir()
    (out / "run.json").write_text("{}")
    if other == "linked recon":  # deleting "its pictures" would delete outside --out
        (out / "recon").symlink_to(elsewhere, target_is_directory=True)
    else:
        (out / "recon").mkdir()
        (out / "recon" / "epoch-0000.png").write_text("old")
        (out / other).write_text("keep me")
    before = tree(tmp_path)
    name = "recon" if other == "linked recon" else other
    msg = refusal(rr, ["--data_path", str(tmp_path / "data"), "--epochs", "1", "--out", str(out),
                       "--work", str(work), "--overwrite"])
    assert msg == (f"--out {out} holds what is not part of a recorded run ({name}); choose a new or empty "
                   "folder for --out (--overwrite replaces only a recorded run's own files)")
    assert engine == [] and tree(tmp_path) == before

def test_the_two_folders_must_not_overlap(rr, engine, tmp_path):
    out = tmp_path / "out"
    for work in (out, out / "checkpoints"):
        msg = refusal(rr, ["--data_path", str(tmp_path / "data"), "--epochs", "1", "--out", str(out),
                           "--work", str(work), "--overwrite"])
        assert msg == (f"--out {out} and --work {work} overlap; the recorded run and the run folder "
                       "(checkpoints, full logs) must be two separate folders")
    assert engine == [] and not out.exists()

def test_temporaries_a_kill_left_belong_to_the_record(rr, tmp_path):
    out = tmp_path / "out"
    (out / "recon").mkdir(parents=True)
    for name in ("eval.json.tmp", "mask_ratios.tmp.png", "recon/epoch-0003.tmp.png", "recon/epoch-0003.png"):
        (out / name).write_text("")
    (out / "notes.json.tmp").write_text("")
    ours, others = rr.record_contents(out)
    assert sorted(p.relative_to(out).as_posix() for p in ours) == [
        "eval.json.tmp", "mask_ratios.tmp.png", "recon/epoch-0003.png", "recon/epoch-0003.tmp.png"]
    assert others == [out / "notes.json.tmp"]
    # A picture the engine is still writing is not copied into the record.
    work = tmp_path / "work"
    (work / "recon").mkdir(parents=True)
    (work / "recon" / "epoch-0001.png").write_text("done")
    (work / "recon" / "epoch-0002.tmp.png").write_text("half")
    (tmp_path / "copy").mkdir()
    rr.copy_run_files(work, tmp_path / "copy")
    assert files(tmp_path / "copy") == {"recon/epoch-0001.png"}

@pytest.mark.slow
def test_overwrite_with_the_real_engine(rr, tmp_path):
    """Two real tiny recordings into the same folders: 3 epochs, then 1 with --overwrite."""
    data = make_cifar_like_folder(tmp_path / "data", per_class=7)
    data_before = tree(data)
    out, work = tmp_path / "out", tmp_path / "work"
    flags = ["--data_path", str(data), "--preset", "cpu_smoke", "--recon_every", "1", "--max_images", "64",
             "--eval_max", "32", "--device", "cpu", "--compile", "off", "--out", str(out), "--work", str(work)]
    assert rr.main(flags + ["--epochs", "3"]) == 0
    assert {f"recon/epoch-{e:04d}.png" for e in range(4)} <= files(out)
    with pytest.raises(SystemExit):
        rr.main(flags + ["--epochs", "1"])
    assert rr.main(flags + ["--epochs", "1", "--overwrite"]) == 0
    assert files(out) == RECORD | {"recon/epoch-0000.png", "recon/epoch-0001.png"}
    run = json.loads((out / "run.json").read_text())
    assert run["epochs_run"] == run["epochs_scheduled"] == 1 and run["finished"] is True
    assert len((out / "log.txt").read_text().splitlines()) == 1
    assert "checkpoint-2.pth" not in files(work) and len((work / "log.txt").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "work"] and tree(data) == data_before

# ======================================================================================
# 11-14: evaluation and resume
# ======================================================================================

MICRO = "mae_vit_micro_patch4_32"
QUIET = ["--device", "cpu", "--num_workers", "0", "--no_progress"]

# ---------------------------------------------------------------------------------- what the cases share
class Work:
    """The data, checkpoints and run the cases read, made once for the module."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = make_image_folder(root / "data", classes=("a", "b", "c"), per_class=8)
        self.other = make_image_folder(root / "other", classes=("a", "b", "c"), per_class=4, seed=1)
        self.one_class = make_image_folder(root / "one", classes=("a",), per_class=6)
        self.elsewhere = make_image_folder(root / "elsewhere" / "data", classes=("x", "y"), per_class=2, seed=2)
        # A run stopped inside its first epoch (2 of 6 steps), with settings none of which is the
        # preset's or the default, and its data given relative to the folder it ran in.
        self.run = root / "run"
        self.first = [*self.recipe, "--data_path", "data", "--max_steps", "2"]
        here = os.getcwd()
        os.chdir(root)
        try:
            assert P.main(self.first) == 0
        finally:
            os.chdir(here)
        self.ckpt = self.run / P.LAST_CHECKPOINT

    @property
    def recipe(self) -> list:
        return ["--preset", "cpu_smoke", "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--seed", "3",
                "--mask_ratio", "0.6", "--blr", "0.02", "--loader", "pil", "--num_workers", "0", "--no_progress",
                "--output_dir", str(self.run)]

    def resume(self, *extra) -> list:
        """Continue the run: the preset for the model, nothing else but ``extra``."""
        return ["--preset", "cpu_smoke", "--output_dir", str(self.run), "--auto_resume", "--no_progress", *extra]

    def checkpoint_with(self, name: str, **args) -> Path:
        """A copy of the run's checkpoint whose saved settings ``args`` are replaced."""
        ck = load_training_checkpoint(self.ckpt)
        ck["args"].update(args)
        path = self.root / name
        torch.save(ck, path)
        return path

    def names(self) -> dict:
        return {"folder": self.folder, "other": self.other, "ckpt": self.ckpt, "root": self.root}

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return Work(tmp_path_factory.mktemp("trust"))

@dataclass
class Outcome:
    rc: int
    out: list  # stdout lines
    err: list  # stderr lines
    json: dict | None  # stdout's last line, when it is JSON

def _call(main, argv, cwd=None) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
    except KeyboardInterrupt:  # a Ctrl-C that main let through fails this case, not the whole session
        rc = "KeyboardInterrupt escaped main"
    finally:
        os.chdir(here)
    lines = out.getvalue().strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    return Outcome(rc, lines, err.getvalue().strip().splitlines(), result)

def evaluate(*argv, cwd=None) -> Callable:
    """A row's run: ``python -m mae_from_scratch.evaluate ARGV`` (single-process, quiet flags added)."""
    return lambda w, mp: _call(E.main, [*(a(w) if callable(a) else a for a in argv), *QUIET], cwd(w) if cwd else None)

def pretrain(argv: Callable) -> Callable:
    return lambda w, mp: _call(P.main, argv(w))

class ReachedTheData(Exception):
    """Raised where pretraining builds its data: every resume check of the configuration passed."""

def pretrain_to_the_data(argv: Callable) -> Callable:
    """Run pretraining up to its data stage; the outcome's JSON is the configuration there."""
    def run(w, mp):
        seen = {}

        def stop(config, *a, **k):
            seen.update(values=dict(config.values), sources=dict(config.sources))
            raise ReachedTheData

        mp.setattr(P, "build_pretrain_data", stop)
        with pytest.raises(ReachedTheData):
            P.main([str(a) for a in argv(w)])
        return Outcome(0, [], [], seen)
    return run

@dataclass
class Case:
    run: Callable  # (work, monkeypatch) -> Outcome
    rc: int = 0
    error: str | None = None  # the one stderr line, exactly (after "error: "), {names} from Work.names()
    fields: dict = field(default_factory=dict)  # JSON fields, by value
    then: Callable | None = None  # further checks: (work, outcome, monkeypatch)

# ---------------------------------------------------------------------------------- 11: the data path
def _from_the_checkpoint_elsewhere(w, o, mp):
    # Run from a folder that holds a data/ folder of its own (other classes, 4 images a split).
    assert o.out[0] == f"data: {w.folder}, from the checkpoint (--data_path reads other data)"
    assert o.json["data_images"] == {"train": 24, "test": 24} and o.json["train_images"] == 24

def _relative_checkpoint(w):
    return w.checkpoint_with("relative.pth", data_path="data")

def _gone_checkpoint(w):
    return w.checkpoint_with("gone.pth", data_path=str(w.root / "gone"))

# ---------------------------------------------------------------------------------- 12: resume
def _refusal(changes: tuple, what: str | None, flags: str, given: str) -> str:
    """The line a refused resume gives; ``what`` is None where several settings changed."""
    change = f"was asked for, which would change the run's {what}" if what else \
        "were asked for, which would make it another run"
    return (f"{{ckpt}} was trained with {changes[0]}, but {changes[1]} {change}; leave {flags} out (or give "
            f"{given}) to continue it, or choose another --output_dir for a new run")

def _kept(w, o, mp):
    v, s = o.json["values"], o.json["sources"]
    assert (v["seed"], v["mask_ratio"], v["blr"], v["batch_size"], v["epochs"], v["loader"]) == (3, 0.6, 0.02, 4, 2,
                                                                                                   "pil")
    assert v["data_path"] == str(w.folder) and v["dataset"] == "imagefolder"
    assert v["lr"] == 0.02 * 4 / 256  # the checkpoint's absolute rate, not the preset's blr times its batch
    for name in ("seed", "mask_ratio", "blr", "batch_size", "epochs", "loader", "data_path", "lr"):
        assert s[name] == "checkpoint", name

def _segments(w, o, mp):
    rec = json.loads((w.root / "extended" / RUN_INFO).read_text())
    first, second = rec["segments"]
    assert rec["command"] == first["command"] == shlex.join(["python", "-m", "mae_from_scratch.pretrain", *w.first])
    assert second["command"] == shlex.join(["python", "-m", "mae_from_scratch.pretrain",
                                            *_extend(w)]) and "changed" not in first
    # What this segment changed, and only that: more epochs, a later stop, and the folder it was copied to.
    assert second["changed"] == {"epochs": [2, 3], "max_steps": [2, 3],
                                 "output_dir": [str(w.run), str(w.root / "extended")]}
    assert rec["args"]["epochs"] == 3 and rec["epochs_scheduled"] == 3
    assert load_training_checkpoint(w.root / "extended" / P.LAST_CHECKPOINT)["step"] == 3

def _extend(w):
    out = w.root / "extended"
    if not out.exists():
        shutil.copytree(w.run, out)
    return ["--preset", "cpu_smoke", "--output_dir", str(out), "--auto_resume", "--no_progress", "--epochs", "3",
            "--max_steps", "3"]

def _moved(w):
    return ["--preset", "cpu_smoke", "--resume", _gone_checkpoint(w), "--output_dir", w.root / "moved",
            "--data_path", w.folder, "--no_progress"]

# ---------------------------------------------------------------------------------- 13: STL-10, one class
class FakeSTL10(torch.utils.data.Dataset):
    """torchvision's ``STL10`` in miniature, with its splits' meaning: ``train`` is labelled
    (0-9), ``unlabeled`` is labelled -1, ``train+unlabeled`` is both, ``test`` is labelled."""

    asked: list = []
    SIZES = {"train": 20, "unlabeled": 30, "test": 10}

    def __init__(self, root, split="train", transform=None, download=False, **kwargs):
        FakeSTL10.asked.append(split)
        self.labels = np.concatenate([np.full(self.SIZES[p], -1) if p == "unlabeled" else np.arange(self.SIZES[p]) % 10
                                      for p in split.split("+")]).astype(np.int64)
        self.classes = list(D.STL10_CLASSES)
        self.transform = transform
        rng = np.random.default_rng(len(self.labels))
        self.images = rng.integers(0, 256, (len(self.labels), 48, 48, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (img if self.transform is None else self.transform(img)), int(self.labels[i])

def stl10(*argv) -> Callable:
    def run(w, mp):
        import torchvision.datasets

        FakeSTL10.asked = []
        mp.setattr(torchvision.datasets, "STL10", FakeSTL10)
        return evaluate(*argv, "--checkpoint", "random", "--model", MICRO, "--dataset", "stl10")(w, mp)
    return run

def _labelled_splits_only(w, o, mp):
    assert FakeSTL10.asked[:2] == ["train", "test"] and "train+unlabeled" not in FakeSTL10.asked

def _pretraining_still_reads_the_unlabelled_images(w, mp):
    import torchvision.datasets

    FakeSTL10.asked = []
    mp.setattr(torchvision.datasets, "STL10", FakeSTL10)
    ds = D.build_dataset("stl10", "train")
    labelled = D.build_dataset("stl10", "train", labelled=True)
    return Outcome(0, [], [], {"asked": FakeSTL10.asked, "sizes": [len(ds), len(labelled)],
                               "unlabelled": int((ds.labels == -1).sum()), "lowest": int(labelled.labels.min())})

def _one_of_24(w, o, mp):
    # The one image --max_train 1 keeps: the first of a permutation seeded 0 of 24, 8 a class, in folder order.
    first = torch.randperm(24, generator=torch.Generator().manual_seed(0))[0].item()
    assert o.err == [f"error: the training images (after --max_train) are all of one class ({'abc'[first // 8]!r}): "
                     "any classifier scores 1.0 there, so the accuracy would measure nothing; give a data set of at "
                     "least 2 classes"]

# ---------------------------------------------------------------------------------- 14: silently wrong reports
def _same_as_k_24(w, o, mp):
    again = evaluate("knn", "--checkpoint", "random", "--model", MICRO, "--dataset", "imagefolder", "--data_path",
                     lambda w: w.folder, "--k", "24")(w, mp)
    assert again.json["k"] == 24 and "k_clipped_from" not in again.json
    assert o.json["accuracy"] == again.json["accuracy"]  # all 24 training images voted

def _input_sizes(w, mp):
    def size(*argv):
        config = initial_config(None, list(argv), {})
        check_args(config)
        derived = derive_settings(config, 1, torch.device("cpu"), "fp32")
        return derived.input_size, derived.sources["input_size"]

    return Outcome(0, [], [], {
        "base": size("--preset", "cpu_smoke", "--model", "mae_vit_base_patch16"),
        "base at 64": size("--preset", "cpu_smoke", "--model", "mae_vit_base_patch16", "--input_size", "64"),
        "the preset's model": size("--preset", "cpu_smoke", "--model", MICRO),
        "tiny/8 at 64": size("--preset", "cpu_smoke", "--model", "mae_vit_tiny_patch8_64"),
    })

def _interrupted_in_epoch(k: int) -> Callable:
    """Fine-tuning on the folder for 5 epochs, with a real SIGINT sent during epoch ``k`` (from 1)."""
    def run(w, mp):
        real, steps = FT.train_step, []

        def step(*a, **kw):
            steps.append(1)
            if len(steps) == 3 * (k - 1) + 1:  # 12 images in batches of 4: 3 steps an epoch
                signal.raise_signal(signal.SIGINT)
            return real(*a, **kw)

        mp.setattr(FT, "train_step", step)
        # Python's own Ctrl-C handler, even in a test worker that ignores SIGINT (pytest-xdist's).
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return evaluate("finetune", "--checkpoint", "random", "--model", MICRO, "--dataset", "imagefolder",
                            "--data_path", lambda w: w.folder, "--max_train", "15", "--val_images", "3",
                            "--epochs", "5", "--batch_size", "4")(w, mp)
        finally:
            signal.signal(signal.SIGINT, old)
    return run

def _two_epochs_said(w, o, mp):
    assert [line.split(":")[0] for line in o.out] == ["finetune epoch 1/5", "finetune epoch 2/5"]
    assert all(0 <= float(line.rsplit(" ", 1)[1]) <= 1 for line in o.out)

def _in_a_process(w, mp):
    """The real thing: a command in its own process, Ctrl-C (SIGINT) once it has said an epoch."""
    argv = [sys.executable, "-m", "mae_from_scratch.evaluate", "finetune", "--checkpoint", "random", "--model", MICRO,
            "--dataset", "imagefolder", "--data_path", str(w.folder), "--val_images", "3", "--epochs", "200",
            "--batch_size", "4", *QUIET]
    # SIGINT's default action in the child, even when this process ignores it (a pytest-xdist
    # worker does, and an ignored signal stays ignored across exec): Python then installs its
    # Ctrl-C handler, as in a terminal.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    timer = threading.Timer(120, proc.kill)  # a command that never says an epoch is stopped, not waited for
    timer.start()
    try:
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        timer.cancel()
    return Outcome(proc.returncode, [first.strip(), *out.strip().splitlines()], err.strip().splitlines(), None)

def _said_before_the_signal(w, o, mp):
    assert o.out[0].startswith("finetune epoch 1/200: validation accuracy ") and "Traceback" not in "\n".join(o.err)
    done = len(o.out)
    assert o.err == [f"error: interrupted in fine-tuning epoch {done + 1} of 200, before the test accuracy; the "
                     f"validation accuracies of the {done} epoch{'s' * (done > 1)} done are printed above"]

def _saved_args(w, mp):
    return Outcome(0, [], [], load_training_checkpoint(w.ckpt)["args"])

def _absolute(w, o, mp):
    assert o.json["data_path"] == str(w.folder) and os.path.isabs(o.json["data_path"])

def _the_folder(w, o, mp):
    assert o.json["data_path"] == str(w.folder)

def _the_folder_in_the_config(w, o, mp):
    assert o.json["values"]["data_path"] == str(w.folder) and o.json["values"]["effective_batch"] == 4

def _no_line(w, o, mp):
    assert o.out == []

FOLDER = ("--dataset", "imagefolder", "--data_path", lambda w: w.folder)
CASES = {
    # 11: the data path evaluation reads is absolute, said in the JSON, and said to come from the checkpoint
    "11-pretraining-saves-the-data-path-absolute": Case(_saved_args, then=_absolute),
    "11-data-path-from-the-checkpoint-run-elsewhere": Case(
        evaluate("knn", "--checkpoint", lambda w: w.ckpt, cwd=lambda w: w.root / "elsewhere"),
        fields={"data_path_from": "checkpoint", "dataset": "imagefolder", "source": "ours"},
        then=_from_the_checkpoint_elsewhere),
    "11-relative-data-path-in-the-checkpoint": Case(
        evaluate("knn", "--checkpoint", _relative_checkpoint, cwd=lambda w: w.root / "elsewhere"), rc=1,
        error="{root}/relative.pth names its data by the relative path 'data', whose folder it does not record; "
              "give --data_path"),
    "11-relative-data-path-asked": Case(
        evaluate("knn", "--checkpoint", "random", "--model", MICRO, "--dataset", "imagefolder", "--data_path", "data",
                 cwd=lambda w: w.root),
        fields={"data_path_from": "--data_path", "data_images": {"train": 24, "test": 24}}, then=_the_folder),
    "11-checkpoint-data-path-gone": Case(
        evaluate("knn", "--checkpoint", _gone_checkpoint), rc=1,
        error="data path not found: {root}/gone (the data path comes from the checkpoint {root}/gone.pth; give "
              "--data_path)"),
    # 12: a resume refuses a change of what defines its run, takes it from the checkpoint when left
    # out, and run.json keeps each segment's command and changes
    "12-resume-mask-ratio": Case(pretrain(lambda w: w.resume("--mask_ratio", "0.5")), rc=1, error=_refusal(
        ("--mask_ratio 0.6", "--mask_ratio 0.5"), "masks", "--mask_ratio", "--mask_ratio 0.6")),
    "12-resume-target": Case(pretrain(lambda w: w.resume("--no_norm_pix_loss")), rc=1, error=_refusal(
        ("--norm_pix_loss", "--no_norm_pix_loss"), "reconstruction target", "--no_norm_pix_loss",
        "--norm_pix_loss")),
    "12-resume-learning-rate": Case(pretrain(lambda w: w.resume("--blr", "0.05")), rc=1, error=_refusal(
        ("--blr 0.02", "--blr 0.05"), "learning rate", "--blr", "--blr 0.02")),
    "12-resume-absolute-learning-rate": Case(pretrain(lambda w: w.resume("--lr", "0.001")), rc=1, error=_refusal(
        ("--lr 0.0003125", "--lr 0.001"), "learning rate", "--lr", "--lr 0.0003125")),
    "12-resume-seed": Case(pretrain(lambda w: w.resume("--seed", "0")), rc=1, error=_refusal(
        ("--seed 3", "--seed 0"), "shuffle, augmentation and masks", "--seed", "--seed 3")),
    "12-resume-data-set": Case(pretrain(lambda w: w.resume("--data_path", w.other)), rc=1, error=_refusal(
        ("--dataset imagefolder --data_path {folder}", "--dataset imagefolder --data_path {other}"),
        "training images", "--dataset and --data_path", "--dataset imagefolder --data_path {folder}")),
    "12-resume-another-dataset-name": Case(pretrain(lambda w: w.resume("--dataset", "cifar10")), rc=1, error=_refusal(
        ("--dataset imagefolder --data_path {folder}", "--dataset cifar10 --data_path {folder}"),
        "training images", "--dataset and --data_path", "--dataset imagefolder --data_path {folder}")),
    "12-resume-several-settings-in-one-line": Case(
        pretrain(lambda w: w.resume("--mask_ratio", "0.5", "--blr", "0.05", "--seed", "0")), rc=1, error=_refusal(
            ("--seed 3, --mask_ratio 0.6 and --blr 0.02", "--seed 0, --mask_ratio 0.5 and --blr 0.05"), None,
            "--seed, --mask_ratio and --blr", "--seed 3 --mask_ratio 0.6 --blr 0.02")),
    "12-resume-loader-pil-to-device": Case(pretrain(lambda w: w.resume("--loader", "device")), rc=1, error=_refusal(
        ("--loader pil", "--loader device"), "augmentation", "--loader", "--loader pil")),
    "12-resume-effective-batch": Case(
        pretrain(lambda w: w.resume("--batch_size", "8")), rc=1,
        error="{ckpt} was trained with an effective batch of 4 images (4 x 1 accum x 1 processes), but this resume "
              "makes 8 (8 x 1 accum x 1 processes), which would change the run's steps per epoch; give --batch_size "
              "and --accum_iter that make 4 (or leave them out) to continue it, or choose another --output_dir for "
              "a new run"),
    "12-resume-same-batch-split-otherwise-is-accepted": Case(
        pretrain_to_the_data(lambda w: w.resume("--batch_size", "2", "--accum_iter", "2")),
        then=_the_folder_in_the_config),
    "12-resume-takes-what-is-left-out-from-the-checkpoint": Case(pretrain_to_the_data(lambda w: w.resume()),
                                                                 then=_kept),
    "12-resume-moved-data-is-accepted": Case(
        pretrain_to_the_data(_moved), then=_the_folder_in_the_config),
    "12-resume-moved-data-that-changed-is-refused": Case(
        pretrain(lambda w: [*_moved(w)[:-3], "--data_path", w.other, "--no_progress"]), rc=1,
        error="{root}/gone.pth was trained on 24 images, but {other} now gives 12: the data changed, so the run "
              "would continue on other images; give the data it was trained on to continue it, or choose another "
              "--output_dir for a new run"),
    "12-run-json-keeps-each-segments-command-and-changes": Case(pretrain(_extend), then=_segments),
    # 13: STL-10 is evaluated on its labelled train split; one class is refused
    "13-stl10-unlabelled-knn": Case(
        stl10("knn"), fields={"dataset": "stl10", "train_images": 20, "test_images": 10, "k": 20,
                              "data_path_from": "download", "data_images": {"train": 20, "test": 10}},
        then=_labelled_splits_only),
    "13-stl10-unlabelled-linprobe": Case(stl10("linprobe", "--epochs", "2"),
                                         fields={"train_images": 20, "tuned": False}, then=_labelled_splits_only),
    "13-stl10-unlabelled-finetune": Case(stl10("finetune", "--epochs", "1", "--batch_size", "8"),
                                         fields={"train_images": 16, "val_images": 4}, then=_labelled_splits_only),
    "13-stl10-pretraining-still-reads-train-and-unlabeled": Case(
        _pretraining_still_reads_the_unlabelled_images,
        fields={"asked": ["train+unlabeled", "train"], "sizes": [50, 20], "unlabelled": 30, "lowest": 0}),
    "13-one-class": Case(
        evaluate("knn", "--checkpoint", "random", "--model", MICRO, "--dataset", "imagefolder", "--data_path",
                 lambda w: w.one_class), rc=1,
        error="the training images are all of one class ('a'): any classifier scores 1.0 there, so the accuracy "
              "would measure nothing; give a data set of at least 2 classes"),
    "13-one-class-after-max-train": Case(
        evaluate("knn", "--checkpoint", "random", "--model", MICRO, *FOLDER, "--max_train", "1"), rc=1,
        then=_one_of_24),
    # 14: reports that were silently wrong
    "14-k-clipped": Case(evaluate("knn", "--checkpoint", "random", "--model", MICRO, *FOLDER, "--k", "100000"),
                         fields={"k": 24, "k_clipped_from": 100000, "tuned": False}, then=_same_as_k_24),
    "14-tune-on-a-split-that-cannot-tell": Case(
        evaluate("linprobe", "--checkpoint", "random", "--model", MICRO, *FOLDER, "--tune", "--val_images", "1",
                 "--epochs", "2"),
        fields={"tuned": False, "blr": 0.1, "val_images": 1, "val_accuracy": {"0.03": 1.0, "0.1": 1.0, "0.3": 1.0},
                "why_not_tuned": "every blr in [0.03, 0.1, 0.3] scored 1 on the 1 validation image, which cannot "
                                 "tell them apart; the fixed blr 0.1 was used (more validation images may separate "
                                 "them)"}),
    "14-tune-with-too-few-images-to-train-the-probe": Case(
        evaluate("linprobe", "--checkpoint", "random", "--model", MICRO, *FOLDER, "--tune", "--max_train", "6",
                 "--val_images", "5"), rc=1,
        error="the linear probe would train on 1 image(s) (6 training images (after --max_train), 5 held out for "
              "--tune); its BatchNorm needs at least 2; lower --val_images"),
    "14-model-not-the-checkpoints": Case(
        evaluate("knn", "--checkpoint", lambda w: w.ckpt, "--model", "mae_vit_tiny_patch4_32"), rc=1,
        error="--model mae_vit_tiny_patch4_32 does not match {ckpt}, which holds a model of width 96, depth 4 and "
              "patch 4 (width 192, depth 12 and patch 4 were asked for); our checkpoints carry their architecture, "
              "so leave --model out"),
    "14-model-the-checkpoints-is-accepted": Case(
        evaluate("knn", "--checkpoint", lambda w: w.ckpt, "--model", MICRO, "--max_test", "3"),
        fields={"source": "ours", "test_images": 3}),
    "14-preset-input-size-follows-another-model": Case(_input_sizes, fields={
        "base": (224, "derived"), "base at 64": (64, "asked"), "the preset's model": (32, "preset"),
        "tiny/8 at 64": (64, "derived")}),
    "14-sigint-during-finetune": Case(
        _interrupted_in_epoch(3), rc=130,
        error="interrupted in fine-tuning epoch 3 of 5, before the test accuracy; the validation accuracies of the 2 "
              "epochs done are printed above", then=_two_epochs_said),
    "14-sigint-before-any-epoch-is-done": Case(
        _interrupted_in_epoch(1), rc=130, error="interrupted in fine-tuning epoch 1 of 5, before the test accuracy",
        then=_no_line),
    "14-sigint-to-a-finetune-process": Case(_in_a_process, rc=130, then=_said_before_the_signal),
}
SLOW = {"14-sigint-to-a-finetune-process"}  # a process of its own: torch's import and a few epochs, about 20 s

@pytest.mark.parametrize("case", [pytest.param(c, id=i, marks=[pytest.mark.slow] if i in SLOW else [])
                                  for i, c in CASES.items()])
def test_evaluation_and_resume_case(case: Case, work: Work, monkeypatch):
    o = case.run(work, monkeypatch)
    names = work.names()
    assert o.rc == case.rc, (o.err, o.out)
    if case.error is not None:
        assert o.err == ["error: " + case.error.format(**names)]
    if o.rc != 0:
        assert not any("Traceback" in line for line in o.err)
    for key, value in case.fields.items():
        assert o.json[key] == value, (key, o.json.get(key))
    if case.then is not None:
        case.then(work, o, monkeypatch)
