"""Decide comparisons while adding seeds (``--seeds auto``) without inflating false positives.

Testing again after each added seed with a fixed-sample t-test and stopping at the first p < 0.05 declares a
difference between two identical variants in about 18% of studies (3 to 10 seeds), not 5% (measured in
``tests/lab/test_sequential.py``). This module's procedure stays valid however the seeds are added and whenever
they stop: a group-sequential design with alpha spending, each comparison tested only at fixed seed counts. A lab
that adds seeds this way reports these outcomes, not :func:`tricklab.lab.stats.decide`'s, which assume the number
of seeds was fixed in advance.

* **Looks** (:func:`looks`): 3, 5, 7, 10, 14, 20, 28, … seeds (each ⌈1.4×⌉ the previous), up to the cap, the cap
  always a look. The schedule depends on ``first`` and ``cap`` only, never on the data.
* **Alpha spending** (Lan & DeMets 1983): look k of K may spend ``α_k = α(t_k) − α(t_{k−1})`` of the total α, with
  the power-family spending function ``α(t) = α·t²`` of Kim & DeMets (1987) at the information fraction
  ``t_k = n_k / cap`` — between Pocock's flat boundary (ρ = 1) and O'Brien–Fleming's steep one (ρ ≈ 3): little
  is spent at 3 seeds, where a t-test has 2 degrees of freedom, and half of α at the cap.
* **Each look** runs the exact paired t-test on the first ``n_k`` differences at level ``α_k``, and forms the
  repeated confidence interval ``x̄ ± t_{1−α_k/2, n_k−1}·s/√n_k`` (Jennison & Turnbull 1989; 2000, ch. 9).
  The looks are combined by the union bound (Bonferroni) rather than the usual multivariate-normal recursion:
  P(some look rejects a true null) ≤ Σ α_k = α, and P(the true mean lies outside some look's interval) ≤ α, for
  any stopping rule — valid for normal differences with unknown variance at every seed count (the standard
  boundaries assume a known variance, wrong with 3–10 seeds), at the price of being conservative.
* **Repeated p-value** of a comparison: ``P = min over its looks of p_k · α/α_k``; ``P(P ≤ x) ≤ x`` under the null
  whenever it is read.
* **Holm** (1979) across the study's comparisons on these repeated p-values: better/worse when the adjusted
  P < α, by the sign of the difference at the look that gave P. A decision stands once made: repeated p-values
  only fall and Holm's procedure is monotone, so every comparison declared better or worse on the way is also
  rejected by Holm at the end, whose family-wise error is ≤ α.
* **Equivalent**: not better/worse, and the look's repeated interval lies inside ±``margin`` (the CI-inclusion
  rule of :mod:`tricklab.lab.stats`, with the repeated interval in place of the fixed one).
* **Undecided** below the cap: needs more seeds, up to the next look. At the cap: undecided, finally.

Simulated in the tests (2,000 null studies of 4 comparisons sharing a baseline, cap 10): a family-wise
false-positive rate of 4.6% (per comparison 1.2%); one true effect among the 4 is called better in 43% of studies
at 1 sd of the paired differences, 86% at 1.5 sd, 98% at 2 sd and 100% at 3 sd (after 6 seeds on average).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from tricklab.lab.stats import ALPHA, BETTER, EQUIVALENT, SAME, UNDECIDED, WORSE, holm

FIRST = 3  # seeds of the first look
CAP = 10  # default --max-seeds
GROWTH = 1.4  # each look has ⌈1.4×⌉ the seeds of the previous one
RHO = 2.0  # power-family spending function α·t^ρ (Kim & DeMets 1987)


def looks(first: int = FIRST, cap: int = CAP) -> tuple[int, ...]:
    """The seed counts at which comparisons are tested: ``first``, then ⌈1.4×⌉ the previous, up to ``cap``.

    Example: ``looks(3, 10)`` → ``(3, 5, 7, 10)``; ``looks(3, 12)`` → ``(3, 5, 7, 10, 12)``.
    """
    if first < 2 or cap < 2:
        raise ValueError(f"first = {first}, cap = {cap}: a t-test needs at least 2 seeds")
    out = [min(first, cap)]
    while out[-1] < cap:
        out.append(min(cap, math.ceil(out[-1] * GROWTH)))
    return tuple(out)


def spending(schedule: Sequence[int], alpha: float = ALPHA, rho: float = RHO) -> tuple[float, ...]:
    """The α each look may spend: ``α·(t_k^ρ − t_{k−1}^ρ)`` at ``t_k = n_k / n_K``; they add up to ``alpha``.

    Example: ``spending((3, 5, 7, 10))`` → ``(0.0045, 0.008, 0.012, 0.0255)``.
    """
    cap = schedule[-1]
    spent = [alpha * (n / cap) ** rho for n in schedule]
    return tuple(b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True))


@dataclass(frozen=True)
class SequentialDecision:
    """Where one comparison stands: decided (better/worse/equivalent) or undecided, and whether to add seeds."""

    outcome: str  # better | worse | equivalent | undecided
    more: bool  # undecided below the cap: run seeds up to ``next_seeds``
    next_seeds: int | None  # the next look's seed count when ``more``
    seeds: int  # the look the outcome was reached at; undecided: the last look evaluated (0: none yet)
    p: float  # repeated p-value (valid whenever read); 1.0 before the first look
    p_holm: float  # its Holm adjustment over the comparisons
    mean: float  # mean difference at ``seeds``
    lo: float  # repeated confidence interval at ``seeds`` (simultaneous over the looks at level 1 − α)
    hi: float


def decide_sequential(
    diffs: Mapping[str, Sequence[float]],
    margin: float,
    *,
    alpha: float = ALPHA,
    first: int = FIRST,
    cap: int = CAP,
) -> dict[str, SequentialDecision]:
    """Each comparison's outcome so far, and whether it needs more seeds; a pure function of the data.

    ``diffs`` maps each of a study's comparisons to its paired differences (variant − baseline) in seed order,
    as many as have run (comparisons decided earlier may have fewer); ``margin`` is the ± margin of practical
    equivalence in the same units. Look k uses the first ``n_k`` differences only, so calling this again with
    more seeds never changes a decision already made.

    Example::

        d = decide_sequential({"bn": bn_minus_plain, "ln": ln_minus_plain}, margin=0.01, cap=10)
        to_run = {name: s.next_seeds for name, s in d.items() if s.more}
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin = {margin!r}: must be a positive number")
    names = list(diffs)
    data = [np.asarray(diffs[n], dtype=float)[:cap] for n in names]
    sizes = np.array([len(x) for x in data], dtype=int)
    schedule = looks(first, cap)
    m = len(names)
    p = np.ones(m)  # repeated p-values
    sign = np.zeros(m)  # sign of the difference at the look that gave p
    seen = np.zeros(m, dtype=int)  # the last look evaluated
    mean, lo, hi = np.full(m, math.nan), np.full(m, math.nan), np.full(m, math.nan)
    code = np.zeros(m, dtype=int)  # 0 undecided, 1 better, −1 worse, 2 equivalent
    at = np.zeros(m, dtype=int)
    adjusted = np.full(m, math.nan)
    for n_k, a_k in zip(schedule, spending(schedule, alpha), strict=True):
        live = np.nonzero((code == 0) & (sizes >= n_k))[0]
        if len(live):
            x = np.stack([data[i][:n_k] for i in live])
            mu, sd = x.mean(1), x.std(1, ddof=1)
            spread = sd > SAME
            se = np.where(spread, sd, 1.0) / math.sqrt(n_k)
            p_k = np.where(spread, 2 * special.stdtr(n_k - 1, -np.abs(mu) / se), 1.0)  # no spread: no t-test
            half = np.where(spread, special.stdtrit(n_k - 1, 1 - a_k / 2) * se, 0.0)
            seen[live], mean[live], lo[live], hi[live] = n_k, mu, mu - half, mu + half
            repeated = np.minimum(1.0, p_k * alpha / a_k)
            lower = repeated < p[live]
            p[live[lower]], sign[live[lower]] = repeated[lower], np.sign(mu[lower])
        adjusted = np.array(holm(p.tolist()))
        open_ = (code == 0) & (seen > 0)
        rejected = open_ & (adjusted < alpha) & (sign != 0)
        code[rejected], at[rejected] = sign[rejected].astype(int), seen[rejected]
        equivalent = open_ & ~rejected & (seen == n_k) & (-margin < lo) & (hi < margin)
        code[equivalent], at[equivalent] = 2, n_k
    outcomes = {0: UNDECIDED, 1: BETTER, -1: WORSE, 2: EQUIVALENT}
    out = {}
    for i, name in enumerate(names):
        later = [n for n in schedule if n > seen[i]]
        more = bool(code[i] == 0 and later)
        out[name] = SequentialDecision(
            outcome=outcomes[int(code[i])],
            more=more,
            next_seeds=later[0] if more else None,
            seeds=int(at[i] or seen[i]),
            p=float(p[i]),
            p_holm=float(adjusted[i]),
            mean=float(mean[i]),
            lo=float(lo[i]),
            hi=float(hi[i]),
        )
    return out
