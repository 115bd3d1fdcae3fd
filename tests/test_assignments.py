"""Student notebooks generated from the chapters, and their grading with nbval.

The fast tests check the generated notebooks, the chapters' nbgrader metadata, the merge of
the instructor's check cells into a submission (a solved submission runs the chapter's own
cells; no cell outside an exercise needs one, so an untouched notebook fails only at its
exercises) and the book's solution toggle.  The slow ones run real submissions through the
grader: every chapter's reference solutions score full marks with nothing flagged, plausible
wrong answers fail with a helpful message, and a folder of awkward submissions gives exactly
the expected table.  ``test_trust.py`` holds the cases a teacher must be able to trust.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from docutils import nodes

from mae_from_scratch import assignments as A
from mae_from_scratch.assignments import grading

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = A.chapters(ROOT)
SETTINGS = A.settings(ROOT)


def _key(name: str):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _student(name: str):
    return A.student_notebook(_key(name), SETTINGS, f"{name}.ipynb")


def _cell(nb, gid: str):
    return next(c for c in nb.cells if A.grade_id(c) == gid)


def _solved(name: str):
    """The student notebook with the reference solutions pasted back."""
    key, nb = _key(name), _student(name)
    for cell in nb.cells:
        if cell.cell_type == "code" and A.is_solution(cell):
            cell.source = _cell(key, A.grade_id(cell)).source
    return nb


def _with_solution(name: str, gid: str, source: str):
    nb = _solved(name)
    _cell(nb, gid).source = source
    return nb


# --------------------------------------------------------------------------------------
# the chapters and the generated notebooks


def test_chapters_come_from_the_toc(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("01_a", "02_b", "09_c"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / "notebooks" / f"{name}.ipynb")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - chapters:\n"
        "      - file: notebooks/02_b\n      - file: notebooks/01_a\n      - file: book/x\n")
    assert [p.stem for p in A.chapters(tmp_path)] == ["02_b", "01_a"]  # 09_c is not listed
    assert [p.stem for p in CHAPTERS][:7] == [
        "01_patches", "02_masking", "03_positional_embeddings", "04_encoder", "05_decoder",
        "06_loss", "07_the_whole_model"]


# --------------------------------------------------------------------------------------
# the book folder: given, or found from the working directory, never the package's own


def _small_book(folder: Path) -> Path:
    """A book of one chapter (01_patches) whose student notebooks install ``tmpref`` into
    ``handouts/``: anything read from the checkout instead shows as nine chapters, the real
    ref or the real folder."""
    import yaml

    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "01_patches.ipynb").write_bytes(
        (ROOT / "notebooks" / "01_patches.ipynb").read_bytes())
    (folder / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - chapters:\n      - file: notebooks/01_patches\n")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["assignments"] = {"ref": "tmpref", "folder": "handouts"}
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    return folder


def test_the_book_is_the_one_found_from_the_working_directory(tmp_path, monkeypatch):
    book = _small_book(tmp_path / "book")
    # The package still sits in a checkout with every chapter: a fallback to it would show.
    assert A.chapters(Path(A.__file__).resolve().parents[2]) == CHAPTERS
    monkeypatch.chdir(book / "notebooks")  # below the book: the search walks up
    assert A.find_book() == book.resolve()
    assert A.chapters() == [book.resolve() / "notebooks" / "01_patches.ipynb"]
    assert (A.settings().ref, A.settings().folder) == ("tmpref", "handouts")
    assert A.generate() == ["01_patches.ipynb"]
    assert [p.name for p in (book / "handouts").iterdir()] == ["01_patches.ipynb"]
    nb = nbformat.read(book / "handouts" / "01_patches.ipynb", as_version=4)
    assert nb.metadata["mae_assignment"] == {"chapter": "01_patches", "ref": "tmpref"}
    assert A.main(["generate", "--check"]) == 0
    assert A.main(["annotate", "--check"]) == 0


def test_book_given_from_another_folder(tmp_path, monkeypatch, capsys):
    book = _small_book(tmp_path / "book")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = nbformat.writes(_student("01_patches")) + "\n"
    # --book before the command (as it always was) or after it; the book's own chapters.
    assert A.main(["--book", str(ROOT), "generate", "--out", "a", "01"]) == 0
    assert A.main(["generate", "--book", str(ROOT), "--out", "b", "01"]) == 0
    for out in ("a", "b"):
        assert [p.name for p in (elsewhere / out).iterdir()] == ["01_patches.ipynb"]
        assert (elsewhere / out / "01_patches.ipynb").read_text() == expected
    # Without --out the notebooks go to the folder the given book's _config.yml names.
    assert A.main(["generate", "--book", str(book)]) == 0
    assert (book / "handouts" / "01_patches.ipynb").is_file()
    assert A.main(["annotate", "--book", str(book), "--check"]) == 0
    with pytest.raises(SystemExit, match="not a book folder"):
        A.main(["generate", "--book", str(elsewhere)])


def test_no_book_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a temporary folder: no _toc.yml in it or above it
    for argv in (["generate", "--out", "out"], ["annotate"], ["grade", "."]):
        with pytest.raises(SystemExit) as e:
            A.main(argv)
        # A string exit code: Python prints it as the one line, with no traceback.
        assert isinstance(e.value.code, str) and "\n" not in e.value.code
        assert "no book folder" in e.value.code and "pass --book" in e.value.code
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="pass --book"):
        A.chapters()


@pytest.mark.slow
def test_python_m_runs_from_another_folder(tmp_path):
    """``python -m mae_from_scratch.assignments`` as an instructor runs it: --book, or the
    one-line refusal (the package import takes seconds: torch)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "mae_from_scratch.assignments", *args],
                              cwd=tmp_path, capture_output=True, text=True)

    done = run("generate", "--book", str(ROOT), "--out", "out", "01")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "01_patches.ipynb").read_text() == (
        nbformat.writes(_student("01_patches")) + "\n")
    refused = run("generate", "--out", "out2")
    assert refused.returncode == 1 and not (tmp_path / "out2").exists()
    assert refused.stderr.strip().splitlines() == [
        f"no book folder (one with _toc.yml and notebooks/) in {tmp_path.resolve()} or above: "
        f"pass --book DIR"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_carry_nbgrader_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert not A.annotate_notebook(copy.deepcopy(nb)), (
        f"{path.name}: run `python -m mae_from_scratch.assignments annotate`")
    ids = [A.grade_id(c) for c in nb.cells if A.grade_id(c)]
    assert len(ids) == len(set(ids)), f"{path.name}: grade_ids repeat"
    exercises = [c for c in nb.cells if c.cell_type == "code" and A.BEGIN_SOLUTION in c.source]
    assert exercises and all(A.is_solution(c) and A.grade_id(c) for c in exercises)
    assert all(A.is_check(c) for c in nb.cells if A.checks_output(c))


def test_student_notebooks_are_up_to_date():
    stale = A.generate(ROOT, ROOT / SETTINGS.folder, check=True)
    assert not stale, (f"out of date: {stale}; run `python -m mae_from_scratch.assignments "
                       f"generate --out {SETTINGS.folder}`")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_notebook_content(path):
    key = nbformat.read(path, as_version=4)
    nb = nbformat.read(ROOT / SETTINGS.folder / path.name, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert A.BEGIN_SOLUTION not in text and A.BEGIN_HIDDEN not in text
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    n_exercises = sum(c.cell_type == "code" and A.BEGIN_SOLUTION in c.source for c in key.cells)
    assert text.count("raise NotImplementedError()") == n_exercises
    for cell in nb.cells:
        if cell.cell_type == "code":
            if A.checks_output(cell):  # nbval compares it: the verdict stays
                assert cell.outputs and cell.execution_count is not None
            else:
                assert not cell.outputs and cell.execution_count is None
        if A.is_written(cell):
            assert cell.source == A.ANSWER_STUB
    setup = next(c for c in nb.cells if "setup" in c.metadata.get("tags", []))
    assert f'package = ("git+{SETTINGS.url}"\n               "@{SETTINGS.ref}")' in setup.source
    link = A.colab_link(SETTINGS, path.name)
    assert link.endswith(f"/blob/{SETTINGS.branch}/{SETTINGS.folder}/{path.name}")
    assert link in nb.cells[1].source
    # the grade_ids survive, so grading can find the student's cells
    assert [A.grade_id(c) for c in nb.cells if A.grade_id(c)] == [
        A.grade_id(c) for c in key.cells if A.grade_id(c)]


def test_written_answers_are_graded_by_hand():
    found = [(p.stem, A.grade_id(c)) for p in CHAPTERS
             for c in nbformat.read(p, as_version=4).cells if A.is_written(c)]
    assert len(found) >= 3
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if A.is_written(cell):
                assert "graded by hand" in nb.cells[i - 1].source.lower()


# --------------------------------------------------------------------------------------
# nbgrader


def test_nbgrader_is_an_optional_extra():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("nbgrader") for r in extras["nbgrader"])


def _nbgrader():
    if importlib.util.find_spec("nbgrader") is None:
        pytest.fail("nbgrader is not installed: pip install -e '.[dev,nbgrader]'")
    from nbgrader import preprocessors
    return preprocessors


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_nbgrader_generates_the_assignment(path):
    pre = _nbgrader()
    nb = nbformat.read(path, as_version=4)
    resources = {}
    nb, resources = pre.ClearSolutions(enforce_metadata=True).preprocess(nb, resources)
    nb, resources = pre.ClearHiddenTests(enforce_metadata=True).preprocess(nb, resources)
    nb, resources = pre.LockCells().preprocess(nb, resources)
    text = "\n".join(c.source for c in nb.cells)
    assert A.BEGIN_SOLUTION not in text and A.BEGIN_HIDDEN not in text


def test_nbgrader_refuses_solutions_without_metadata():
    pre = _nbgrader()
    nb = _key("02_masking")
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    with pytest.raises(RuntimeError, match="non-solution cell"):
        pre.ClearSolutions(enforce_metadata=True).preprocess(nb, {})


# --------------------------------------------------------------------------------------
# merging the instructor's checks into a submission (no kernel)


def test_deleted_and_edited_checks_are_put_back_in_place():
    key, nb = _key("02_masking"), _solved("02_masking")
    check = _cell(key, "restore_order-check")
    nb.cells = [c for c in nb.cells if A.grade_id(c) != "restore_order-check"]
    _cell(nb, "random_masking-check").source = "print('looks fine to me')"
    merged, numbers, missing = A.grading_notebook(nb, key)
    assert not missing
    assert _cell(merged, "random_masking-check").source == _cell(key, "random_masking-check").source
    assert A.BEGIN_HIDDEN in _cell(merged, "random_masking-check").source  # hidden tests back
    i = next(i for i, c in enumerate(merged.cells) if A.grade_id(c) == "restore_order-check")
    assert merged.cells[i].source == check.source
    assert A.grade_id(merged.cells[i - 1]) == "restore_order"  # right after its exercise
    assert set(numbers) == set(A.check_ids(key))


def test_a_missing_exercise_is_reported():
    key, nb = _key("02_masking"), _solved("02_masking")
    nb.cells = [c for c in nb.cells if A.grade_id(c) != "mask_from_ids"]
    assert A.grading_notebook(nb, key)[2] == ["mask_from_ids"]


# --------------------------------------------------------------------------------------
# the book's solution toggle


def _load_extension():
    spec = importlib.util.spec_from_file_location(
        "solution_toggle", ROOT / "book" / "_ext" / "solution_toggle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_solutions_fold_behind_a_toggle_and_hidden_tests_vanish():
    ext = _load_extension()
    exercise = ('def f(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n    return 2 * x\n'
                '    ### END SOLUTION')
    check = "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS"
    doc = nodes.section()
    doc += nodes.literal_block(exercise, exercise)
    doc += nodes.literal_block(check, check)
    assert ext.fold_solutions(doc) == 1
    blocks = [b.astext() for b in doc.findall(nodes.literal_block)]
    shown, folded, checked = blocks
    assert shown == 'def f(x):\n    """Twice x."""\n    # YOUR CODE HERE\n    ...'
    assert folded == 'def f(x):\n    """Twice x."""\n    return 2 * x'
    assert checked == "assert f(1) == 2"
    toggles = [c for c in doc.findall(nodes.container) if "toggle" in c["classes"]]
    assert len(toggles) == 1 and toggles[0].astext().strip().endswith("return 2 * x")


def test_the_book_loads_the_toggle():
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"]["solution_toggle"] == "book/_ext"


# --------------------------------------------------------------------------------------
# the pinned package


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _package_names_used(nb) -> dict:
    """{module path: names the notebook takes from it} for every use of the package in ``nb``:
    ``from mae_from_scratch.m import a``, ``from mae_from_scratch import m as M`` then ``M.a``,
    ``import mae_from_scratch.m``."""
    import ast

    used, aliases = {}, {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mae_from_scratch":
                for a in node.names:
                    if node.module == "mae_from_scratch":  # a module, or a name of the package itself
                        aliases[a.asname or a.name] = f"mae_from_scratch.{a.name}"
                        used.setdefault("mae_from_scratch", set()).add(a.name)
                    else:
                        used.setdefault(node.module, set()).add(a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "mae_from_scratch":
                        used.setdefault(a.name, set())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                used.setdefault(aliases[node.value.id], set()).add(node.attr)
    return used


def _defined_at(ref: str, module: str) -> set | None:
    """Top-level names of ``module`` at commit ``ref`` (None: no such module there)."""
    import ast

    base = module.replace(".", "/")
    for path in (f"{base}.py", f"{base}/__init__.py"):
        shown = _git("show", f"{ref}:{path}")
        if shown.returncode == 0:
            break
    else:
        return None
    names = set()
    for node in ast.parse(shown.stdout).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if path.endswith("__init__.py"):  # its submodules are names of the package too
        listed = _git("ls-tree", "--name-only", f"{ref}:{base}").stdout.split()
        names |= {n[:-3] for n in listed if n.endswith(".py")}
    return names


def test_student_notebooks_import_only_what_their_pinned_commit_holds():
    """Students install the package at assignments.ref, not at the branch: every name a student
    notebook takes from the package must exist at that commit, so a chapter that starts using
    new code forces a new pin."""
    ref = SETTINGS.ref
    if _git("cat-file", "-e", f"{ref}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        if shallow:
            pytest.skip(f"a shallow clone: the pinned commit {ref[:10]} is not in it")
        pytest.fail(f"the pinned commit {ref} (assignments.ref in _config.yml) is not in this repository")
    missing = []
    for path in sorted((ROOT / SETTINGS.folder).glob("*.ipynb")):
        for module, names in sorted(_package_names_used(nbformat.read(path, as_version=4)).items()):
            defined = _defined_at(ref, module)
            if defined is None:
                missing.append(f"{path.name}: {module} (no such module)")
                continue
            missing += [f"{path.name}: {module}.{n}" for n in sorted(names - defined)]
    assert not missing, (f"names that the package at the pinned commit {ref[:10]} lacks (pin a newer "
                         f"commit in _config.yml and regenerate): {missing}")


def test_the_pin_check_sees_a_missing_name():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from mae_from_scratch import data as D\nfrom mae_from_scratch.glue import glue\nD.no_such_thing")])
    used = _package_names_used(nb)
    assert used == {"mae_from_scratch": {"data"}, "mae_from_scratch.data": {"no_such_thing"},
                    "mae_from_scratch.glue": {"glue"}}
    first = _git("rev-list", "--max-parents=0", "HEAD").stdout.split()[0]
    assert _defined_at(first, "mae_from_scratch.glue") is None


# --------------------------------------------------------------------------------------
# the grading machine


def test_every_submission_runs_on_the_cpu_with_the_data_it_is_handed(tmp_path, monkeypatch):
    """The chapters choose their profile by the GPU they find; the saved verdicts are the CPU
    profile's, so grading hides the GPUs on every machine.  --data reaches the kernel as
    MAE_CIFAR10_TAR, an absolute path (the submission runs in another folder)."""
    seen = []

    class FakeRun:  # records what the grader would start, and runs nothing
        def __init__(self, cmd, cwd=None, env=None, **kw):
            seen.append((Path(cwd), env))
            self.pid = 0

        def communicate(self, timeout=None):
            return b"", None

    monkeypatch.setattr(grading.subprocess, "Popen", FakeRun)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("MAE_CIFAR10_TAR", raising=False)
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    result = A.grade_one("alice", ROOT / "assignments" / "08_pretraining.ipynb", _key("08_pretraining"),
                         data=Path("cifar.tar.gz"))
    # Nothing ran, so the grader tried once more (a kernel that died before any cell).
    assert len(seen) == 2 and "graded twice" in result.flags[0]
    for cwd, env in seen:
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["MAE_CIFAR10_TAR"] == str(archive.resolve()) and cwd != tmp_path
        assert Path(env["HOME"]).parent == cwd.parent != tmp_path  # a HOME of its own
    assert result.passed == 0 and "did not run" in result.first_failure()
    seen.clear()
    A.grade_one("bob", ROOT / "assignments" / "08_pretraining.ipynb", _key("08_pretraining"))
    assert "MAE_CIFAR10_TAR" not in seen[0][1] and seen[0][1]["CUDA_VISIBLE_DEVICES"] == ""


def test_grade_refuses_data_that_is_not_there(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        A.main(["--book", str(ROOT), "grade", str(tmp_path), "--data", str(tmp_path / "none.tar.gz")])
    assert "none.tar.gz: no such file" in e.value.code


# --------------------------------------------------------------------------------------
# grading with nbval (slow)


def _grade(tmp_path, chapter: str, notebooks: dict, cell_timeout: float = 60, **kw):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for student, nb in notebooks.items():
        if isinstance(nb, (str, bytes)):
            mode = "wb" if isinstance(nb, bytes) else "w"
            with open(folder / student, mode) as f:
                f.write(nb)
        else:
            nbformat.write(nb, folder / f"{student}.ipynb")
    out = tmp_path / "grades.csv"
    _grade.handed_in = _digest(folder)
    results = A.grade(folder, ROOT / "notebooks" / f"{chapter}.ipynb", out,
                      cell_timeout=cell_timeout, quiet=True, **kw)
    with out.open() as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    return rows, {r.student: r for r in results}


def _without_install_line(source: str) -> str:
    """A setup cell without the line that names what Colab installs (the branch in a
    chapter, the pinned commit in a student notebook)."""
    return re.sub(r'package = \(?"git\+[^\n]*(\n\s*"@[^\n]*)?\n', "", source)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_solved_submission_runs_the_chapter_itself(path):
    """A student notebook with the reference solutions, once the grader has put its checks
    back, runs the chapter's own code, cell for cell, and compares the same saved outputs.
    So the chapter's nbval run (test_colab.py) is the solved submission's run, and grading
    each solved chapter again would check nothing new; the grader's own handling of solved
    work is graded for real below (chapters 1 and 2)."""
    key = _key(path.stem)
    merged, numbers, missing = A.grading_notebook(_solved(path.stem), key)
    assert not missing and set(numbers) == set(A.check_ids(key))
    code = [[c for c in nb.cells if c.cell_type == "code"] for nb in (key, merged)]
    assert len(code[0]) == len(code[1])
    for i, (mine, theirs) in enumerate(zip(*code)):
        if "setup" in mine.metadata.get("tags", []):
            assert _without_install_line(mine.source) == _without_install_line(theirs.source)
            assert _without_install_line(mine.source) != mine.source  # the line was found
            continue
        assert theirs.source == mine.source, (path.name, i)
        if A.checks_output(mine):
            assert theirs.outputs == mine.outputs, (path.name, i)


# Chapters 8 and 9 train for minutes after their exercises: the graded copies stop after the
# last check of an exercise (the whole chapters run in test_colab.py).
TRAINS = ("08", "09")


def _cut_after(nb, key, check: str | None = None):
    """``nb`` cut after ``check``, or after the last exercise check: the cells below a check
    cannot change its verdict, nor any above it."""
    checks = {check} if check else {g for g, e in A.exercise_of(key).items() if e is not None}
    last = max(i for i, c in enumerate(nb.cells) if A.grade_id(c) in checks)
    nb.cells = nb.cells[:last + 1]
    return nb


def _graded(student: str, chapter: str, nb, up_to: str | None = None, **kw) -> A.Result:
    """``nb`` graded as a submission of ``chapter``; chapters 8 and 9 only up to the check
    ``up_to``, or to their last exercise check."""
    key = _key(chapter)
    if chapter[:2] in TRAINS:
        nb, key = _cut_after(nb, key, up_to), _cut_after(copy.deepcopy(key), key, up_to)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{chapter}.ipynb"
        nbformat.write(nb, path)
        return A.grade_one(student, path, key, **kw)


def _grade_solved(name: str) -> A.Result:
    return _graded("solved", name, _solved(name), cell_timeout=120)


# Chapters whose reference solutions another test grades already, as a whole chapter with
# nothing flagged: chapter 1 (test_the_command_line, alice) and chapter 2
# (test_a_class_folder_gives_the_expected_table, alice).
SOLVED_ELSEWHERE = ("01_patches", "02_masking")
SOLVED_HERE = [p for p in CHAPTERS if p.stem not in SOLVED_ELSEWHERE]


@pytest.fixture(scope="module")
def solved_grades() -> dict:
    """The other chapters' reference solutions, graded as a student's submission two at a
    time (each kernel on one thread): {chapter: Result}."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted((p.stem for p in SOLVED_HERE), reverse=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(_grade_solved, names)))


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", SOLVED_HERE, ids=lambda p: p.stem)
def test_the_reference_solutions_score_full_marks_unflagged(solved_grades, path):
    """Through the grader, with its kernel guard: every check passes, and nothing is
    flagged (the guard sees no package call that a check compares against)."""
    result = solved_grades[path.stem]
    assert result.note == "" and result.flags == [], (result.note, result.flags)
    assert all(ok for ok, _ in result.checks.values()), result.checks
    assert result.passed >= 1


# A cell outside the exercises that uses one, on purpose: chapter 4 compares the student's
# attention with torch's.  It fails alone in an unfinished notebook: it assigns only q, k, v
# (before the call) and diff, and every later cell that reads q, k or v assigns them first.
USES_AN_EXERCISE = {("04_encoder", "attention")}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_cell_outside_the_exercises_needs_one(path):
    """So an untouched or half-done notebook fails only the checks of what is not done: no
    cell but an exercise's own check reads a name that an exercise defines."""
    import ast

    key = _key(path.stem)
    exercises = set(A.exercise_names(key))
    found = set()
    for cell in key.cells:
        if cell.cell_type != "code" or A.is_solution(cell) or A.is_check(cell):
            continue
        names = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
        found |= {(path.stem, name) for name in names & exercises}
    assert found == {u for u in USES_AN_EXERCISE if u[0] == path.stem}


WRONG = {
    # masking that keeps the largest noise
    ("02_masking", "random_masking"): (
        "def random_masking(x, mask_ratio, noise=None):\n"
        "    n, L, d = x.shape\n"
        "    len_keep = int(L * (1 - mask_ratio))\n"
        "    noise = torch.rand(n, L) if noise is None else noise\n"
        "    ids_shuffle = torch.argsort(noise, dim=1, descending=True)\n"
        "    ids_restore = torch.argsort(ids_shuffle, dim=1)\n"
        "    x_masked = torch.gather(\n"
        "        x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).expand(-1, -1, d))\n"
        "    mask = torch.ones(n, L)\n"
        "    mask[:, :len_keep] = 0\n"
        "    return x_masked, torch.gather(mask, 1, ids_restore), ids_restore\n",
        "random_masking-check", "smallest noise"),
    # unshuffling with ids_shuffle instead of ids_restore
    ("02_masking", "restore_order"): (
        "def restore_order(x_masked, mask_token, ids_restore):\n"
        "    n, k, d = x_masked.shape\n"
        "    L = ids_restore.shape[1]\n"
        "    ids_shuffle = torch.argsort(ids_restore, dim=1)\n"
        "    x_full = torch.cat([x_masked, mask_token.expand(n, L - k, d)], dim=1)\n"
        "    return torch.gather(x_full, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, d))\n",
        "restore_order-check", "not ids_shuffle"),
    ("05_decoder", "unshuffle"): (
        "def unshuffle(x, mask_token, ids_restore):\n"
        "    n, t, d = x.shape\n"
        "    L = ids_restore.shape[1]\n"
        "    ids_shuffle = torch.argsort(ids_restore, dim=1)\n"
        "    x_ = torch.cat([x[:, 1:], mask_token.expand(n, L + 1 - t, -1)], dim=1)\n"
        "    x_ = torch.gather(x_, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, d))\n"
        "    return torch.cat([x[:, :1], x_], dim=1)\n",
        "unshuffle-check", "not ids_shuffle"),
    # the loss over all patches
    ("06_loss", "my_masked_mse_loss"): (
        "def my_masked_mse_loss(pred, target, mask):\n"
        "    return ((pred - target) ** 2).mean()\n",
        "my_masked_mse_loss-check", "mean over all four patches"),
    # the last two epochs compared, as if the loss had no noise
    ("08_pretraining", "still_learning"): (
        "def still_learning(epoch_losses, window=5):\n"
        "    return epoch_losses[-1] < epoch_losses[-2]\n",
        "still_learning-check", "compare the fall to the noise, not two epochs"),
    # a fixed threshold, whatever the number of images
    ("09_evaluation", "difference_is_real"): (
        "def difference_is_real(acc_a, acc_b, n):\n"
        "    return abs(acc_a - acc_b) > 0.01\n",
        "difference_is_real-check", "inside the noise"),
    # the BatchNorm's scale folded in, its mean forgotten
    ("09_evaluation", "fold_bn"): (
        "def fold_bn(bn, linear):\n"
        "    folded = torch.nn.Linear(linear.in_features, linear.out_features)\n"
        "    with torch.no_grad():\n"
        "        folded.weight.copy_(linear.weight * (bn.running_var + bn.eps).rsqrt())\n"
        "        folded.bias.copy_(linear.bias)\n"
        "    return folded\n",
        "fold_bn-check", "fold both into the weight and the bias"),
}


# Exercises whose text asks the student to use an earlier exercise of theirs.
BUILT_ON = {"unshuffle": ("Decoder-check",),
            "my_masked_mse_loss": ("my_forward_loss-check",)}


def _grade_wrong(case) -> A.Result:
    (chapter, gid), (source, check, _) = case  # chapters 8 and 9: it and the checks above it
    return _graded(gid, chapter, _with_solution(chapter, gid, source), up_to=check)


@pytest.fixture(scope="module")
def wrong_grades() -> dict:
    """Every plausible wrong answer graded, two at a time, the longest (chapter 9's) first:
    {(chapter, grade_id): Result}."""
    from concurrent.futures import ThreadPoolExecutor

    cases = sorted(WRONG.items(), reverse=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([c for c, _ in cases], pool.map(_grade_wrong, cases)))


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("chapter,gid", sorted(WRONG), ids=lambda x: x)
def test_plausible_wrong_answers_fail_with_a_helpful_message(wrong_grades, chapter, gid):
    result = wrong_grades[chapter, gid]
    _, check, hint = WRONG[chapter, gid]
    ok, message = result.checks[check]
    assert not ok and message.startswith("AssertionError") and hint in message, message
    # Every other check passes, except the package check (it grades every exercise)
    # and the checks of exercises the chapter builds on this one.  Chapters 8 and 9 are
    # graded up to this check: the others are the checks above it (none for a first one).
    others = [g for g in result.checks if g not in (check, "package-check", *BUILT_ON.get(gid, ()))]
    assert check in result.checks and (len(result.checks) >= 2 or chapter[:2] in TRAINS), result.checks
    failed = [g for g in others if not result.checks[g][0]]
    assert not failed, result.checks


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_class_folder_gives_the_expected_table(tmp_path):
    ch = "02_masking"
    solved = _solved(ch)
    deleted = copy.deepcopy(solved)  # a check cell deleted: it comes back and passes
    deleted.cells = [c for c in deleted.cells if A.grade_id(c) != "mask_from_ids-check"]
    edited = copy.deepcopy(solved)  # a check replaced by a print: the real one runs
    _cell(edited, "kept_at_both-check").source = "print('all good')"
    _cell(edited, "kept_at_both").source = (
        "def kept_at_both(noise, low, high):\n    return torch.tensor([19, 19, 19])")
    no_exercise = copy.deepcopy(solved)  # the exercise cell deleted: 0 for its check
    no_exercise.cells = [c for c in no_exercise.cells if A.grade_id(c) != "mask_from_ids"]
    loops = _with_solution(ch, "mask_from_ids",
                           "def mask_from_ids(ids_restore, len_keep):\n    while True:\n"
                           "        pass")
    crash = _with_solution(ch, "kept_at_both",
                           "import os\n\n\ndef kept_at_both(noise, low, high):\n"
                           "    os._exit(1)")
    copier = _with_solution(ch, "random_masking",
                            "def random_masking(x, mask_ratio, noise=None):\n"
                            "    return mae_from_scratch.random_masking(x, mask_ratio, noise)")
    subs = {"alice": solved, "bob": _student(ch), "carol": deleted, "dan": edited,
            "erin": no_exercise, "frank": loops, "grace": crash, "heidi": copier,
            "ivan.ipynb": "{ this is not json", "judy.pdf": b"%PDF-1.4 \x00\x01"}
    rows, results = _grade(tmp_path, ch, subs, cell_timeout=15)
    ids = ["random_masking-check", "restore_order-check", "mask_from_ids-check",
           "kept_at_both-check", "package-check"]
    assert list(rows["alice"])[:3 + len(ids)] == ["student", "passed", "total", *ids]
    P, F = "pass", "fail"
    expected = {
        "alice": [P, P, P, P, P],
        "bob": [F, F, F, F, F],
        "carol": [P, P, P, P, P],
        "dan": [P, P, P, F, P],
        "erin": [P, P, F, P, P],
        "frank": [P, P, F, P, P],
        "grace": [P, P, P, F, F],
        "heidi": [P, P, P, P, P],
        "ivan": [F, F, F, F, F],
        "judy": [F, F, F, F, F],
    }
    table = {s: [r[g] for g in ids] for s, r in rows.items()}
    assert table == expected, table
    for s, verdicts in expected.items():
        assert rows[s]["passed"] == str(verdicts.count(P)) and rows[s]["total"] == "5"
    why = {s: r["first_failure"] for s, r in rows.items()}
    assert why["alice"] == "" and why["carol"] == "" and why["heidi"] == ""
    assert why["bob"].startswith("random_masking-check: NotImplementedError")
    assert why["dan"].startswith("kept_at_both-check: AssertionError")
    assert why["erin"] == ("mask_from_ids-check: NameError: name 'mask_from_ids' is not defined "
                           "(the exercise cell mask_from_ids is not in the notebook)")
    assert why["frank"].startswith("mask_from_ids-check: Timeout of 15 seconds")
    assert why["grace"].startswith("kept_at_both-check: the kernel died or stopped")
    assert results["grace"].checks["package-check"][1].startswith("not run")
    assert why["ivan"].startswith("not a notebook") and why["judy"].startswith("not a notebook")
    assert rows["heidi"]["flags"] == ("random_masking-check: random_masking calls the package's "
                                      "own mae_from_scratch.masking.random_masking")
    assert all(rows[s]["flags"] == "" for s in rows if s != "heidi")
    # Each submission ran in a temporary copy: the folder is as it was handed in.
    assert _digest(tmp_path / "submissions") == _grade.handed_in
    assert (tmp_path / "grades.txt").read_text().count("\n") > 10


@pytest.mark.slow
@pytest.mark.notebooks
def test_the_command_line(tmp_path):
    folder = tmp_path / "subs" / "alice"  # one folder per student, nbgrader style
    folder.mkdir(parents=True)
    nbformat.write(_solved("01_patches"), folder / "01_patches.ipynb")
    out = tmp_path / "grades.csv"
    assert A.main(["--book", str(ROOT), "grade", str(tmp_path / "subs"), "--out", str(out),
                   "--jobs", "1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["student"], r["passed"], r["total"], r["flags"]) for r in rows] == [("alice", "1", "1", "")]
    assert A.main(["--book", str(ROOT), "generate", "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in CHAPTERS]
    assert sys.executable  # the grading runs nbval with this interpreter


@pytest.mark.slow
def test_the_toggle_in_a_sphinx_build_of_a_chapter(tmp_path):
    """A real (small) Sphinx build with myst-nb: solutions folded, hidden tests gone."""
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "extensions = ['myst_nb', 'sphinx_togglebutton', 'solution_toggle']\n"
        "nb_execution_mode = 'off'\n")
    nb = _key("02_masking")
    exercises = [c for c in nb.cells if A.BEGIN_SOLUTION in c.source or A.BEGIN_HIDDEN in c.source]
    nb.cells = [nbformat.v4.new_markdown_cell("# Exercises"), *exercises]
    nbformat.write(nb, src / "index.ipynb")
    out = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src),
                          str(tmp_path / "html")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    page = (tmp_path / "html" / "index.html").read_text()
    n = sum(c.cell_type == "code" and A.BEGIN_SOLUTION in c.source for c in exercises)
    assert page.count('class="toggle exercise-solution') == n
    assert page.count("YOUR CODE HERE") == n
    assert "BEGIN SOLUTION" not in page and "HIDDEN TESTS" not in page
    import html
    import re

    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "def random_masking(x, mask_ratio, noise=None):" in text  # the signature shows
