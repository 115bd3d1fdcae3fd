"""How far an accuracy measured on ``n`` images can move by chance, and when a gap is real.

An accuracy on ``n`` test images is a share of ``n`` independent right-or-wrong
answers: its standard error is ``sqrt(p (1 - p) / n)`` (the binomial one).  At
``n = 1,000`` and ``p`` between 30% and 70% that is 1.4 to 1.6 points; at ``n = 10,000``
about half a point.  Two accuracies measured on their own ``n`` images each differ by
chance with the standard error ``sqrt(se_a**2 + se_b**2)``; a gap of more than two of
those (about 95% of chance gaps are smaller) is called real here.  Measured on the *same*
images the two are correlated and the gap's noise is smaller, so the rule errs on the
side of "inside the noise".  It says nothing about the noise of training itself (seeds):
that needs runs with other seeds, compared in pairs.
"""

from __future__ import annotations

import math

REAL_GAP_SE = 2.0  # a gap larger than this many standard errors is called real


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy (a share in [0, 1]) measured on ``n`` images."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of images >= 1, got {n!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a share in [0, 1], got {accuracy!r}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def gap_standard_error(acc_a: float, acc_b: float, n: int) -> float:
    """The standard error of ``acc_a - acc_b``, each measured on ``n`` images."""
    return math.hypot(standard_error(acc_a, n), standard_error(acc_b, n))


def difference_is_real(acc_a: float, acc_b: float, n: int, z: float = REAL_GAP_SE) -> bool:
    """True when ``acc_a`` and ``acc_b`` (each on ``n`` images) differ by more than ``z``
    standard errors of their gap."""
    return abs(acc_a - acc_b) > z * gap_standard_error(acc_a, acc_b, n)
