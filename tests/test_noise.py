"""noise.py: the standard error of an accuracy, and the rule chapter 9 reads gaps by."""

from __future__ import annotations

import math

import pytest

from mae_from_scratch.noise import REAL_GAP_SE, difference_is_real, gap_standard_error, standard_error


def test_the_standard_error_is_the_binomial_one():
    assert standard_error(0.5, 1000) == pytest.approx(math.sqrt(0.25 / 1000))
    assert standard_error(0.3, 1000) == pytest.approx(0.014491, abs=1e-6)
    # Chapter 9's text: "about 1.4 to 1.6 points at n = 1,000 for accuracies between 30% and 70%",
    # "about half a point on 10,000".
    ses = [100 * standard_error(p / 100, 1000) for p in range(30, 71)]
    assert 1.4 <= min(ses) and max(ses) <= 1.6
    assert 100 * standard_error(0.5, 10_000) == pytest.approx(0.5)
    assert standard_error(0.0, 10) == standard_error(1.0, 10) == 0.0
    assert standard_error(0.4, 400) == pytest.approx(2 * standard_error(0.4, 1600))  # 1 / sqrt(n)


def test_the_gap_adds_the_two_variances():
    a, b, n = 0.3, 0.6, 500
    assert gap_standard_error(a, b, n) == pytest.approx(math.sqrt(a * (1 - a) / n + b * (1 - b) / n))
    assert gap_standard_error(a, b, n) == gap_standard_error(b, a, n)


@pytest.mark.parametrize("a,b,n,real", [
    (0.500, 0.528, 1000, False),  # chapter 9's 2.8 points: 1.25 standard errors of the gap
    (0.500, 0.528, 10_000, True),  # 3.96
    (0.30, 0.38, 1000, True), (0.38, 0.30, 1000, True), (0.90, 0.91, 1000, False),
    (0.60, 0.605, 10_000, False), (0.442, 0.494, 10_000, True), (0.10, 0.12, 200, False),
])
def test_difference_is_real(a, b, n, real):
    assert difference_is_real(a, b, n) is real


def test_the_rule_is_two_standard_errors_of_the_gap_strictly():
    a, n = 0.5, 1000
    se = gap_standard_error(a, a, n)  # the gap's SE barely moves for a small shift of b
    b = a + REAL_GAP_SE * gap_standard_error(a, a + 2 * se, n) * 0.999
    assert not difference_is_real(a, b, n)
    assert difference_is_real(a, a + REAL_GAP_SE * gap_standard_error(a, a + 2.1 * se, n) * 1.01, n)
    assert difference_is_real(0.5, 0.528, 1000, z=1.0)  # a laxer rule, asked for


@pytest.mark.parametrize("acc,n,match", [(0.5, 0, "n must be"), (0.5, True, "n must be"), (0.5, 2.0, "n must be"),
                                         (1.2, 100, "accuracy must be"), (-0.1, 100, "accuracy must be")])
def test_bad_input_is_named(acc, n, match):
    with pytest.raises(ValueError, match=match):
        standard_error(acc, n)
