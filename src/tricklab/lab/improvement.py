"""Probability of improvement and the interquartile mean: what a trick is worth on one seed, and a robust centre.

* :func:`improvement` — P(variant beats baseline on a seed), paired on seeds: the share of seeds on which the
  variant's value is above the baseline's, a tie counting ½, with its Wilson score interval (Bouthillier et al.
  2021, "Accounting for variance in machine learning benchmarks", recommend reporting this probability with its
  interval beside the mean difference: a +0.3 pp mean may come from one lucky seed or from every seed).
* :func:`iqm` / :func:`iqm_interval` — the interquartile mean (the mean of the middle 50% of the values) and its
  percentile-bootstrap interval over seeds, the robust summary of Agarwal et al. 2021 ("Deep reinforcement learning
  at the edge of the statistical precipice", the rliable library) for heavy-tailed metrics, where one diverged seed
  would drag a mean far from where most seeds ended.
* :func:`check_aggregate` — the one check of an arm summary's name (``mean`` or ``iqm``).

Example::

    improvement([0.004, 0.002, 0.0, -0.001])   # Improvement(p=0.625, lo=0.219…, hi=0.908…, n=4, wins=2, ties=1)
    iqm([0.1, 0.9, 0.91, 0.92, 0.93, 0.2, 0.94, 0.95])   # 0.915: the two lowest and the two highest are cut
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tricklab.errors import TrickLabError

CONFIDENCE = 0.95
SAME = 1e-12  # differences closer than this are the same count of correct examples (as tricklab.lab.stats.SAME)
MEAN, IQM = "mean", "iqm"
AGGREGATES = (MEAN, IQM)  # how a study summarises each arm over its seeds
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0  # a fixed stream: the same database gives the same report, byte for byte


@dataclass(frozen=True)
class Improvement:
    """P(variant > baseline on a seed), estimated from ``n`` paired seeds, and its ``lo``–``hi`` interval."""

    p: float
    lo: float
    hi: float
    n: int
    wins: int
    ties: int


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's (1927) score interval of a proportion ``successes / n``:

    ``(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``, z the normal quantile at ``(1 + confidence)/2``.

    ``successes`` may be a half-integer (ties counted ½). ``(nan, nan)`` without observations.
    Example: ``wilson_interval(3, 3)`` → ``(0.438…, 1.0)``.
    """
    if n <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def improvement(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Improvement:
    """The probability of improvement of a paired comparison from its per-seed differences (variant − baseline).

    ``p = (wins + ½·ties) / n``: an estimate of P(variant > baseline) for a fresh seed (Bouthillier et al. 2021);
    ties count half so that the variant's and the baseline's probabilities add up to 1. The interval is Wilson's
    score interval (:func:`wilson_interval`), not the percentile bootstrap over seeds that Bouthillier et al. use:
    at the 3–10 seeds of a lab, a bootstrap of a share collapses to a single point whenever every seed agrees
    (3 wins of 3 give [1, 1], a certainty three seeds cannot give), while Wilson's interval keeps its coverage
    close to the nominal level down to a handful of observations (Brown, Cai & DasGupta 2001) and gives [0.44, 1]
    there. NaN differences are left out; without any, every field is NaN.
    """
    d = [float(x) for x in diffs if x is not None and math.isfinite(x)]
    n = len(d)
    if n == 0:
        return Improvement(math.nan, math.nan, math.nan, 0, 0, 0)
    wins = sum(x > SAME for x in d)
    ties = sum(abs(x) <= SAME for x in d)
    successes = wins + 0.5 * ties
    lo, hi = wilson_interval(successes, n, confidence)
    return Improvement(successes / n, lo, hi, n, wins, ties)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the values left once ⌊n/4⌋ of the lowest and ⌊n/4⌋ of the highest are cut
    (``scipy.stats.trim_mean(x, 0.25)``, as rliable computes it; Agarwal et al. 2021). Below 4 values nothing is
    cut and it is the mean. NaN without finite values.

    Example: ``iqm([1, 2, 3, 100])`` → 2.5 (the mean is 26.5).
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(stats.trim_mean(x, 0.25)) if len(x) else math.nan


def iqm_interval(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, float]:
    """``(iqm, lo, hi)``: the IQM and its percentile-bootstrap interval over seeds (``reps`` resamples of the seeds
    with replacement, the IQM of each; the ``(1 ∓ confidence)/2`` quantiles), as rliable reports it. ``rng`` default:
    a generator seeded with :data:`BOOTSTRAP_SEED`, so the same values give the same interval. Below 2 values the
    interval is ``(nan, nan)``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    centre = iqm(x)
    if len(x) < 2:
        return centre, math.nan, math.nan
    rng = rng if rng is not None else np.random.default_rng(BOOTSTRAP_SEED)
    samples = x[rng.integers(0, len(x), size=(reps, len(x)))]
    boot = stats.trim_mean(samples, 0.25, axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return centre, float(lo), float(hi)


def check_aggregate(value: object, key: str = "aggregate") -> str:
    """``value`` when it names an arm summary (:data:`AGGREGATES`); else a one-line refusal naming ``key``."""
    if not isinstance(value, str) or value not in AGGREGATES:
        raise TrickLabError(f"{key} = {value!r}: must be one of {', '.join(AGGREGATES)}")
    return value
