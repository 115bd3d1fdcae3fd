"""Every chapter runs as Google Colab runs it, under nbval.

A reader in Colab has none of what the book build has: the setup cell installs this package
from the repository (not editable, with its own dependencies, none of the ``dev`` extra), and
the notebook sits alone in an empty folder, with no repository, no ``../shared`` and no
CIFAR-10 download.  These tests build that: a virtual environment (``.cache/colab-venv``)
with Colab's usual packages and this package installed from its wheel, a kernel that runs
in it, and an empty working folder per notebook, with the network closed by a proxy that
refuses every connection.  Each chapter then runs under nbval (``--nbval-lax``) on that
kernel: every cell must run, and every ``# NBVAL_CHECK_OUTPUT`` cell must print what its
saved output says.  This is the chapters' one nbval run in ``make test``; ``make nbval``
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
import sys
from pathlib import Path

import nbformat
import pytest

from mae_from_scratch import assignments as A

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "colab-venv"
CHAPTERS = A.chapters(ROOT)
# What a Colab runtime has besides torch: its usual packages, and Jupyter's kernel.
COLAB_PACKAGES = ["numpy", "matplotlib", "pillow", "pandas", "scikit-learn", "ipykernel"]
# The book's tools, and the tests' own: none of them may be in the Colab environment.
NOT_IN_COLAB = ["myst_nb", "jupyter_book", "nbval", "pytest", "hypothesis", "transformers", "nbgrader"]
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once

# Slow, and they run notebooks (`make test` runs them after the others, one at a time); kept
# on one test worker if run with pytest-xdist anyway: they share one environment.
pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.xdist_group(name="colab")]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def colab_python(tmp_path_factory) -> Path:
    """The Colab-like environment: built once (torch is the slow part), the package
    reinstalled from a fresh wheel on every run."""
    import torch
    import torchvision

    wheels = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)])
    (wheel,) = wheels.glob("mae_from_scratch-*.whl")
    py = _python(VENV)
    # The same torch as the test environment (pip here takes it from the local disk); a
    # build tag such as +cu130 names a wheel that pip finds by its plain version.
    torch_pins = [f"torch=={torch.__version__.split('+')[0]}",
                  f"torchvision=={torchvision.__version__.split('+')[0]}"]
    marker = VENV / "colab-packages.json"
    wanted = json.dumps(torch_pins + COLAB_PACKAGES)
    if not (py.is_file() and marker.is_file() and marker.read_text() == wanted):
        shutil.rmtree(VENV, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(VENV)])
        # Colab's runtime comes with torch installed: here it is this environment's torch and
        # torchvision with what they need, hard-linked in (5 GB that pip would unpack again).
        _link_distributions(["torch", "torchvision"], py)
        _run([str(py), "-m", "pip", "install", "-q", *torch_pins, *COLAB_PACKAGES])
        marker.write_text(wanted)
    # As the setup cell installs it: not editable, its own dependencies, no extras.
    _run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    _run([str(py), "-m", "pip", "check"])
    return py


def _requirement_closure(names: list[str]) -> list:
    """The installed distributions ``names`` need, themselves included, extras followed."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, seen, todo = {}, set(), [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        if (canonicalize_name(name), extra) in seen:
            continue
        seen.add((canonicalize_name(name), extra))
        dist = metadata.distribution(name)
        found[canonicalize_name(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return list(found.values())


def _link_distributions(names: list[str], python: Path) -> None:
    """Install ``names`` and what they need into ``python``'s environment by hard-linking this
    environment's files (a copy where the two are on different disks).  A distribution the new
    environment already has in another version (setuptools) is uninstalled there first."""
    from packaging.utils import canonicalize_name

    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    present = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    for dist in _requirement_closure(names):
        name = canonicalize_name(dist.metadata["Name"])
        if name in present:
            _run([str(python), "-m", "pip", "uninstall", "-q", "-y", name])
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in sorted(tops):
            src, dst = Path(dist.locate_file(top)), site / top
            if dst.exists() or not src.exists():
                continue  # a folder several distributions share (nvidia/), linked once
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=link, symlinks=True)
            else:
                link(src, dst)


def test_the_environment_is_like_colabs(colab_python):
    """The checks below mean something only if the book's tools are really absent and the
    package really comes from its wheel, not from this checkout."""
    probe = ("import importlib.util, json, mae_from_scratch\n"
             f"print(json.dumps({{'file': mae_from_scratch.__file__, 'present': "
             f"[m for m in {NOT_IN_COLAB!r} if importlib.util.find_spec(m)]}}))")
    out = json.loads(_run([str(colab_python), "-c", probe], cwd=str(VENV.parent)).strip().splitlines()[-1])
    assert out["present"] == [], f"the Colab-like environment has the book's tools: {out['present']}"
    assert "site-packages" in out["file"] and not out["file"].startswith(str(ROOT / "mae_from_scratch")), out


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
    # pytest and nbval run here; the notebook's kernel runs in the Colab-like environment.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(content),
         "--nbval-lax", "--nbval-kernel-name", "colab", "--nbval-cell-timeout", "900", path.name],
        cwd=content, env=env, capture_output=True, text=True, timeout=1800)


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
