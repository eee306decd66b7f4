"""Statistics of success rates: a 95% interval for each, and paired comparisons of two runs on the same items.

A success rate measured on a few hundred items moves by several points between runs that differ in nothing that
matters, so every rate is given with its interval and two runs are compared item by item:

- :func:`wilson_interval`: the Wilson score interval of a proportion (Wilson 1927), which stays inside [0, 1] and
  keeps close to its nominal coverage at small n and at rates near 0 or 1, where the normal (Wald) interval fails.
- :func:`paired_comparison`: two runs judged on the same items. Only the items that flipped (right in one run,
  wrong in the other) carry information about the difference; McNemar's exact test (a two-sided binomial test of
  the flips against 1/2) says whether it is significant, and the difference gets a 95% interval from the paired
  (correlated) normal approximation, with its standard error from the flip counts.

Pure Python and math: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``n`` (95% by default), as (low, high) in [0, 1]."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one item, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def is_binary(values: Iterable[float]) -> bool:
    """Whether every value is 0 or 1 (a success column), and there is at least one."""
    seen = False
    for value in values:
        if value not in (0, 1):
            return False
        seen = True
    return seen


def binomial_two_sided(k: int, n: int) -> float:
    """The exact two-sided p-value of ``k`` heads in ``n`` fair coin flips: the probability of an outcome at
    least as far from n/2 (the doubled smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Two runs (A, B) judged on the same ``n`` items by one success column."""

    column: str
    n: int
    a_successes: int
    b_successes: int
    a_only: int  # items A got right and B wrong
    b_only: int  # items B got right and A wrong
    a_only_items: tuple[str, ...] = ()
    b_only_items: tuple[str, ...] = ()

    @property
    def a_rate(self) -> float:
        return self.a_successes / self.n

    @property
    def b_rate(self) -> float:
        return self.b_successes / self.n

    @property
    def difference(self) -> float:
        """B's rate minus A's."""
        return (self.b_only - self.a_only) / self.n

    @property
    def p_value(self) -> float:
        """McNemar's exact test: the flips, as a binomial(a_only + b_only, 1/2)."""
        return binomial_two_sided(self.b_only, self.a_only + self.b_only)

    def difference_interval(self, z: float = Z95) -> tuple[float, float]:
        """A 95% interval of B's rate minus A's, from the paired normal approximation:
        se = sqrt(a_only + b_only - (b_only - a_only)^2 / n) / n."""
        flips, d = self.a_only + self.b_only, self.b_only - self.a_only
        se = math.sqrt(max(0.0, flips - d * d / self.n)) / self.n
        return self.difference - z * se, self.difference + z * se

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def describe(self, a_name: str = "A", b_name: str = "B") -> str:
        """One paragraph: both rates with their intervals, the flips, the difference, and the verdict."""
        (a_lo, a_hi), (b_lo, b_hi) = (
            wilson_interval(self.a_successes, self.n),
            wilson_interval(self.b_successes, self.n),
        )
        lo, hi = self.difference_interval()
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{self.column} on {self.n} shared items: {a_name} {self.a_rate:.1%} [{a_lo:.1%}, {a_hi:.1%}], "
            f"{b_name} {self.b_rate:.1%} [{b_lo:.1%}, {b_hi:.1%}]; flips: {self.b_only} right only in {b_name}, "
            f"{self.a_only} right only in {a_name}; difference {self.difference * 100:+.1f} points "
            f"[{lo * 100:+.1f}, {hi * 100:+.1f}], McNemar p = {self.p_value:.3g} ({verdict} at 5%)"
        )


def paired_comparison(
    a: Sequence[dict], b: Sequence[dict], column: str, *, key: str = "item"
) -> PairedComparison:
    """Compare records ``a`` and ``b`` (each a list of per-item dicts with ``key`` and ``column``) on the items
    both judged. Records whose ``column`` is missing or None are left out; a key seen twice in one run is an
    error (filter the records to one method and setting first)."""

    def by_key(records: Sequence[dict], name: str) -> dict[str, float]:
        table: dict[str, float] = {}
        for record in records:
            value = record.get(column)
            if value is None:
                continue
            item = str(record[key])
            if item in table:
                raise ValueError(f"run {name} has item {item!r} twice: choose one method and setting")
            if value not in (0, 1):
                raise ValueError(f"{column} of item {item!r} in run {name} is {value}, not 0 or 1")
            table[item] = value
        return table

    left, right = by_key(a, "A"), by_key(b, "B")
    shared = sorted(set(left) & set(right))
    if not shared:
        raise ValueError(f"the two runs share no item judged by {column}")
    a_only = tuple(i for i in shared if left[i] == 1 and right[i] == 0)
    b_only = tuple(i for i in shared if left[i] == 0 and right[i] == 1)
    return PairedComparison(
        column=column,
        n=len(shared),
        a_successes=int(sum(left[i] for i in shared)),
        b_successes=int(sum(right[i] for i in shared)),
        a_only=len(a_only),
        b_only=len(b_only),
        a_only_items=a_only,
        b_only_items=b_only,
    )
