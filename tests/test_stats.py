"""Wilson intervals and exact McNemar tests against hand-computed values (including 0/n and n/n)."""

from __future__ import annotations

import pytest

from llava.eval.stats import compare_paired, format_accuracy, mcnemar_exact, paired_difference_interval, wilson_interval


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (5, 10, 0.236593, 0.763407),   # centre 0.5, half z*sqrt(0.025 + z^2/400) / (1 + z^2/10)
    (0, 10, 0.0, 0.277530),        # 0/n: upper = (z^2/n) / (1 + z^2/n)
    (10, 10, 0.722470, 1.0),       # n/n: the mirror image
    (81, 150, 0.460236, 0.617762),  # by hand: centre 0.538999, half 0.078763
    (0, 1, 0.0, 0.793451),
])
def test_wilson_interval(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-6) and hi == pytest.approx(high, abs=5e-6)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)
    assert format_accuracy(5, 10) == "50.0 [23.7, 76.3] (n=10)"


@pytest.mark.parametrize(("b", "c", "p"), [
    (0, 0, 1.0),                   # no discordant pair
    (0, 5, 0.0625),                # 2 * 0.5^5
    (1, 9, 22 / 1024),             # 2 * (C(10,0) + C(10,1)) / 2^10
    (3, 3, 1.0),                   # 2 * 42/64 > 1 -> 1
    (9, 1, 22 / 1024),             # symmetric
    (0, 10, 2 / 1024),
])
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_compare_paired_counts_discordant_pairs():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, True]
    cmp = compare_paired(a, b)
    assert (cmp.n, cmp.correct_a, cmp.correct_b, cmp.b, cmp.c) == (6, 3, 5, 1, 3)
    assert cmp.p_value == pytest.approx(2 * (1 + 4) / 16)
    with pytest.raises(ValueError, match="same questions"):
        compare_paired(a, b[:-1])


@pytest.mark.parametrize(("both", "only_a", "only_b", "neither", "low", "high"), [
    (36, 12, 2, 0, 0.0569, 0.3404),   # Newcombe (1998), Table II example (a), method 10
    (5, 5, 0, 40, 0.0146, 0.2018),    # example (d)
])
def test_paired_difference_interval_matches_newcombe(both, only_a, only_b, neither, low, high):
    a = [True] * (both + only_a) + [False] * (only_b + neither)
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    diff, lo, hi = paired_difference_interval(a, b)
    assert diff == pytest.approx((only_a - only_b) / len(a))
    assert lo == pytest.approx(low, abs=2e-4) and hi == pytest.approx(high, abs=2e-4)
    mirrored = paired_difference_interval(b, a)  # swapping the systems mirrors the interval
    assert mirrored == pytest.approx((-diff, -hi, -lo))


def test_paired_difference_interval_identical_and_errors():
    diff, lo, hi = paired_difference_interval([True, False] * 10, [True, False] * 10)
    assert diff == 0.0 and lo <= 0 <= hi  # no discordant pair: method 10 can shrink to the point 0
    diff, lo, hi = paired_difference_interval([True, False, True, False] * 5, [False, True, True, False] * 5)
    assert diff == 0.0 and lo < 0 < hi
    assert paired_difference_interval([], []) == (0.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference_interval([True], [])
