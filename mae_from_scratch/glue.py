"""Numbers that a chapter's prose quotes from the cells above it.

In the book, myst-nb's ``glue`` stores a value under a name and the text shows it with
``{glue:text}`name:.1%```, so the page quotes what the code computed, never a number typed
by hand.  myst-nb belongs to the book build only: a chapter opened in Google Colab or in a
plain Jupyter has no myst-nb, and its markdown shows the role itself, not the number.  There
the same call prints the number instead, formatted as the text formats it, so every reader
sees every number.
"""

from __future__ import annotations

try:  # the book build (the ``dev`` extra)
    from myst_nb import glue as _myst_glue
except ImportError:  # Colab, a plain Jupyter, a script
    _myst_glue = None


def glue(name: str, value, fmt: str = "") -> None:
    """Store ``value`` as ``name`` for the book's ``{glue:text}`` roles, or, where the book's
    tools are absent, print ``name: value`` formatted with ``fmt`` (the role's own format)."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()  # a numpy or torch scalar: its repr would not parse as a number
    if _myst_glue is not None:
        _myst_glue(name, value, display=False)
        return
    try:
        shown = format(value, fmt)
    except (TypeError, ValueError):  # a format that does not fit the value: show it as it is
        shown = str(value)
    print(f"{name}: {shown}")
