"""Statistics for the lab: confidence intervals over seeds, paired comparisons, and verdicts built from them.

Everything a report says about a trick is computed here from the runs; nothing is written by hand.

* :func:`mean_ci` — mean and Student-t confidence interval of independent runs (one per seed).
* :func:`paired` — the paired comparison of a variant with its baseline on the same seeds: mean
  difference, its t interval and the two-sided p-value of the paired t-test (Student 1908).
* :func:`verdict` — one sentence from those numbers, e.g.
  ``"dropout 0.3: +0.41 pp test accuracy [+0.22, +0.60], p = 0.003, 5 seeds"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
MIN_SEEDS = 3  # below this a t interval is too wide to mean much: verdicts say so
SAME = 1e-12  # differences closer than this are float rounding of the same count of correct examples


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided confidence interval of ``n`` values (``lo``/``hi`` are NaN when ``n < 2``)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(values: Sequence[float], confidence: float = 1 - ALPHA) -> Interval:
    """Mean ± Student-t interval: ``x̄ ± t_{1−α/2, n−1} · s/√n``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


@dataclass(frozen=True)
class Paired:
    """Paired comparison ``variant − baseline`` over the seeds both have."""

    diff: Interval
    p: float  # two-sided paired t-test; NaN when undefined (n < 2, or every difference equal)
    seeds: tuple[int, ...]

    @property
    def significant(self) -> bool:
        return self.diff.n >= 2 and math.isfinite(self.p) and self.p < ALPHA


def paired(variant: dict[int, float], baseline: dict[int, float]) -> Paired:
    """Compare two ``{seed: value}`` maps on their common seeds (paired t-test, ``scipy.stats.ttest_rel``)."""
    seeds = tuple(sorted(s for s in variant if s in baseline and _finite(variant[s]) and _finite(baseline[s])))
    a = np.array([variant[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    diff = mean_ci(list(a - b))
    if len(seeds) < 2:
        p = math.nan
    elif np.ptp(a - b) <= SAME:
        p = math.nan  # every seed moved by exactly the same amount: no spread, no t-test
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return Paired(diff, p, seeds)


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(
    name: str,
    comparison: Paired,
    *,
    metric: str = "test accuracy",
    scale: float = 100.0,
    unit: str = "pp",
    baseline: str = "baseline",
) -> str:
    """One sentence, built only from ``comparison``'s numbers.

    Significant: ``"dropout 0.3: +0.41 pp test accuracy [+0.22, +0.60], p = 0.003, 5 seeds"``. Not significant:
    ``"dropout 0.1: no significant difference at 3 seeds (−0.05 pp [−0.31, +0.21], p = 0.62)"``. Fewer than
    ``MIN_SEEDS`` seeds: the sentence says the comparison is weak.
    """
    d, n = comparison.diff, comparison.diff.n
    if n == 0:
        return f"{name}: no seeds in common with {baseline}; no comparison"
    mean = d.mean * scale
    if n < 2:
        return f"{name}: {mean:+.2f} {unit} {metric} vs {baseline} from 1 seed; too few seeds for a test"
    if d.sd <= SAME:
        return f"{name}: {mean:+.2f} {unit} {metric} on every one of {n} seeds (no spread between seeds, so no t-test)"
    ci = f"[{d.lo * scale:+.2f}, {d.hi * scale:+.2f}]"
    weak = f"; weak: only {n} seeds" if n < MIN_SEEDS else ""
    if comparison.significant:
        return f"{name}: {mean:+.2f} {unit} {metric} {ci}, {fmt_p(comparison.p)}, {n} seeds{weak}"
    return (
        f"{name}: no significant difference at {n} seeds ({mean:+.2f} {unit} {ci}, {fmt_p(comparison.p)}; "
        f"the interval is ±{d.half_width * scale:.2f} {unit} wide{weak})"
    )
