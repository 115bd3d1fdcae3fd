"""Serve MathJax from the book itself when a local copy is there.

`make book` copies the npm package `mathjax@3` into `book/_static/mathjax/` when npm is
available, so the rendered pages typeset math without a network.  Without that copy the
pages fall back to MathJax's CDN, and the build says so.  CI (CI=true) requires the local
copy: a book whose math only works online would not be tested as readers offline see it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

STATIC = Path("book") / "_static"
ENTRY = "mathjax/tex-mml-chtml.js"


def _choose_mathjax(app, config):
    static = Path(app.srcdir) / STATIC
    if (static / ENTRY).is_file():
        if not {str(STATIC), str(static)} & set(config.html_static_path):  # _config.yml lists it
            config.html_static_path = list(config.html_static_path) + [str(static)]
        config.mathjax_path = ENTRY  # relative to the built _static folder
        logger.info("MathJax: using the local copy in %s", static / "mathjax")
    elif os.environ.get("CI", "").lower() == "true":
        raise ExtensionError(
            f"MathJax: no local copy at {static / ENTRY}; CI requires it (run `make mathjax`, which needs npm)"
        )
    else:
        logger.info("MathJax: no local copy (npm was not available); the pages load MathJax from its CDN")


def setup(app):
    app.connect("config-inited", _choose_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
