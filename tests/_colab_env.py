"""The Colab-like environment that tests/test_colab.py runs the chapters in.

A virtual environment (``.cache/colab-venv``) with what a Colab runtime has -- torch and
torchvision (hard-linked from this environment: Colab's come preinstalled), its usual
packages, Jupyter's kernel -- and this package installed from its wheel as the chapters'
setup cell installs it: not editable, its own dependencies, no extras.  ``make test`` builds
it in its first part (tests/test_colab_env.py, which also checks it), so that the notebook
part finds it ready; it is rebuilt when the wanted packages change, and the package is
reinstalled when its sources change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "colab-venv"
# What a Colab runtime has besides torch: its usual packages, and Jupyter's kernel.
COLAB_PACKAGES = ["numpy", "matplotlib", "pillow", "pandas", "scikit-learn", "ipykernel"]
# The book's tools, and the tests' own: none of them may be in the Colab environment.
NOT_IN_COLAB = ["myst_nb", "jupyter_book", "nbval", "pytest", "hypothesis", "transformers", "nbgrader"]


def run(cmd, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def python_of(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _sources_digest() -> str:
    """What the wheel is built from: the package's files and the project's metadata."""
    h = hashlib.sha256()
    files = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "LICENSE",
             *(p for p in (ROOT / "mae_from_scratch").rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    for path in sorted(files):
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def colab_python() -> Path:
    """The Colab-like environment's Python, built or brought up to date first."""
    from importlib import metadata

    py = python_of(VENV)
    # The same torch as the test environment (pip here takes it from the local disk), read
    # without importing it; a build tag such as +cu130 names a wheel pip finds by its plain version.
    torch_pins = [f"{name}=={metadata.version(name).split('+')[0]}" for name in ("torch", "torchvision")]
    marker, package_marker = VENV / "colab-packages.json", VENV / "package-sources.sha256"
    wanted = json.dumps(torch_pins + COLAB_PACKAGES)
    if not (py.is_file() and marker.is_file() and marker.read_text() == wanted):
        shutil.rmtree(VENV, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(VENV)])
        # Colab's runtime comes with torch installed: here it is this environment's torch and
        # torchvision with what they need, hard-linked in (5 GB that pip would unpack again).
        link_distributions(["torch", "torchvision"], py)
        run([str(py), "-m", "pip", "install", "-q", *torch_pins, *COLAB_PACKAGES])
        marker.write_text(wanted)
    digest = _sources_digest()
    if not (package_marker.is_file() and package_marker.read_text() == digest):
        with tempfile.TemporaryDirectory() as wheels:
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, str(ROOT)])
            (wheel,) = Path(wheels).glob("mae_from_scratch-*.whl")
            # As the setup cell installs it: not editable, its own dependencies, no extras.
            run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
            run([str(py), "-m", "pip", "install", "-q", str(wheel)])
        run([str(py), "-m", "pip", "check"])
        package_marker.write_text(digest)
    return py


def requirement_closure(names: list[str]) -> list:
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


def link_distributions(names: list[str], python: Path) -> None:
    """Install ``names`` and what they need into ``python``'s environment by hard-linking this
    environment's files (a copy where the two are on different disks).  A distribution the new
    environment already has in another version (setuptools) is uninstalled there first."""
    from packaging.utils import canonicalize_name

    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    present = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    for dist in requirement_closure(names):
        name = canonicalize_name(dist.metadata["Name"])
        if name in present:
            run([str(python), "-m", "pip", "uninstall", "-q", "-y", name])
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in sorted(tops):
            src, dst = Path(dist.locate_file(top)), site / top
            if dst.exists() or not src.exists():
                continue  # a folder several distributions share (nvidia/), linked once
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=link, symlinks=True)
            else:
                link(src, dst)

