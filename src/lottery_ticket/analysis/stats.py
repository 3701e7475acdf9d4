"""Replicate statistics, in one place: the spread of a number over trials and the paired comparison
of a ticket with its control.

Every aggregated number of `lth report` comes with its count n and its range (minimum, maximum:
the paper's error bars); with n >= 3 also a 95% confidence interval for the mean. The interval is
Student's t interval, mean +- t(0.975, n - 1) * s / sqrt(n) with s the sample standard deviation
(ddof 1): with the 3-5 trials a lottery experiment has, a normal (z) interval would be far too
narrow (t(0.975, 2) = 4.30 against z = 1.96), and a bootstrap of 3-5 values cannot reach beyond
their range. It assumes roughly normal trial-to-trial variation; with n < 3 no interval is given
(n = 2 gives t(0.975, 1) = 12.7: a "interval" wider than any range, not informative).

The paired comparison (ticket vs a control, per level) pairs the runs by trial, since both share the
trial's initialization seed and masks: the difference d = control - ticket of each trial (the mean
of the control's runs in that trial when it has several), their mean with its t interval (the paired
t interval), the range of d, how many trials have d > 0, d < 0, d = 0, and the two-sided exact sign
test p-value over the nonzero differences (binomial, p = 1/2): with few trials the sign test is the
assumption-free summary (with n = 3 its smallest p is 0.25: three trials cannot be significant at
0.05 by sign alone, which the table should make plain).

Student's t quantile is computed here (no SciPy): the t distribution function through the
regularized incomplete beta function (continued fraction, Numerical Recipes 6.4), inverted by
bisection to full double precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95
MIN_N_FOR_INTERVAL = 3


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (e.g. t(0.975, 2) = 4.3027)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Spread:
    """A number over replicates: count, mean, sample std (ddof 1), range, 95% t interval (NaN when
    it does not apply: std with n < 2, the interval with n < 3)."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    ci_low: float
    ci_high: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{key}": value for key, value in asdict(self).items()}


def _finite(values: Iterable) -> list[float]:
    out = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            out.append(number)
    return out


def t_interval(values: Iterable, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t interval for the mean of `values` (NaN skipped); (NaN, NaN) with fewer than 3."""
    xs = _finite(values)
    n = len(xs)
    if n < MIN_N_FOR_INTERVAL:
        return math.nan, math.nan
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def spread(values: Iterable) -> Spread:
    """The :class:`Spread` of `values` (NaN and non-numbers skipped)."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = min(max(math.fsum(xs) / n, min(xs)), max(xs))  # (rounding cannot put it outside the range)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    low, high = t_interval(xs)
    return Spread(n, mean, std, min(xs), max(xs), low, high)


def sign_test(positive: int, negative: int) -> float:
    """Two-sided exact sign test p-value: P(a split at least this uneven) under p = 1/2, ties left
    out by the caller; 1.0 without any nonzero difference."""
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class Paired:
    """Control minus ticket, paired by trial (see the module docstring)."""

    n: int  # trials with both a ticket and a control value
    mean_difference: float
    ci_low: float
    ci_high: float
    min_difference: float
    max_difference: float
    control_later: int  # trials with difference > 0 (the ticket stopped earlier)
    control_earlier: int  # difference < 0
    ties: int
    sign_test_p: float


def paired_comparison(ticket: dict, control: dict[object, list]) -> Paired:
    """`ticket`: trial -> value; `control`: trial -> the control's values in that trial (averaged).
    Trials missing either side, or with NaN, are left out."""
    differences = []
    for trial, value in ticket.items():
        runs = _finite(control.get(trial, ()))
        if not runs or not _finite([value]):
            continue
        differences.append(math.fsum(runs) / len(runs) - float(value))
    s = spread(differences)
    later = sum(d > 0 for d in differences)
    earlier = sum(d < 0 for d in differences)
    return Paired(s.n, s.mean, s.ci_low, s.ci_high, s.min, s.max, later, earlier,
                  len(differences) - later - earlier, sign_test(later, earlier))
