"""Statistics a reader can act on: Wilson intervals for accuracies, exact McNemar tests for paired comparisons.

* :func:`wilson_interval` — the 95% (by default) Wilson score interval of k correct out of n; well
  behaved at 0/n and n/n, unlike the normal approximation.
* :func:`mcnemar_exact` — two-sided exact McNemar test of two systems answering the same questions:
  only the discordant pairs count (b: A right and B wrong, c: A wrong and B right); under the null
  b ~ Binomial(b + c, 1/2) and p = min(1, 2 * P(X <= min(b, c))).
* :func:`compare_paired` — both for two lists of per-question correctness flags.
* :func:`paired_difference_interval` — the 95% interval of the accuracy difference of two systems on
  the same questions (Newcombe's hybrid score method 10, built from the two Wilson intervals and the
  pairs' correlation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) Wilson score interval for k successes in n trials; (0, 1) when n is 0."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """B against A on the same n questions."""

    n: int
    correct_a: int
    correct_b: int
    b: int
    """A right, B wrong."""
    c: int
    """A wrong, B right."""
    p_value: float


def compare_paired(a: Sequence[bool], b: Sequence[bool]) -> PairedComparison:
    """Exact McNemar comparison of two per-question correctness lists (same questions, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same questions: {len(a)} vs {len(b)} answers")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return PairedComparison(n=len(a), correct_a=sum(map(bool, a)), correct_b=sum(map(bool, b)), b=only_a,
                            c=only_b, p_value=mcnemar_exact(only_a, only_b))


def paired_difference_interval(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> tuple[float, float, float]:
    """(difference, low, high) of accuracy(a) - accuracy(b) on the same questions, as fractions.

    Newcombe (1998), method 10: the marginal Wilson intervals combined with the phi correlation of the
    paired 2x2 table. (0, -1, 1) for no questions; with no discordant pair (identical correctness) and
    symmetric margins the interval shrinks to the point 0 (method 10's known behaviour there).
    """
    if len(a) != len(b):
        raise ValueError(f"paired interval needs the same questions: {len(a)} vs {len(b)} answers")
    n = len(a)
    if n == 0:
        return 0.0, -1.0, 1.0
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return diff, max(-1.0, diff - down), min(1.0, diff + up)


def format_accuracy(k: int, n: int, z: float = Z95) -> str:
    """``"54.0 [46.0, 61.8] (n=150)"``: percent with its Wilson interval."""
    lo, hi = wilson_interval(k, n, z)
    pct = 100.0 * k / n if n else float("nan")
    return f"{pct:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"
