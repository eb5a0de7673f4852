"""Statistics for the lab: confidence intervals over seeds, paired comparisons, and the outcome of each comparison.

Everything a report says about a trick is computed here from the runs; nothing is written by hand.

* :func:`mean_ci` — mean and Student-t confidence interval of independent runs (one per seed).
* :func:`paired` — the paired comparison of a variant with its baseline on the same seeds: mean
  difference, its t interval and the two-sided p-value of the paired t-test (Student 1908).
* :func:`holm` — Holm's (1979) step-down adjustment of a study's p-values (family-wise error ≤ α).
* :func:`decide` — each comparison of a study ends as one of four outcomes:

  - **better** / **worse**: the paired t-test is significant after Holm's correction over the study's comparisons
    (Holm-adjusted p < α = 0.05); the sign of the mean paired difference says which.
  - **equivalent**: not better or worse, and the whole 95% confidence interval of the paired difference lies inside
    ± the study's margin of practical equivalence. This is the *CI-inclusion rule with the 95% interval* — the same
    as two one-sided tests (TOST, Schuirmann 1987) at α = 0.025 each, stricter than the usual TOST at 0.05 (a 90%
    interval). Chosen because it is the interval the table prints, so a reader checks the outcome by eye; one
    interval serves both decisions; and an equivalence claim ("this trick does nothing here") is the one a reader
    acts on by dropping the trick, so it should be the harder one to earn (equivalence claims are not
    Holm-corrected; the stricter level pays for that in part).
  - **undecided**: neither. It says how many seeds would likely decide it (:func:`seeds_needed`).
  - **no signal**: neither arm learned — both ended at chance or both diverged
    (:func:`tricklab.lab.analysis.no_signal_reason`); the comparison is not tested, is left out of Holm's family,
    and its :attr:`Decision.reason` says why.

* :func:`verdict` — one sentence from those numbers, e.g.
  ``"dropout 0.3: better: +0.41 pp test accuracy [+0.22, +0.60] vs p=0, p = 0.003, Holm p = 0.009, 5 seeds,
  better on 5 of 5"`` or ``"dropout 0.1: undecided at 3 seeds: +0.06 pp test accuracy [-0.28, +0.39] vs p=0,
  p = 0.522, better on 2 of 3; about 10 seeds would likely resolve ±0.20 pp"``.

A fixed number of seeds is assumed. Adding seeds after looking at these outcomes needs the sequential procedure
of :mod:`tricklab.lab.sequential` instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
MIN_SEEDS = 3  # below this a t interval is too wide to mean much: verdicts say so
SAME = 1e-12  # differences closer than this are float rounding of the same count of correct examples
POWER = 0.8  # seeds_needed: the probability of deciding that "likely" means
MAX_SEEDS_ESTIMATE = 1000  # seeds_needed looks no further

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
NO_SIGNAL = "no signal"  # neither arm learned (both at chance or diverged): the comparison says nothing
OUTCOMES = (BETTER, WORSE, EQUIVALENT, UNDECIDED, NO_SIGNAL)


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
    diffs: tuple[float, ...] = ()  # variant − baseline on each of ``seeds``

    @property
    def significant(self) -> bool:
        """Significant on its own (unadjusted p < α); a study's outcomes use the Holm-adjusted p instead."""
        return self.diff.n >= 2 and math.isfinite(self.p) and self.p < ALPHA

    @property
    def wins(self) -> int:
        """Seeds on which the variant beat the baseline."""
        return sum(d > SAME for d in self.diffs)

    @property
    def ties(self) -> int:
        return sum(abs(d) <= SAME for d in self.diffs)

    @property
    def prob_improvement(self) -> float:
        """Share of the common seeds on which the variant beat its baseline, a tie counting half (NaN without
        seeds): an estimate of P(variant > baseline) for a fresh seed, the "probability of improvement"
        (Bouthillier et al. 2021). Ties count half so that the variant's and the baseline's shares add up to 1."""
        n = len(self.diffs)
        return (self.wins + 0.5 * self.ties) / n if n else math.nan


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
    return Paired(diff, p, seeds, tuple(float(d) for d in a - b))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: with the m finite p-values sorted, ``p₍₁₎ ≤ … ≤ p₍ₘ₎``,
    ``p̃₍ᵢ₎ = max_{j ≤ i} min(1, (m − j + 1) · p₍ⱼ₎)``; rejecting every ``p̃ < α`` keeps the family-wise error
    (the chance of any false better/worse claim) ≤ α under any dependence between the tests. NaN p-values (no
    test) are not part of the family and stay NaN.

    Example: ``holm([0.01, 0.04, 0.03])`` → ``[0.03, 0.06, 0.06]``.
    """
    p = [float(x) if x is not None else math.nan for x in pvalues]
    tested = sorted((x, i) for i, x in enumerate(p) if math.isfinite(x))
    m, out, running = len(tested), [math.nan] * len(p), 0.0
    for rank, (x, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * x))
        out[i] = running
    return out


def _t_power(effect: float, n: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided one-sample (paired) t-test at ``alpha`` for a standardized effect, at ``n`` seeds."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * np.sqrt(n)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def _equivalence_power(mean: float, sd: float, margin: float, n: np.ndarray) -> np.ndarray:
    """P(the 95% CI lands inside ±margin) at ``n`` seeds when the differences are N(mean, sd²), taking ``s ≈ sd``
    (the usual normal approximation of TOST power): ``Φ((m − h − μ)√n/σ) − Φ((−m + h − μ)√n/σ)``, h the half-width."""
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / np.sqrt(n)
    se = sd / np.sqrt(n)
    return np.clip(stats.norm.cdf((margin - half - mean) / se) - stats.norm.cdf((-margin + half - mean) / se), 0, 1)


def seeds_needed(
    diff: Interval, margin: float, alpha: float = ALPHA, *, power: float = POWER, limit: int = MAX_SEEDS_ESTIMATE
) -> tuple[int | None, str]:
    """How many seeds (in all) would likely decide an undecided comparison, and what they would likely show.

    A plug-in power estimate that takes the observed mean ``x̄`` and spread ``s`` of the paired differences as the
    truth and returns the smallest ``n`` (more than the seeds already run, at most ``limit``) at which either

    * ``"difference"``: the two-sided paired t-test at ``alpha`` (the Holm level the comparison faces now) has
      probability ≥ ``power`` of rejecting, for the standardized effect ``x̄/s`` (noncentral t, exact for
      normal differences; Cohen 1988), or
    * ``"equivalence"``: the 95% interval has probability ≥ ``power`` of falling inside ±``margin``
      (normal approximation, see :func:`_equivalence_power`),

    whichever comes first. Returns ``(None, "")`` when there is no spread to go by (fewer than 2 seeds, or
    every difference equal) and ``(None, "limit")`` when not even ``limit`` seeds would do. From 3 seeds ``s`` is
    itself very uncertain: read the number as an order of magnitude, not a promise.

    Example: ``seeds_needed(Interval(0.01, …, n=3, sd=0.01), margin=0.002)`` → ``(10, "difference")``, the
    textbook n for a paired t-test at α = 0.05 with 80% power on an effect of one standard deviation.
    """
    if diff.n < 2 or not math.isfinite(diff.sd) or diff.sd <= SAME:
        return None, ""
    n = np.arange(max(diff.n + 1, 2), limit + 1)
    if len(n) == 0:
        return None, "limit"
    best: tuple[int, str] | None = None
    if abs(diff.mean) > SAME:
        ok = np.nonzero(_t_power(abs(diff.mean) / diff.sd, n, alpha) >= power)[0]
        if len(ok):
            best = (int(n[ok[0]]), "difference")
    if abs(diff.mean) < margin:
        ok = np.nonzero(_equivalence_power(diff.mean, diff.sd, margin, n) >= power)[0]
        if len(ok) and (best is None or n[ok[0]] < best[0]):
            best = (int(n[ok[0]]), "equivalence")
    return best if best else (None, "limit")


@dataclass(frozen=True)
class Decision:
    """The outcome of one comparison within its study (see the module docstring for the rules)."""

    outcome: str  # better | worse | equivalent | undecided | no signal
    p_holm: float  # Holm-adjusted p-value over the study's comparisons (NaN: no test)
    margin: float  # ± margin of practical equivalence, in the units of the differences
    family: int  # comparisons with a test in the study: Holm's m
    alpha_next: float  # the Holm level an undecided comparison faces now: α / (m − rejections)
    seeds_needed: int | None = None  # undecided: the seeds (in all) that would likely decide it
    resolves: str = ""  # what those seeds would likely show: "difference", "equivalence"; "limit": none would
    # ``--seeds auto`` (:mod:`tricklab.lab.sequential`): the look that decided it and its repeated interval
    sequential: bool = False
    decided_at: int | None = None  # seeds at the look that decided it (None: undecided)
    interval: tuple[float, float] | None = None  # repeated 95% CI of the difference at that look (or the last)
    look_seeds: int | None = None  # the seeds of that look (decided: ``decided_at``; undecided: the last look)
    look_mean: float | None = None  # the mean difference at that look
    cap: int | None = None  # the most seeds the lab may run for it (--max-seeds)
    repeated_p: float | None = None  # the repeated p-value before Holm's adjustment
    reason: str = ""  # no signal: why (e.g. "both arms at chance: ≤ 11.35% + 0.50 pp")


def decide(comparisons: Mapping[str, Paired], margin: float, alpha: float = ALPHA) -> dict[str, Decision]:
    """The outcome of every comparison of one study, with Holm's correction across them.

    ``margin`` is the ± margin of practical equivalence in the units of the differences (0.002 for ±0.2 pp of
    accuracy). Better/worse: Holm-adjusted p < ``alpha``, by the sign of the mean difference. Equivalent: otherwise,
    with at least 2 seeds and the whole 95% interval inside (−margin, +margin) (an interval of zero width when
    every seed moved by the same amount). Undecided: the rest, with :func:`seeds_needed` at the Holm level it
    faces now.

    Example::

        decide({"bn": paired(bn, plain), "ln": paired(ln, plain)}, margin=0.002)["bn"].outcome  # "better"
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin = {margin!r}: must be a positive number")
    names = list(comparisons)
    adjusted = dict(zip(names, holm([comparisons[n].p for n in names]), strict=True))
    family = sum(math.isfinite(p) for p in adjusted.values())
    rejected = {n for n, p in adjusted.items() if math.isfinite(p) and p < alpha and comparisons[n].diff.n >= 2}
    alpha_next = alpha / max(1, family - len(rejected))
    out = {}
    for name in names:
        c, p = comparisons[name], adjusted[name]
        d = c.diff
        common = dict(p_holm=p, margin=margin, family=family, alpha_next=alpha_next)
        if name in rejected:
            out[name] = Decision(BETTER if d.mean > 0 else WORSE, **common)
        elif d.n >= 2 and -margin < d.lo and d.hi < margin:
            out[name] = Decision(EQUIVALENT, **common)
        else:
            need, resolves = seeds_needed(d, margin, alpha_next)
            out[name] = Decision(UNDECIDED, **common, seeds_needed=need, resolves=resolves)
    return out


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(
    name: str,
    comparison: Paired,
    decision: Decision,
    *,
    metric: str = "test accuracy",
    scale: float = 100.0,
    unit: str = "pp",
    baseline: str = "baseline",
) -> str:
    """One sentence, built only from ``comparison``'s numbers and its ``decision``; it starts with the outcome.

    ``"dropout 0.3: better: +0.41 pp test accuracy [+0.22, +0.60] vs baseline, p = 0.003, Holm p = 0.009, 5 seeds,
    better on 5 of 5"``; ``"… equivalent within ±0.20 pp: …"``; ``"dropout 0.1: undecided at 3 seeds: +0.06 pp test
    accuracy [-0.28, +0.39] vs baseline, p = 0.522, better on 2 of 3; about 10 seeds would likely resolve
    ±0.20 pp"``. Holm's p is shown when the study has more than one comparison; fewer than ``MIN_SEEDS`` seeds
    are called weak.
    """
    if decision.outcome == NO_SIGNAL:
        return f"{name}: {NO_SIGNAL} vs {baseline}: {decision.reason}; the comparison says nothing about the trick"
    if decision.sequential:
        return _sequential_verdict(name, comparison, decision, metric, scale, unit, baseline)
    d, n, o = comparison.diff, comparison.diff.n, decision.outcome
    margin = f"±{decision.margin * scale:.2f} {unit}"
    if n == 0:
        return f"{name}: {o}: no seeds in common with {baseline}; no comparison"
    mean = d.mean * scale
    if n < 2:
        return (
            f"{name}: {o} at 1 seed: {mean:+.2f} {unit} {metric} vs {baseline}; too few seeds for a test "
            f"(run at least {MIN_SEEDS})"
        )
    head = {
        BETTER: BETTER,
        WORSE: WORSE,
        EQUIVALENT: f"{EQUIVALENT} within {margin}",
        UNDECIDED: f"{UNDECIDED} at {n} seeds",
    }[o]
    weak = f"; weak: only {n} seeds" if n < MIN_SEEDS else ""
    if d.sd <= SAME:
        more = "; more seeds are needed to measure the spread" if o == UNDECIDED else ""
        return (
            f"{name}: {head}: {mean:+.2f} {unit} {metric} vs {baseline} on every one of {n} seeds "
            f"(no spread between seeds, so no t-test){weak}{more}"
        )
    ci = f"[{d.lo * scale:+.2f}, {d.hi * scale:+.2f}]"
    p = fmt_p(comparison.p) + (f", Holm {fmt_p(decision.p_holm)}" if decision.family > 1 else "")
    ties = f" ({comparison.ties} tied)" if comparison.ties else ""
    seeds = "" if o == UNDECIDED else f"{n} seeds, "  # an undecided one says "undecided at n seeds" already
    text = f"{name}: {head}: {mean:+.2f} {unit} {metric} {ci} vs {baseline}, {p}, {seeds}"
    text += f"better on {comparison.wins} of {n}{ties}{weak}"
    if o in (BETTER, WORSE) and -decision.margin < d.lo and d.hi < decision.margin:
        text += f"; the whole interval is inside the {margin} margin of practical equivalence"
    if o == UNDECIDED:
        text += "; " + _needed(decision, n, margin, "better" if d.mean > 0 else "worse")
    return text


