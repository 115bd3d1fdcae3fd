"""The rendered book, opened in a real browser (headless Chromium).

For every chapter page: it loads, its figures are there as images with alt text, math is
typeset by MathJax (no raw ``\\(`` left), the Colab launch link opens that chapter's notebook,
and no traceback is shown.  On every page, no code cell, output or code block needs a
horizontal scrollbar in a 1280x800 window.  Screenshots of the intro and the first chapter are saved to
``_build/screenshots/`` for people to look at.

Needs the built book (``make book``) and Chromium (Debian's ``chromium``).  Outside CI the
test skips with the reason when either is missing; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml

# Slow as a whole (a Chromium per page, about 3 s each): they check the rendered book, which
# `make test` builds and `make unit` does not.  On one test worker, so that a page's two tests
# share its one Chromium run (_probed).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(name="browser")]

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(condition: bool, reason: str):
    if not condition:
        if IN_CI:
            pytest.fail(reason + " (required when CI=true)")
        pytest.skip(reason)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _toc_files():
    """The files of the table of contents, in order (the root page not included)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc.get("parts", toc.get("chapters", [])))
    return files


def _chapters():
    return [f for f in _toc_files() if f.startswith("notebooks/")]


def _pages():
    """Every page of the book: the root page, the chapters and the other pages."""
    return [yaml.safe_load((ROOT / "_toc.yml").read_text())["root"], *_toc_files()]


def _run_chromium(*args, timeout=90):
    # A profile of its own for every run: Chromium refuses a profile that another Chromium
    # holds, and the tests run on two workers at once.
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            f"--user-data-dir={profile}", *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# Runs in the page once it has loaded: opens folded cells (the setup cell is folded), then
# lists every monospaced box that is wider inside than on the page, i.e. that scrolls sideways.
_OVERFLOW_PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
    var wide = [];
    document.querySelectorAll(".cell pre, .cell .output, div.highlight pre").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 1) {
        var lines = el.textContent.split("\\n");
        var longest = lines.reduce(function (a, b) { return b.length > a.length ? b : a; }, "");
        wide.push({scroll: el.scrollWidth, width: el.clientWidth, line: longest.slice(0, 120)});
      }
    });
    document.documentElement.setAttribute("data-overflow", JSON.stringify(wide));
  }, 300);
});
</script>"""


@functools.lru_cache(maxsize=None)
def _probed(page: Path) -> tuple[str, list[dict]]:
    """``page`` loaded in a 1280x800 window: its DOM once MathJax has typeset it (the virtual
    time budget lets it finish), and the code boxes that scroll sideways."""
    probe = page.with_name(f"_overflow_probe_{page.name}")  # beside it, so relative links resolve
    probe.write_text(page.read_text().replace("</body>", _OVERFLOW_PROBE + "</body>"))
    try:
        out = _run_chromium("--window-size=1280,800", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r'data-overflow="([^"]*)"', out.stdout)
    assert found, "the overflow probe did not run in the page"
    return out.stdout, json.loads(html.unescape(found.group(1)))


def _overflowing_boxes(page: Path) -> list[dict]:
    """The code boxes of ``page`` that scroll sideways in a 1280x800 window."""
    return _probed(page)[1]


def _rendered_dom(page: Path) -> str:
    return _probed(page)[0]


@pytest.fixture(scope="module")
def browser():
    _need(_chromium() is not None, "Chromium is not installed (apt-get install chromium)")
    _need((HTML / "index.html").is_file(), f"the book is not built ({HTML}): run `make book`")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return _chromium()


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_page(browser, chapter):
    page = HTML / f"{chapter}.html"
    assert page.is_file(), f"{page} was not built"
    dom = _rendered_dom(page)
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)

    # It loads: the chapter's own title is in the page.
    title = next(c.source for c in nb.cells if c.cell_type == "markdown").splitlines()[0].lstrip("# ").strip()
    assert title in dom, f"title {title!r} not found in the rendered page"

    # Its figures are present as images, with alt text, and the files exist.
    figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {}))
    imgs = re.findall(r'<img[^>]*src="(\.\./_images/[^"]+)"[^>]*>', dom)
    assert len(imgs) >= figures, f"{len(imgs)} images in the page, {figures} figures in the notebook"
    for tag in re.findall(r'<img[^>]*src="\.\./_images/[^"]+"[^>]*>', dom):
        alt = re.search(r'alt="([^"]*)"', tag)
        assert alt and alt.group(1).strip(), f"figure without alt text: {tag[:120]}"
    for src in imgs:
        assert (page.parent / src).resolve().is_file(), src

    # Math is typeset: MathJax output exists, no raw TeX delimiters remain, no MathJax errors.
    if "$" in "".join(c.source for c in nb.cells if c.cell_type == "markdown"):
        assert "<mjx-container" in dom, "MathJax did not typeset the page"
        assert not re.search(r'class="math[^"]*">\s*\\\(', dom), "raw \\( left in the page"
        assert "<mjx-merror" not in dom, "MathJax reported a TeX error"

    # The Colab launch link opens this chapter's notebook.
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    owner_repo = repo["url"].rstrip("/").split("github.com/")[1]
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{repo['branch']}/{chapter}.ipynb"
    assert colab in dom, f"no Colab link to {colab}"

    # No error output made it into the book.
    assert "Traceback (most recent call last)" not in dom
    assert 'class="output traceback' not in dom


@pytest.mark.parametrize("name", _pages())
def test_no_code_scrolls_sideways(browser, name):
    page = HTML / f"{name}.html"
    assert page.is_file(), f"{page} was not built"
    wide = _overflowing_boxes(page)
    assert not wide, f"{len(wide)} code boxes scroll sideways at 1280x800 in {name}:\n" + "\n".join(
        f"{w['scroll']} px in {w['width']} px: {w['line']}" for w in wide)


def test_overflow_probe_sees_a_wide_box(browser, tmp_path):
    """The probe is not blind: a page with one over-long code line is reported."""
    page = HTML / f"{_chapters()[0]}.html"
    wide_page = page.with_name("_wide_test_page.html")
    line = "x = '" + "w" * 150 + "'"
    wide_page.write_text(page.read_text().replace(
        "</article>", f'<div class="highlight"><pre>{line}</pre></div></article>', 1))
    try:
        wide = _overflowing_boxes(wide_page)
    finally:
        wide_page.unlink()
    assert any(w["line"].startswith("x = 'www") for w in wide), wide


def test_screenshots(browser):
    for name, page in (("intro", HTML / "book" / "intro.html"), ("chapter1", HTML / f"{_chapters()[0]}.html")):
        target = SCREENSHOTS / f"{name}.png"
        target.unlink(missing_ok=True)
        out = _run_chromium("--virtual-time-budget=20000", "--window-size=1280,1600",
                            f"--screenshot={target}", page.as_uri())
        assert out.returncode == 0, out.stderr[-2000:]
        assert target.is_file() and target.stat().st_size > 20_000, f"{target} is missing or blank"
