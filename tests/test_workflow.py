"""The GitHub Actions workflow that publishes the book (.github/workflows/book.yml).

actionlint checks every workflow (syntax, expressions, the inputs of the actions it knows, and the
``run:`` scripts with shellcheck where that is installed); any finding fails.  The dev extra
installs it; outside CI the test skips with the reason when it is missing, with ``CI=true`` it
fails instead.  The other tests read the workflow itself: the book it publishes is the one
``make book`` builds, the one CI tests.  The book executes nothing: every chapter must have been
saved executed, with the code it holds (tools/run_notebooks.py stamps it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BOOK = WORKFLOWS / "book.yml"
IN_CI = os.environ.get("CI", "").lower() == "true"

sys.path.insert(0, str(ROOT / "tools"))

import run_notebooks  # noqa: E402


def _actionlint():
    """The actionlint command: on PATH, or beside this Python (the dev extra, .venv not activated)."""
    beside = Path(sys.executable).parent / ("actionlint.exe" if os.name == "nt" else "actionlint")
    return shutil.which("actionlint") or (str(beside) if beside.is_file() else None)


def _workflow():
    return yaml.safe_load(BOOK.read_text())


def _steps(job):
    return _workflow()["jobs"][job]["steps"]


def _uses(step, action):
    return step.get("uses", "").split("@")[0] == action


def test_actionlint_finds_nothing_in_the_workflows():
    files = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert BOOK in files
    exe = _actionlint()
    if exe is None:
        reason = "actionlint is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(reason + " (required when CI=true)")
        pytest.skip(reason)
    result = subprocess.run([exe, "-no-color", *[str(f.relative_to(ROOT)) for f in files]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_actionlint_is_not_blind():
    """The check above fails on a broken workflow (an unknown event, a job's undefined output)."""
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint is not installed")
    broken = ("on: pushh\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
              "    steps:\n      - run: echo ${{ steps.x.outputs.y }}\n")
    result = subprocess.run([exe, "-no-color", "-"], input=broken, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "pushh" in result.stdout, result.stdout + result.stderr


def test_the_published_book_is_the_one_make_book_builds():
    """The build job runs `make book` (and no jupyter-book of its own) before uploading _build/html."""
    steps = _steps("build")
    runs = [i for i, s in enumerate(steps) if "run" in s]
    make_book = [i for i in runs if re.search(r"(^|\n|&&|;)\s*make book\s*($|\n|&&|;)", steps[i]["run"])]
    assert make_book, "no step of the build job runs `make book`"
    assert not [i for i in runs if re.search(r"\b(jupyter-book|jb|sphinx-build)\b", steps[i]["run"])], \
        "the book is built by `make book` only, so that what is published is what CI builds"
    upload = [i for i, s in enumerate(steps) if _uses(s, "actions/upload-pages-artifact")]
    assert len(upload) == 1 and upload[0] > make_book[0]
    assert steps[upload[0]]["with"]["path"].rstrip("/") == "_build/html"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^book:.*\n(\t.*\n)*\t\$\(BIN\)/jupyter-book build \. --builder html", makefile, re.M)


def test_deploy_job_publishes_to_pages():
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["branches"] == ["main"] and "workflow_dispatch" in triggers
    assert wf["permissions"] == {"contents": "read"}
    assert wf["concurrency"]["group"] == "pages"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert deploy["environment"] == {"name": "github-pages",
                                     "url": "${{ steps.deployment.outputs.page_url }}"}
    [step] = [s for s in deploy["steps"] if _uses(s, "actions/deploy-pages")]
    assert step["id"] == "deployment"
    assert any(_uses(s, "actions/checkout") for s in _steps("build"))
    assert any(_uses(s, "actions/setup-python") for s in _steps("build"))


def test_the_book_executes_nothing_and_the_workflow_caches_nothing():
    """The book shows the chapters as saved (nbval runs them in the tests): the build executes
    nothing, so the workflow has no execution cache to keep."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert not [s for s in _steps("build") if _uses(s, "actions/cache")]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_every_chapter_was_saved_executed_with_the_code_it_holds(path):
    """The book renders the saved outputs, so each chapter must have been executed whole
    (tools/run_notebooks.py) after its code last changed."""
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("mae_from_scratch", {}).get("code_sha256")
    assert stamp == run_notebooks.code_sha256(nb), (
        f"{path.name} changed since it was executed: run `make notebooks` (or "
        f"`python tools/run_notebooks.py {path.relative_to(ROOT)}`)")
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name} was not executed top to bottom in one run"


def test_the_freshness_check_sees_an_edited_cell():
    nb = nbformat.read(ROOT / "notebooks" / "01_patches.ipynb", as_version=4)
    before = run_notebooks.code_sha256(nb)
    next(c for c in nb.cells if c.cell_type == "code").source += "\n# edited"
    assert run_notebooks.code_sha256(nb) != before
    next(c for c in nb.cells if c.cell_type == "markdown").source += " edited"
    nb2 = nbformat.read(ROOT / "notebooks" / "01_patches.ipynb", as_version=4)
    next(c for c in nb2.cells if c.cell_type == "markdown").source += " edited"
    assert run_notebooks.code_sha256(nb2) == before  # prose is not code


