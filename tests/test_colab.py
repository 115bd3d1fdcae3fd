"""Every chapter runs as Google Colab runs it, under nbval.

A reader in Colab has none of what the book build has: the setup cell installs this package
from the repository (not editable, with its own dependencies, none of the ``dev`` extra), and
the notebook sits alone in an empty folder, with no repository, no ``../shared`` and no
CIFAR-10 download.  These tests build that: a virtual environment (``.cache/colab-venv``,
built by tests/_colab_env.py) with Colab's usual packages and this package installed from its
wheel, a kernel that runs in it, and an empty working folder per notebook, with the network
closed by a proxy that refuses every connection.  Each chapter then runs under nbval
(``--nbval-lax``) on that kernel: every cell must run, and every ``# NBVAL_CHECK_OUTPUT``
cell must print what its saved output says.  This is the chapters' one nbval run in ``make test``; ``make nbval``
runs it in place on the development kernel.

The chapters run two at a time, each kernel on one thread (Colab's runtime gives torch its two
cores; the saved outputs that nbval compares are the same on one thread).  Chapters 8 and 9
find no CIFAR-10 here and train on the package's photos, as a reader offline does; their
CIFAR-10 path runs where the book's saved outputs are made (``make notebooks``, with
``../shared``'s archive), and ``test_workflow.py`` refuses a chapter whose saved outputs are
older than its code.  A solved student notebook runs these very cells
(``test_a_solved_submission_runs_the_chapter_itself``), so this run is also the solved
submissions' run; ``test_assignments.py`` grades them again through the grader, chapters 8
and 9 up to their exercises' last check.

What they cannot show: Colab's own versions (Python 3.13, torch 2.11 and numpy 2.1 as of
August 2026; here the machine's Python and torch, and numpy as pip resolves it), and its
GPU.  ``test_project.py`` parses every file with Python 3.13's grammar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

import _colab_env as colab_venv
from mae_from_scratch import assignments as A
from mae_from_scratch.assignments.grading import nbval_alone

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = A.chapters(ROOT)
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once

# Slow, and they run notebooks (`make test` runs them after the others, one at a time); kept
# on one test worker if run with pytest-xdist anyway: they share one environment.
pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.xdist_group(name="colab")]


@pytest.fixture(scope="module")
def colab_python() -> Path:
    """The Colab-like environment (tests/_colab_env.py): `make test` builds and checks it in
    its first part (tests/test_colab_env.py); here it is ready, or brought up to date."""
    return colab_venv.colab_python()


def _colab_kernel(folder: Path, python: Path) -> Path:
    """A Jupyter kernel named ``colab`` that runs ``python``; returns the JUPYTER_PATH entry."""
    spec = folder / "kernels" / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like", "language": "python"}))
    return folder


def _colab_env(tmp_path: Path, jupyter_path: Path) -> dict:
    """This process's environment without what Colab lacks, a fresh HOME, the network closed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MAE_CIFAR10_TAR", "VIRTUAL_ENV", "MPLBACKEND", "CI", "NO_PROXY", "no_proxy")}
    env.update({var: CLOSED_PROXY for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                              "ALL_PROXY", "all_proxy")})
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), JUPYTER_PATH=str(jupyter_path))
    return env


def _run_chapter(path: Path, python: Path, folder: Path) -> subprocess.CompletedProcess:
    content = folder / "content"  # Colab's working folder, empty but for the notebook
    content.mkdir(parents=True)
    shutil.copy(path, content / path.name)
    env = _colab_env(folder, _colab_kernel(folder / "jupyter", python))
    # Two chapters run side by side, each kernel on one thread: two cores kept busy.
    env["OMP_NUM_THREADS"] = "1"
    # pytest and nbval run here, as the grader runs them; the notebook's kernel runs in the
    # Colab-like environment.
    cmd, env = nbval_alone(["--rootdir", str(content), "--nbval-lax", "--nbval-kernel-name", "colab",
                            "--nbval-cell-timeout", "900", path.name], env)
    return subprocess.run(cmd, cwd=content, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def chapter_runs(colab_python, tmp_path_factory) -> dict:
    """Every chapter under nbval in the Colab-like environment, two at a time, the longest
    (chapters 9 and 8) first: {chapter: the finished pytest process}."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(CHAPTERS, key=lambda p: p.stem, reverse=True)
    folders = [tmp_path_factory.mktemp(p.stem) for p in paths]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda pf: _run_chapter(pf[0], colab_python, pf[1]), zip(paths, folders))
        return {p.stem: run for p, run in zip(paths, runs)}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_chapter_passes_nbval_alone_in_an_empty_folder(chapter_runs, path):
    proc = chapter_runs[path.stem]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{path.name} under nbval in the Colab-like environment:\n" + (
        proc.stdout[-6000:] + proc.stderr[-2000:])
    cells = sum(c.cell_type == "code" for c in nbformat.read(path, as_version=4).cells)
    assert f"{cells} passed" in summary, summary  # every code cell ran as a test
