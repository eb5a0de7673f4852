"""One trick across datasets: per-dataset outcomes, an aggregate interval, the average probability of improvement.

A study run on several datasets (``tricklab lab dropout --dataset mnist,mnist1d``, or a study's ``datasets:``) is
stored as one study instance per dataset, each analysed and decided on its own (:mod:`tricklab.lab.analysis`).
:func:`across` adds, for every variant compared on at least two datasets:

* the outcome on each dataset (better, worse, equivalent, undecided, or whatever the study's analysis said);
* the **normalized improvement** on each dataset: the mean paired difference divided by the baseline's distance to
  100%, ``Δ̄ / (1 − b̄)``, the share of the baseline's error the trick removes. Raw Δs do not add up across
  datasets (+0.3 pp is a lot on MNIST at 98%, nothing on mnist1d at 70%); the share of error removed is comparable
  and reads the same on every dataset ("removes 15% of the errors"). Dividing by the baseline's mean instead would
  make every dataset near 100% look alike. A dataset whose baseline is at 100% has no error to remove and is left
  out of the aggregate;
* their mean over datasets, with a **stratified bootstrap** interval (:func:`aggregate_interval`): seeds are
  resampled within each dataset, never across (Agarwal et al. 2021), so each dataset keeps its own noise. A study
  with ``m`` variants aggregated has ``m`` such intervals, each at confidence ``1 − 0.05/m`` (Bonferroni), so
  that the chance of any false better/worse claim across datasets in the study stays ≤ 5%;
* the **average probability of improvement** over datasets (:mod:`tricklab.lab.improvement`);
* the points of a **performance profile** (:func:`performance_profile`; Dolan & Moré 2002, as rliable draws them
  for runs): for each threshold τ, the share of (dataset, seed) runs whose normalized improvement exceeds τ.

The aggregate's outcome is ``better`` when its interval lies above 0, ``worse`` below, else ``undecided``: there
is no margin of practical equivalence across datasets. ``benchmarks/calibrate_across.py`` measures its false
positive rate on simulated null studies and its power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tricklab.lab.improvement import CONFIDENCE, Improvement, improvement
from tricklab.lab.stats import BETTER, UNDECIDED, WORSE

REPS = 2000
SEED = 0  # a fixed stream: the same database gives the same report


@dataclass(frozen=True)
class DatasetComparison:
    """One dataset's comparison of a variant with its baseline, on the seeds both have."""

    dataset: str
    outcome: str
    diffs: tuple[float, ...]  # variant − baseline, per seed
    baseline: tuple[float, ...]  # the baseline's value on the same seeds
    prob: Improvement

    @property
    def normalized(self) -> float:
        """:func:`normalized_improvement` of this dataset (NaN without seeds or with a perfect baseline)."""
        return normalized_improvement(self.diffs, self.baseline)


@dataclass(frozen=True)
class AcrossDatasets:
    """A variant of one study across datasets: each dataset's comparison and the aggregate over them."""

    study: str
    variant: str
    baseline: str
    datasets: tuple[DatasetComparison, ...]
    normalized: float  # mean over the aggregated datasets of the normalized improvement
    lo: float  # its stratified-bootstrap interval
    hi: float
    mean_prob: float  # mean over datasets of P(variant > baseline on a seed)
    aggregated: tuple[str, ...]  # the datasets in the aggregate (those with ≥ 2 seeds and a baseline below 100%)
    confidence: float = CONFIDENCE  # of the interval: 1 − 0.05/m for the study's m aggregates (Bonferroni)

    @property
    def outcome(self) -> str:
        """better (the interval above 0), worse (below 0) or undecided."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return UNDECIDED
        return BETTER if self.lo > 0 else WORSE if self.hi < 0 else UNDECIDED


def normalized_improvement(diffs: Sequence[float], baseline: Sequence[float]) -> float:
    """``mean(diffs) / (1 − mean(baseline))``: the share of the baseline's error (accuracy as a fraction) that the
    variant removes; negative when it adds errors. NaN without values or when the baseline is at 100%.

    Example: baseline 0.98, variant 0.983 → ``0.003 / 0.02 = 0.15``: 15% of the errors removed.
    """
    if len(diffs) == 0 or len(baseline) == 0:
        return math.nan
    room = 1 - float(np.mean(baseline))
    return float(np.mean(diffs)) / room if room > 0 else math.nan


def stratified_bootstrap(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]], reps: int = REPS, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``reps`` bootstrap replicates of the mean normalized improvement over ``groups``, one ``(diffs, baseline)``
    per dataset (the same seeds, in the same order).

    Each replicate resamples each dataset's seeds with replacement, ``n_k`` of them (pairs kept together), in the
    order of ``groups``, drawing ``rng.integers(0, n_k, size=(reps, n_k))`` per dataset. The resampled values are
    spread about their dataset's mean by ``√(n_k/(n_k − 1))``, so that a replicate mean's variance is ``s²/n_k``,
    not the plug-in's ``(n_k − 1)/n_k · s²/n_k`` (too narrow by a third at 3 seeds; Efron & Tibshirani 1993
    §5.2): ``x* = x̄ + √(n/(n−1)) · (x[i*] − x̄)``. The replicate is ``mean_k(mean(d*) / (1 − mean(b*)))``.
    """
    rng = rng if rng is not None else np.random.default_rng(SEED)
    total = np.zeros(reps)
    for diffs, base in groups:
        d, b = np.asarray(diffs, dtype=float), np.asarray(base, dtype=float)
        n = len(d)
        idx = rng.integers(0, n, size=(reps, n))
        f = math.sqrt(n / (n - 1))
        ds = d.mean() + f * (d[idx] - d.mean())
        bs = b.mean() + f * (b[idx] - b.mean())
        total += ds.mean(axis=1) / (1 - bs.mean(axis=1))
    return total / len(groups)


