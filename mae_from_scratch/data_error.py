"""The error of the data modules: a data set cannot be read.

:mod:`~mae_from_scratch.archives`, :mod:`~mae_from_scratch.data` and
:mod:`~mae_from_scratch.image_check` all raise it.  ``data`` imports
``archives``, so defined in ``data`` it would make an import cycle; it has a
module of its own rather than living in ``archives``, which it is not about.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """A data set cannot be read; the message says which path and why."""
