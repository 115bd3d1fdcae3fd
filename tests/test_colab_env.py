"""The Colab-like environment that tests/test_colab.py runs the chapters in (tests/_colab_env.py).

Built and checked here, in `make test`'s first part, where a test worker's single-threaded
pip install runs beside the other worker's tests; the notebook part then finds it ready.
"""

from __future__ import annotations

import json

import pytest

import _colab_env as C

# Slow (pip installs); on the same test worker as tests/test_colab.py if run together with it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(name="colab")]


def test_the_environment_is_like_colabs():
    """The Colab-like runs mean something only if the book's tools are really absent and the
    package really comes from its wheel, not from this checkout."""
    python = C.colab_python()
    probe = ("import importlib.util, json, mae_from_scratch\n"
             f"print(json.dumps({{'file': mae_from_scratch.__file__, 'present': "
             f"[m for m in {C.NOT_IN_COLAB!r} if importlib.util.find_spec(m)]}}))")
    out = json.loads(C.run([str(python), "-c", probe], cwd=str(C.VENV.parent)).strip().splitlines()[-1])
    assert out["present"] == [], f"the Colab-like environment has the book's tools: {out['present']}"
    assert "site-packages" in out["file"] and not out["file"].startswith(str(C.ROOT / "mae_from_scratch")), out