def welch_df(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float:
    """Welch–Satterthwaite degrees of freedom of a mean over datasets of per-dataset means:
    ``(Σ vₖ)² / Σ (vₖ² / (nₖ − 1))``, ``vₖ = s²(dₖ/(1 − b̄ₖ)) / nₖ``. Infinite when no dataset varies."""
    v, df = [], []
    for diffs, base in groups:
        d, room = np.asarray(diffs, dtype=float), 1 - float(np.mean(base))
        v.append(float(np.var(d / room, ddof=1)) / len(d))
        df.append(len(d) - 1)
    num = sum(v) ** 2
    den = sum(x * x / k for x, k in zip(v, df, strict=True))
    return num / den if den > 0 else math.inf


def aggregate_interval(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
    confidence: float = CONFIDENCE,
    reps: int = REPS,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: the mean normalized improvement over datasets and its stratified-bootstrap interval.

    ``estimate ± t_{ν, (1+confidence)/2} · sd(replicates)``, the replicates those of :func:`stratified_bootstrap` and
    ν the Welch–Satterthwaite degrees of freedom (:func:`welch_df`). Why not the percentile interval of the
    replicates: with 3–10 seeds per dataset a bootstrap knows each dataset's spread from a handful of values, and
    the percentile interval (a normal quantile, in effect) then claims an effect in 9–21% of null studies instead
    of 5% (``benchmarks/calibrate_across.py``); taking the Student-t quantile at the degrees of freedom those few
    seeds carry brings it to the nominal level. Every group needs ≥ 2 seeds (else the interval is NaN).
    """
    groups = [(list(d), list(b)) for d, b in groups]
    if not groups:
        return math.nan, math.nan, math.nan
    estimate = float(np.mean([normalized_improvement(d, b) for d, b in groups]))
    if any(len(d) < 2 for d, _ in groups):
        return estimate, math.nan, math.nan
    boot = stratified_bootstrap(groups, reps, rng)
    nu = welch_df(groups)
    half = float(stats.t.ppf(0.5 + confidence / 2, nu)) * float(np.std(boot)) if math.isfinite(nu) else 0.0
    return estimate, estimate - half, estimate + half


def performance_profile(runs: Sequence[float], taus: Sequence[float]) -> np.ndarray:
    """The share of ``runs`` (normalized improvements, one per dataset and seed) strictly above each τ of ``taus``:
    a curve that falls from 1 to 0; a trick whose curve lies above another's wins at every threshold."""
    x = np.asarray([r for r in runs if math.isfinite(r)], dtype=float)
    if len(x) == 0:
        return np.full(len(taus), math.nan)
    return np.array([(x > t).mean() for t in taus])


def profile_runs(item: AcrossDatasets) -> list[float]:
    """Each (dataset, seed) run's normalized improvement: its difference over its dataset's baseline error room."""
    out = []
    for c in item.datasets:
        if c.dataset in item.aggregated:
            room = 1 - float(np.mean(c.baseline))
            out += [d / room for d in c.diffs]
    return out


def across(studies: Sequence) -> list[AcrossDatasets]:
    """The cross-dataset aggregate of every (study, variant) compared on two datasets or more.

    ``studies``: each study instance's :class:`~tricklab.lab.analysis.StudyStats` (one per study and dataset, as
    :func:`tricklab.lab.results.results` reads them); studies run on one dataset only add nothing.
    """
    from tricklab.lab.analysis import TEST_ACC

    by_study: dict[str, list] = {}
    for s in studies:
        by_study.setdefault(s.study, []).append(s)
    out = []
    for study, runs in by_study.items():
        if len({s.dataset for s in runs}) < 2:
            continue
        names = list(dict.fromkeys(v.name for s in runs for v in s.variants if v.comparison is not None))
        items = []
        for name in names:
            per: list[DatasetComparison] = []
            baseline = ""
            for s in runs:
                v = next((x for x in s.variants if x.name == name and x.comparison is not None), None)
                if v is None:
                    continue
                baseline = v.baseline
                c = v.comparison
                base = s.variant(v.baseline).values[TEST_ACC]
                outcome = v.decision.outcome if v.decision else UNDECIDED
                per.append(
                    DatasetComparison(
                        s.dataset, outcome, tuple(c.diffs), tuple(base[k] for k in c.seeds), improvement(c.diffs)
                    )
                )
            if len(per) >= 2:
                items.append((name, baseline, per))
        confidence = 1 - (1 - CONFIDENCE) / max(1, len(items))  # Bonferroni over the study's aggregates
        for name, baseline, per in items:
            usable = [c for c in per if len(c.diffs) >= 2 and math.isfinite(c.normalized)]
            groups = [(c.diffs, c.baseline) for c in usable]
            est, lo, hi = aggregate_interval(groups, confidence) if usable else (math.nan,) * 3
            probs = [c.prob.p for c in per if math.isfinite(c.prob.p)]
            out.append(
                AcrossDatasets(
                    study,
                    name,
                    baseline,
                    tuple(per),
                    est,
                    lo,
                    hi,
                    float(np.mean(probs)) if probs else math.nan,
                    tuple(c.dataset for c in usable),
                    confidence,
                )
            )
    return out
