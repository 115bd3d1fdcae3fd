"""Find lines that would make a code cell or its output scroll sideways in the book.

The rendered book's text column fits 88 characters of code at 1280x800 (see
``book/_static/book.css``), so every line a reader sees in a monospaced box must fit:
code cell sources, printed text outputs, and fenced code blocks in markdown cells.
This is the static half of the check (it needs no browser); ``tests/test_browser.py``
measures the rendered pages in Chromium.

    python tools/check_line_width.py                      # every notebook in the repository
    python tools/check_line_width.py notebooks/02_*.ipynb
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MAX_WIDTH = 88
SKIP_DIRS = {".venv", "venv", "_build", ".ipynb_checkpoints", "node_modules", ".git", ".cache"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FENCE = re.compile(r"^\s*(```|~~~)")


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook of the repository (chapters, and any generated from them)."""
    return sorted(p for p in root.rglob("*.ipynb") if not SKIP_DIRS & set(p.relative_to(root).parts))


def _output_text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("execute_result", "display_data"):
        data = output.get("data", {})
        # A rich form (figure, HTML) is what the book shows instead of the plain text.
        if "text/plain" in data and not any(k in data for k in ("image/png", "text/html", "image/svg+xml")):
            return data["text/plain"]
    if output.output_type == "error":
        return "\n".join(output.get("traceback", []))
    return ""


def _fenced_lines(markdown: str):
    inside = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        if inside:
            yield line


def long_lines(path: Path, width: int = MAX_WIDTH) -> list[str]:
    """``'file cell N (kind): length: line'`` for every line wider than ``width``."""
    nb = nbformat.read(path, as_version=4)
    found = []

    def check(i: int, kind: str, text: str) -> None:
        # A carriage return redraws the line (progress bars): only what follows it stays.
        for line in text.split("\n"):
            shown = _ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip()
            if len(shown) > width:
                found.append(f"{path.name} cell {i} ({kind}): {len(shown)}: {shown[:100]}")

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            check(i, "code", cell.source)
            for out in cell.get("outputs", []):
                check(i, "output", _output_text(out))
        elif cell.cell_type == "markdown":
            check(i, "code block", "\n".join(_fenced_lines(cell.source)))
    return found


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or notebooks()
    bad = [line for p in paths for line in long_lines(p)]
    for line in bad:
        print(line)
    print(f"{len(bad)} lines wider than {MAX_WIDTH} characters in {len(paths)} notebooks")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
