"""No code cell, output or code block of any notebook is wider than the book's text column.

The static half of the check (no browser needed); tests/test_browser.py measures the
rendered pages in Chromium.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_line_width  # noqa: E402


@pytest.mark.parametrize("path", check_line_width.notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_line_wider_than_the_page(path):
    bad = check_line_width.long_lines(path)
    assert not bad, f"{len(bad)} lines wider than {check_line_width.MAX_WIDTH} characters:\n" + "\n".join(bad)


def test_the_check_finds_long_code_outputs_and_code_blocks(tmp_path):
    long = "x" * (check_line_width.MAX_WIDTH + 1)
    fits = "y" * check_line_width.MAX_WIDTH
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(f"a = 1\nb = '{long}'")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{fits}\n{long}\n"),
                    nbformat.v4.new_output("stream", name="stderr", text=f"{long}\r{fits}\n")]
    nb.cells = [code, nbformat.v4.new_markdown_cell(f"prose may be long: {long}\n\n```text\n{long}\n```")]
    path = tmp_path / "wide.ipynb"
    nbformat.write(nb, path)
    found = check_line_width.long_lines(path)
    # the code line, the stdout line, the fenced line; not the overwritten progress line, not prose
    assert [f.split(":")[0] for f in found] == ["wide.ipynb cell 0 (code)", "wide.ipynb cell 0 (output)",
                                                "wide.ipynb cell 1 (code block)"]


def test_the_setup_cell_template_fits():
    import stamp_setup_cell

    widest = max(len(line) for line in stamp_setup_cell.setup_source().splitlines())
    assert widest <= check_line_width.MAX_WIDTH
