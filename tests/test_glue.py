"""``mae_from_scratch.glue``: numbers the chapters quote reach every reader.

In the book build, a chapter's ``glue(name, value, fmt)`` stores the value for the text's
``{glue:text}`` roles; where myst-nb is absent (Colab, a plain Jupyter), it prints
``name: value``.  The chapters run in a Colab-like environment in ``test_colab.py``; these
tests check the two branches directly, and that every quoted name is glued by its chapter.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.fixture
def fresh_glue(monkeypatch):
    """The glue module imported again with ``myst_nb`` as given (None: not installed); the
    real one is imported again afterwards."""
    import mae_from_scratch.glue as g

    def load(myst_nb):
        monkeypatch.setitem(sys.modules, "myst_nb", myst_nb)
        return importlib.reload(g)

    yield load
    monkeypatch.undo()
    importlib.reload(g)


def test_without_myst_nb_glue_prints_the_value_in_the_texts_format(fresh_glue, capsys):
    g = fresh_glue(None)
    g.glue("speedup", 3.4912, ".2f")
    g.glue("images", 50_000, ",")
    g.glue("name", "cls", ".2f")  # a format that does not fit: shown as it is
    assert capsys.readouterr().out.splitlines() == ["speedup: 3.49", "images: 50,000", "name: cls"]


def test_with_myst_nb_glue_stores_and_prints_nothing(fresh_glue, capsys):
    stored = []
    fake = type(sys)("myst_nb")
    fake.glue = lambda name, value, display=True: stored.append((name, value, display))
    g = fresh_glue(fake)
    g.glue("speedup", 3.4912, ".2f")
    assert stored == [("speedup", 3.4912, False)] and capsys.readouterr().out == ""


def test_a_numpy_or_torch_scalar_is_stored_as_a_plain_number(fresh_glue):
    """myst-nb formats a role from the value's text; np.float64(0.5) would not parse."""
    import numpy as np
    import torch

    stored = []
    fake = type(sys)("myst_nb")
    fake.glue = lambda name, value, display=True: stored.append((name, value))
    g = fresh_glue(fake)
    g.glue("a", np.float32(0.25), ".2f")
    g.glue("b", torch.tensor(3), ",")
    assert stored == [("a", 0.25), ("b", 3)] and all(type(v) in (float, int) for _, v in stored)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_quoted_number_is_glued_by_its_chapter(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    quoted = {m.split(":", 1)[0] for m in re.findall(r"\{glue:text\}`([^`]+)`", text)}
    glued = set(re.findall(r"\bglue\(\s*[\"']([^\"']+)[\"']", code))
    # Names made in a loop, glue(f"block{k}_probe", ...): each {...} stands for a name's part.
    made = [re.compile(re.sub(r"\\\{[^}]*\\\}", "[A-Za-z0-9_]+", re.escape(name)) + "$")
            for name in re.findall(r"\bglue\(\s*f[\"']([^\"']+)[\"']", code)]
    never = sorted(q for q in quoted - glued if not any(m.match(q) for m in made))
    assert not never, f"{path.name} quotes numbers it never glues: {never}"
