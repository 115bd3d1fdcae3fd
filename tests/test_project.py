"""The repository's own consistency: notebooks, configuration, dependencies."""

import re
import sys
import tomllib
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import stamp_setup_cell  # noqa: E402


def test_every_notebook_setup_cell_matches_config():
    assert stamp_setup_cell.notebooks(), "no chapter notebooks found"
    assert stamp_setup_cell.drifted() == []


def test_setup_cell_names_the_configured_repository():
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    src = stamp_setup_cell.setup_source()
    assert f"git+{repo['url']}@{repo['branch']}" in src
    assert 'if "google.colab" in sys.modules' in src


def test_drift_is_detected(tmp_path, monkeypatch):
    """Changing the repository in _config.yml makes every notebook count as drifted."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg["repository"]["branch"] = "some-other-branch"
    alt = tmp_path / "_config.yml"
    alt.write_text(yaml.safe_dump(cfg))
    original = stamp_setup_cell.setup_source
    monkeypatch.setattr(stamp_setup_cell, "setup_source", lambda: original(alt))
    assert stamp_setup_cell.drifted() == [p.name for p in stamp_setup_cell.notebooks()]


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower().replace("_", "-"): r.replace(" ", "") for r in reqs}


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _names([r for r in pip_section if not r.startswith("-e")])
    assert listed == wanted


def test_every_notebook_is_in_the_toc_and_has_a_check_cell():
    toc = (ROOT / "_toc.yml").read_text()
    for path in stamp_setup_cell.notebooks():
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"
        nb = nbformat.read(path, as_version=4)
        checks = [c for c in nb.cells if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source]
        assert checks, f"{path.name} has no '# NBVAL_CHECK_OUTPUT' check cell"
        for c in checks:
            assert "assert" in c.source, f"a check cell of {path.name} asserts nothing"
            assert c.outputs, f"a check cell of {path.name} has no saved output for nbval to compare"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} has saved error outputs"


def _exercise_cells(nb):
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "### BEGIN SOLUTION" in c.source]


def test_exercises_are_marked_and_checked():
    """Chapters 2 onward carry at least two nbgrader-style exercises, each followed by a check."""
    for path in stamp_setup_cell.notebooks():
        nb = nbformat.read(path, as_version=4)
        cells = _exercise_cells(nb)
        for i in cells:
            src = nb.cells[i].source
            assert src.count("### BEGIN SOLUTION") == src.count("### END SOLUTION"), path.name
            after = [c for c in nb.cells[i + 1:] if c.cell_type == "code"]
            assert after and "assert" in after[0].source, f"{path.name}: exercise cell {i} is not followed by a check"
        if not path.name.startswith("01_"):
            assert len(cells) >= 2, f"{path.name} has {len(cells)} exercise cells, expected at least 2"
