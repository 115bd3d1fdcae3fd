"""The GitHub Actions workflow that publishes the book (.github/workflows/book.yml).

actionlint checks every workflow (syntax, expressions, the inputs of the actions it knows, and the
``run:`` scripts with shellcheck where that is installed); any finding fails.  The dev extra
installs it; outside CI the test skips with the reason when it is missing, with ``CI=true`` it
fails instead.  The other tests read the workflow itself: the book it publishes is the one
``make book`` builds, the one CI tests, and the execution cache it keeps is the one the book uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BOOK = WORKFLOWS / "book.yml"
IN_CI = os.environ.get("CI", "").lower() == "true"

sys.path.insert(0, str(ROOT / "tools"))

import book_inputs  # noqa: E402


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


def test_cached_chapters_are_the_books_execution_cache():
    """The workflow caches the directory where jupyter-cache keeps the executed chapters, and the
    book executes in cache mode (in force mode the cache would be written and never read)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert not config["execute"].get("cache"), "the cache lives in its default place, _build/.jupyter_cache"
    [cache] = [s for s in _steps("build") if _uses(s, "actions/cache")]
    assert cache["with"]["path"] == "_build/.jupyter_cache"
    assert "JCACHE := _build/.jupyter_cache" in (ROOT / "Makefile").read_text()


def test_book_inputs_sum_follows_the_package_not_its_bytecode(tmp_path):
    """tools/book_inputs.py (which empties the execution cache in `make book`) changes with a package
    file, _config.yml or the installed versions, and not with __pycache__."""
    (tmp_path / "mae_from_scratch" / "__pycache__").mkdir(parents=True)
    (tmp_path / "mae_from_scratch" / "model.py").write_text("x = 1\n")
    (tmp_path / "_config.yml").write_text("title: t\n")
    base = book_inputs.inputs_sum(tmp_path, installed="torch==2.3.1\n")
    assert book_inputs.inputs_sum(tmp_path, installed="torch==2.3.1\n") == base
    (tmp_path / "mae_from_scratch" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    assert book_inputs.inputs_sum(tmp_path, installed="torch==2.3.1\n") == base
    assert book_inputs.inputs_sum(tmp_path, installed="torch==2.4.0\n") != base
    (tmp_path / "mae_from_scratch" / "model.py").write_text("x = 2\n")
    changed = book_inputs.inputs_sum(tmp_path, installed="torch==2.3.1\n")
    assert changed != base
    (tmp_path / "_config.yml").write_text("title: u\n")
    assert book_inputs.inputs_sum(tmp_path, installed="torch==2.3.1\n") != changed
