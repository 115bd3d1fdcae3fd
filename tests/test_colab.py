"""Every chapter, and every solved student notebook, runs as Google Colab runs it.

A reader in Colab has none of what the book build has: the setup cell installs this package
from the repository (not editable, with its own dependencies, none of the ``dev`` extra), and
the notebook sits alone in an empty folder, with no repository, no ``../shared`` and no
CIFAR-10 download.  These tests build that: a virtual environment (``.cache/colab-venv``)
with Colab's usual packages and this package installed from its wheel, a kernel that runs
in it, and an empty working folder per notebook, with the network closed by a proxy that
refuses every connection.  Each notebook must then run top to bottom without an error.

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
from test_assignments import _solved  # the student notebook, its exercises solved

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "colab-venv"
CHAPTERS = A.chapters(ROOT)
# What a Colab runtime has besides torch: its usual packages, and Jupyter's kernel.
COLAB_PACKAGES = ["numpy", "matplotlib", "pillow", "pandas", "scikit-learn", "ipykernel"]
# The book's tools, and the tests' own: none of them may be in the Colab environment.
NOT_IN_COLAB = ["myst_nb", "jupyter_book", "nbval", "pytest", "hypothesis", "transformers", "nbgrader"]
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once

pytestmark = pytest.mark.slow


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
        _run([str(py), "-m", "pip", "install", "-q", *torch_pins, *COLAB_PACKAGES])
        marker.write_text(wanted)
    # As the setup cell installs it: not editable, its own dependencies, no extras.
    _run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    _run([str(py), "-m", "pip", "check"])
    return py


def test_the_environment_is_like_colabs(colab_python):
    """The checks below mean something only if the book's tools are really absent and the
    package really comes from its wheel, not from this checkout."""
    probe = ("import importlib.util, json, mae_from_scratch\n"
             f"print(json.dumps({{'file': mae_from_scratch.__file__, 'present': "
             f"[m for m in {NOT_IN_COLAB!r} if importlib.util.find_spec(m)]}}))")
    out = json.loads(_run([str(colab_python), "-c", probe], cwd=str(VENV.parent)).strip().splitlines()[-1])
    assert out["present"] == [], f"the Colab-like environment has the book's tools: {out['present']}"
    assert "site-packages" in out["file"] and not out["file"].startswith(str(ROOT / "mae_from_scratch")), out


CASES = [pytest.param("chapter", p.stem, id=f"chapter-{p.stem[:2]}") for p in CHAPTERS] + [
    pytest.param("student", p.stem, id=f"student-{p.stem[:2]}") for p in CHAPTERS]


@pytest.mark.parametrize("kind, name", CASES)
def test_runs_alone_in_an_empty_folder(colab_python, tmp_path, monkeypatch, kind, name):
    from nbclient import NotebookClient

    nb = (nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4) if kind == "chapter"
          else _solved(name))
    content = tmp_path / "content"  # Colab's working folder, empty but for the notebook
    content.mkdir()
    nbformat.write(nb, str(content / f"{name}.ipynb"))
    spec = tmp_path / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(colab_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel inherits this process's environment: take away what Colab does not have.
    for var in ("PYTHONPATH", "MAE_CIFAR10_TAR", "VIRTUAL_ENV", "MPLBACKEND", "CI", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, CLOSED_PROXY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()

    client = NotebookClient(nb, kernel_name="colab", timeout=900, allow_errors=False,
                            resources={"metadata": {"path": str(content)}})
    client.execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream")
    assert "device: cpu" in text
    if any("locate_cifar10" in c.source for c in nb.cells if c.cell_type == "code"):
        # No archive and no network: the chapter says so in one line and goes on.
        assert "no CIFAR-10 here" in text, "a chapter fell back to the photos without saying so"
    glued = {line.split("`", 1)[0] for c in nb.cells if c.cell_type == "markdown"
             for line in c.source.split("{glue:text}`")[1:]}
    names = {g.split(":", 1)[0] for g in glued}
    missing = sorted(n for n in names if f"\n{n}: " not in f"\n{text}")
    assert not missing, f"numbers the text quotes but Colab's reader never sees: {missing}"