def _needed(decision: Decision, n: int, margin: str, direction: str) -> str:
    need = decision.seeds_needed
    if need is None:
        return f"even {MAX_SEEDS_ESTIMATE} seeds would likely not decide it" if decision.resolves else ""
    what = f"resolve {margin}" if decision.resolves == "equivalence" else f"show it {direction}"
    return f"about {need} seeds would likely {what}"


def _sequential_verdict(
    name: str, comparison: Paired, decision: Decision, metric: str, scale: float, unit: str, baseline: str
) -> str:
    """The sentence for a comparison decided by ``--seeds auto``: the numbers at the look that decided it (or the
    last look), its repeated interval and repeated p-value, and for an undecided one what happens next."""
    o, margin = decision.outcome, f"±{decision.margin * scale:.2f} {unit}"
    n = decision.look_seeds or 0
    if n < 2 or decision.interval is None or decision.look_mean is None:
        have = len(comparison.diffs)
        need = f"; the lab runs seeds up to {decision.seeds_needed}" if decision.seeds_needed else ""
        return f"{name}: {o} at {have} seed{'s' * (have != 1)}: too few for the first look{need}"
    diffs = comparison.diffs[:n]
    mean = decision.look_mean * scale
    lo, hi = (x * scale for x in decision.interval)
    head = {
        BETTER: f"better at {n} seeds",
        WORSE: f"worse at {n} seeds",
        EQUIVALENT: f"equivalent within {margin} at {n} seeds",
        UNDECIDED: f"undecided at {n} seeds",
    }[o]
    wins = sum(x > SAME for x in diffs)
    p = f"repeated {fmt_p(decision.repeated_p if decision.repeated_p is not None else math.nan)}"
    if decision.family > 1:
        p += f", Holm {fmt_p(decision.p_holm)}"
    text = (
        f"{name}: {head}: {mean:+.2f} {unit} {metric} [{lo:+.2f}, {hi:+.2f}] (repeated 95% interval) vs "
        f"{baseline}, {p}, better on {wins} of {n}"
    )
    if o == UNDECIDED:
        if decision.seeds_needed and decision.resolves == "next look":
            text += f"; the lab adds seeds up to {decision.seeds_needed} (sequential design)"
        else:
            text += f"; still undecided at the cap of {decision.cap} seeds (--max-seeds)"
    return text
