"""Time to target as a compared outcome: steps (or seconds) to the study's target validation accuracy, paired by seed.

A study that judges ``steps_to_target`` (its ``outcomes``) compares each variant with its baseline on how soon each
seed's run first reaches the study's target validation accuracy (the measure of MLCommons AlgoPerf, Dahl et al.
2023). Runs record validation accuracy once per epoch, so the time to target is resolved to epochs: a run's steps to
target are the optimizer steps at the end of the first epoch whose validation accuracy reaches the target
(:func:`time_to_target`), its seconds the summed epoch times (``epoch_time_s``) up to then (validation included).

**Censoring.** A run that never reaches the target is censored at its budget (all its steps, all its seconds): its
time is known only to exceed that. It is neither dropped nor given a made-up time. For each seed the pair
(variant, baseline) is scored by what is known of its order (Gehan 1965, pairwise), as a log ratio
``d = log(t_baseline / t_variant)`` (> 0: the variant was faster):

* both reached the target: ``d`` is the exact log ratio;
* one reached it at ``t`` no later than the other's censoring time ``c`` (the other had not reached it by ``c``):
  the reached one is faster, and ``d`` is the bound ``±log(c / t)`` (the true ratio is at least that; at ``t = c``
  the smallest non-zero score, :data:`LEAST`: its sign known, its size not);
* neither reached it, or one reached it only after the other's censoring time: the order is unknown, ``d = 0``
  (no information; such pairs are left out of the ranks);
* both reached it between the same two validations: validation is the clock's resolution, so each time is known
  only to lie in ``(previous validation, this one]`` (:attr:`Timed.after`; interval-censored) and the order is
  unknown: ``d = 0``. Two runs that met the target at the first validation (both in ``(0, one epoch]``) are such a
  pair, whatever the ratio of their true times.

**Test** (:func:`signed_rank_p`): Wilcoxon's signed-rank statistic on the non-zero scores, with its exact two-sided
p-value over the 2ⁿ sign flips (a normal approximation above :data:`EXACT_MAX` informative pairs). Swapping the arms
of a pair negates its score, so under the null hypothesis that variant and baseline are exchangeable within a seed
(same distribution of times, same budget) every sign pattern is equally likely, whatever the censoring: the test is
exact. With n informative pairs the smallest p-value is 2/2ⁿ, so no claim is possible below 5 informative seeds
(6 at α = 0.05 before any correction).

**Outcomes**, the lab's four, plus *no signal*:

* **better** / **worse**: Holm-adjusted p < α over the study's time-to-target comparisons (a family of its own,
  beside the test-accuracy family); better when the variant is faster (positive signed-rank statistic);
* **equivalent**: not better or worse, every pair's ratio is *resolved* (both arms reached the target and the
  ratio's bounds from the validation intervals, ``(after_b / t_a, t_b / after_a)``, lie inside the margin), and the
  95% t interval of the log ratios lies inside ±log(1 + :data:`SPEED_MARGIN`) — the two arms' times differ by less
  than 10%. Two runs that both met the target at validation k have a ratio in ``((k−1)/k, k/(k−1))``: resolved within
  ±10% only from k = 11 on;
* **undecided**: the rest;
* **no signal**: no pair has a known order or a resolved ratio: on every seed neither arm reached the target, or
  both met it between the same two validations too early to bound their ratio (:attr:`CensoredPaired.no_time` gives
  the reason; a lower target or more frequent validation would measure one). More seeds would not change that.

With ``--seeds auto`` (:func:`decide_speed_sequential`) the same looks and alpha spending as
:mod:`tricklab.lab.sequential` are used: look k tests the first ``n_k`` pairs at level ``α_k``, the repeated p-value
is ``min_k p_k·α/α_k`` and Holm runs over those. A look whose exact test could not reject at any data (3 and 5
seeds: smallest p-values 1/4 and 1/16) passes its α on to the next one (:func:`rank_test_spending`).
``benchmarks/calibrate_lab.py`` simulates null studies with censoring through this code to check the family-wise
false-positive rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from tricklab.lab.sequential import looks, spending
from tricklab.lab.stats import ALPHA, BETTER, EQUIVALENT, NO_SIGNAL, SAME, UNDECIDED, WORSE, Decision, holm
from tricklab.metrics import EPOCH_TIME

STEPS_TO_TARGET = "steps_to_target"
SECONDS_TO_TARGET = "seconds_to_target"
SPEED_OUTCOMES = (STEPS_TO_TARGET, SECONDS_TO_TARGET)
SPEED_MARGIN = 0.1  # times within ±10% of each other are of no practical difference (equivalence)
LEAST = 1e-9  # the score of a pair whose order is known but whose bound on the ratio is 1 (smallest rank)
EXACT_MAX = 16  # exact sign-flip distribution up to this many informative pairs; normal approximation above


@dataclass(frozen=True)
class Timed:
    """One run's time to target: ``value`` (steps or seconds) and whether the target was reached; when not,
    ``value`` is the run's whole budget (censored)."""

    value: float
    reached: bool
    after: float | None = None  # the previous validation's time: reached in (after, value]; None: exactly at value

    @property
    def low(self) -> float:
        """The earliest the target may have been met (``after``; ``value`` when known exactly or not reached)."""
        return self.value if self.after is None or not self.reached else self.after


def time_to_target(history: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], target: float) -> dict[str, Timed]:
    """Steps and seconds to ``target`` validation accuracy of one run (its first member's history for an ensemble).

    Steps per epoch are the run's steps over its epochs (``metrics["steps"] / metrics["epochs_run"]``: every epoch
    has the same number of batches); seconds add up the history's ``epoch_time``. Censored at the run's last epoch
    when never reached. Returns ``{}`` when the run recorded no validation accuracy or no step count.

    Example: a 3-epoch run of 100 steps per epoch with validation accuracy 0.5, 0.8, 0.9 and target 0.8 →
    ``{"steps_to_target": Timed(200, True), "seconds_to_target": Timed(<first two epoch times>, True)}``.
    """
    member = metrics.get("members", [metrics])[0] if isinstance(metrics.get("members"), list) else metrics
    steps, epochs = member.get("steps"), member.get("epochs_run")
    rows = [h for h in history if h.get("member", 0) == 0 and "val_acc" in h]
    if not rows or not steps or not epochs:
        return {}
    per_epoch = float(steps) / float(epochs)
    seconds = 0.0
    for i, row in enumerate(rows):
        before = seconds
        seconds += float(row.get(EPOCH_TIME, math.nan))
        if row["val_acc"] >= target:
            return {
                STEPS_TO_TARGET: Timed(per_epoch * (i + 1), True, after=per_epoch * i),
                SECONDS_TO_TARGET: Timed(seconds, True, after=before),
            }
    return {STEPS_TO_TARGET: Timed(per_epoch * len(rows), False), SECONDS_TO_TARGET: Timed(seconds, False)}


def scores(variant: Sequence[Timed], baseline: Sequence[Timed]) -> np.ndarray:
    """Per-pair log-ratio scores ``log(t_baseline / t_variant)`` under censoring (see the module docstring)."""
    ta = np.array([t.value for t in variant], dtype=float)
    tb = np.array([t.value for t in baseline], dtype=float)
    ra = np.array([t.reached for t in variant], dtype=bool)
    rb = np.array([t.reached for t in baseline], dtype=bool)
    overlap = np.array([_overlap(a, b) for a, b in zip(variant, baseline, strict=True)], dtype=bool)
    return score_matrix(ta, ra, tb, rb, overlap=overlap)


def _overlap(a: Timed, b: Timed) -> bool:
    """Both reached the target and their intervals ``(after, value]`` overlap (the order is unknown) — not two
    exactly known times."""
    if not (a.reached and b.reached) or (a.after is None and b.after is None):
        return False
    return a.low < b.value and b.low < a.value


def resolved(a: Timed, b: Timed, margin: float = 0.1) -> bool:
    """Whether the ratio ``a / b`` of two reached times is known to within ``1 ± margin`` (on the log scale,
    ±log(1 + margin)) from their intervals: exact times always are; two met at validation k are from k = 11 on (10%).
    """
    if not (a.reached and b.reached):
        return False
    if a.after is None and b.after is None:
        return True
    if a.low <= 0 or b.low <= 0:
        return False
    bound = math.log1p(margin) + 1e-12
    return math.log(a.value / b.low) <= bound and math.log(a.low / b.value) >= -bound


def score_matrix(ta: np.ndarray, ra: np.ndarray, tb: np.ndarray, rb: np.ndarray, *, overlap: np.ndarray) -> np.ndarray:
    """:func:`scores` for whole arrays (times ``t``, reached flags ``r``; variant ``a``, baseline ``b``;
    ``overlap``: pairs whose arms both met the target between the same two validations, scored 0).

    A run censored at ``c`` would have reached the target only after ``c``: one that reached it at ``t ≤ c`` is
    faster, even at ``t = c`` (the target met at the last evaluation of the other's budget); such a pair's bound
    ``log(c / t)`` is then 0, and it is scored :data:`LEAST` (the smallest rank, its sign known)."""
    d = np.log(np.maximum(tb, 1e-12)) - np.log(np.maximum(ta, 1e-12))
    a_first = ra & ~rb & (ta <= tb)  # the variant reached it, the baseline had not by then
    b_first = rb & ~ra & (tb <= ta)
    d = np.where(a_first, np.maximum(d, LEAST), np.where(b_first, np.minimum(d, -LEAST), d))
    known = ((ra & rb) & ~overlap) | a_first | b_first
    return np.where(known, d, 0.0)


def _signs(n: int) -> np.ndarray:
    return 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)


def signed_rank_p(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-values of Wilcoxon's signed-rank test, one per row of scores ``d`` (zeros carry no information),
    and the statistic's sign (+1: positive scores dominate). Exact over the 2ⁿ sign flips for rows of at most
    :data:`EXACT_MAX` columns (average ranks for ties); a normal approximation otherwise. A row without a non-zero
    score gets p = 1.

    Example: ``signed_rank_p(np.array([[0.3, 0.2, 0.1, 0.0]]))`` → ``p = 0.25`` (2 of the 8 sign patterns of the
    three informative pairs are as extreme), sign +1.
    """
    d = np.atleast_2d(np.asarray(d, dtype=float))
    nonzero = np.abs(d) > SAME
    zeros = (~nonzero).sum(1, keepdims=True)
    ranks = np.where(nonzero, stats.rankdata(np.abs(d), axis=1) - zeros, 0.0)
    t = (np.sign(d) * nonzero * ranks).sum(1)
    n = d.shape[1]
    if n <= EXACT_MAX:
        perm = ranks @ _signs(n).T  # (rows, 2ⁿ): the statistic under every sign pattern
        p = (np.abs(perm) >= np.abs(t)[:, None] - 1e-9).mean(1)
    else:
        sd = np.sqrt((ranks**2).sum(1))
        z = np.abs(t) / np.where(sd > 0, sd, 1.0)
        p = np.where(sd > 0, 2 * stats.norm.sf(z), 1.0)
    return np.minimum(p, 1.0), np.sign(t)


@dataclass(frozen=True)
class CensoredPaired:
    """Time to target of a variant vs its baseline on their common seeds: the scores and the signed-rank test."""

    seeds: tuple[int, ...]
    variant: tuple[Timed, ...]
    baseline: tuple[Timed, ...]
    scores: tuple[float, ...]
    p: float  # two-sided signed-rank p-value; NaN without informative pairs
    sign: int  # +1: the variant is faster, −1: slower, 0: no informative pair

    @property
    def informative(self) -> int:
        return sum(abs(s) > SAME for s in self.scores)

    @property
    def faster(self) -> int:
        """Seeds on which the variant is known to reach the target first."""
        return sum(s > SAME for s in self.scores)

    @property
    def exact(self) -> list[bool]:
        """Per seed: whether the pair's ratio is resolved within :data:`SPEED_MARGIN` (:func:`resolved`)."""
        return [resolved(a, b, SPEED_MARGIN) for a, b in zip(self.variant, self.baseline, strict=True)]

    @property
    def no_time(self) -> str:
        """Why there is no time to compare ('' when there is one): no pair has a known order or a resolved ratio."""
        return untimed_reason(self.variant, self.baseline)

    @property
    def ratio(self) -> float:
        """Median over the seeds where both reached the target of variant time / baseline time (NaN: none)."""
        r = [
            a.value / b.value
            for a, b in zip(self.variant, self.baseline, strict=True)
            if a.reached and b.reached and b.value
        ]
        return float(np.median(r)) if r else math.nan


def timed_pairs(variant: Sequence[Timed], baseline: Sequence[Timed]) -> list[bool]:
    """Per seed: whether the pair carries a time: its order is known (a non-zero score) or its ratio is resolved
    within :data:`SPEED_MARGIN`."""
    known = np.abs(scores(variant, baseline)) > SAME if variant else np.zeros(0, dtype=bool)
    return [bool(k) or resolved(a, b, SPEED_MARGIN) for k, a, b in zip(known, variant, baseline, strict=True)]


def untimed_reason(variant: Sequence[Timed], baseline: Sequence[Timed]) -> str:
    """'' when some pair carries a time (:func:`timed_pairs`), else the reason there is none."""
    if any(timed_pairs(variant, baseline)):
        return ""
    if not any(a.reached or b.reached for a, b in zip(variant, baseline, strict=True)):
        return "neither arm reached the target on any seed"
    return (
        "on every seed both arms met the target between the same two validations (or neither met it): times are "
        f"resolved to validations, too coarse to order them or to bound their ratio within ±{SPEED_MARGIN:.0%}; a "
        "lower target or more frequent validation would measure them"
    )


def paired_censored(variant: Mapping[int, Timed], baseline: Mapping[int, Timed]) -> CensoredPaired:
    """Pair two ``{seed: Timed}`` maps on their common seeds and test them (:func:`signed_rank_p`)."""
    seeds = tuple(sorted(s for s in variant if s in baseline))
    a, b = tuple(variant[s] for s in seeds), tuple(baseline[s] for s in seeds)
    d = scores(a, b)
    if not (np.abs(d) > SAME).any():
        return CensoredPaired(seeds, a, b, tuple(d.tolist()), math.nan, 0)
    p, sign = signed_rank_p(d[None, :])
    return CensoredPaired(seeds, a, b, tuple(d.tolist()), float(p[0]), int(sign[0]))


def _equivalent(d: np.ndarray, both: bool, level: float, margin: float) -> tuple[bool, float, float]:
    """Whether the ``1 − level`` t interval of the log ratios lies inside ±log(1 + margin); needs every pair's ratio
    resolved within the margin (``both``: a censored time, or two met at the same early validation, are not)."""
    n = len(d)
    if not both or n < 2:
        return False, math.nan, math.nan
    mu, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(special.stdtrit(n - 1, 1 - level / 2)) * sd / math.sqrt(n) if sd > SAME else 0.0
    bound = math.log1p(margin)
    return (-bound < mu - half and mu + half < bound), mu - half, mu + half


def decide_speed(
    comparisons: Mapping[str, CensoredPaired], alpha: float = ALPHA, margin: float = SPEED_MARGIN
) -> dict[str, Decision]:
    """Outcomes of a study's time-to-target comparisons run on a fixed number of seeds (Holm over them).

    ``margin`` is relative (0.1: ±10%); :attr:`Decision.margin` holds it. No-signal comparisons (no seed reached
    the target in either arm) are left out of Holm's family.
    """
    names = [n for n in comparisons if not comparisons[n].no_time]
    adjusted = dict(zip(names, holm([comparisons[n].p for n in names]), strict=True))
    family = sum(math.isfinite(p) for p in adjusted.values())
    rejected = {n for n, p in adjusted.items() if math.isfinite(p) and p < alpha and comparisons[n].sign != 0}
    alpha_next = alpha / max(1, family - len(rejected))
    out = {}
    for name, c in comparisons.items():
        if name not in adjusted:
            out[name] = Decision(NO_SIGNAL, math.nan, margin, family, alpha_next, reason=c.no_time)
            continue
        common = dict(p_holm=adjusted[name], margin=margin, family=family, alpha_next=alpha_next)
        equiv, lo, hi = _equivalent(np.asarray(c.scores), all(c.exact), alpha, margin)
        if name in rejected:
            out[name] = Decision(BETTER if c.sign > 0 else WORSE, **common)
        elif equiv:
            out[name] = Decision(EQUIVALENT, **common, interval=(lo, hi))
        else:
            out[name] = Decision(UNDECIDED, **common)
    return out


def rank_test_spending(schedule: Sequence[int], alpha: float = ALPHA) -> tuple[float, ...]:
    """The α each look's signed-rank test may spend: :func:`~tricklab.lab.sequential.spending`'s, except that a look
    at which the exact test cannot reach its level even with every pair one way (smallest p-value 2/2ⁿ above the α
    accumulated so far) spends nothing and passes its α on to the next look. Fixed by the seed counts alone, before
    any data, so the looks' levels still add up to ``alpha`` and the union bound holds.

    Example: ``rank_test_spending((3, 5, 7, 10))`` → ``(0, 0, 0.0245, 0.0255)``: 3 and 5 seeds cannot reach p < 0.0125.
    """
    out, carried = [], 0.0
    for n, a in zip(schedule, spending(schedule, alpha), strict=True):
        carried += a
        smallest = 2.0 / 2.0**n if n <= EXACT_MAX else 0.0
        if smallest <= carried:
            out.append(carried)
            carried = 0.0
        else:
            out.append(0.0)
    return tuple(out)


def decide_speed_sequential(
    comparisons: Mapping[str, CensoredPaired],
    *,
    alpha: float = ALPHA,
    first: int,
    cap: int,
    margin: float = SPEED_MARGIN,
) -> dict[str, Decision]:
    """Outcomes under ``--seeds auto``: the looks and alpha spending of :mod:`tricklab.lab.sequential`, the
    signed-rank test at each look, repeated p-values, Holm over the study's time-to-target comparisons. An
    undecided comparison below the cap asks for its next look's seeds (``resolves = "next look"``)."""
    names = list(comparisons)
    schedule = looks(first, cap)
    data = [np.asarray(comparisons[n].scores, dtype=float)[:cap] for n in names]
    both = [c.exact for c in comparisons.values()]
    anyone = [timed_pairs(c.variant, c.baseline) for c in comparisons.values()]
    m = len(names)
    p, sign, seen = np.ones(m), np.zeros(m), np.zeros(m, dtype=int)
    code, at = np.zeros(m, dtype=int), np.zeros(m, dtype=int)  # 0 undecided, ±1 better/worse, 2 equiv, 3 no signal
    interval: list[tuple[float, float] | None] = [None] * m
    equiv = np.zeros(m, dtype=bool)
    adjusted = np.full(m, math.nan)
    usable = rank_test_spending(schedule, alpha)
    for n_k, a_k, u_k in zip(schedule, spending(schedule, alpha), usable, strict=True):
        equiv[:] = False
        for i in range(m):
            x = data[i]
            if code[i] != 0 or len(x) < n_k:
                continue
            seen[i] = n_k
            if not any(anyone[i][:n_k]):  # no pair carries a time yet: nothing to compare, no more seeds
                code[i], at[i] = 3, n_k
                continue
            if u_k > 0 and (np.abs(x[:n_k]) > SAME).any():
                pk, sk = signed_rank_p(x[None, :n_k])
                repeated = min(1.0, float(pk[0]) * alpha / u_k)
                if repeated < p[i]:
                    p[i], sign[i] = repeated, sk[0]
            equiv[i], lo, hi = _equivalent(x[:n_k], all(both[i][:n_k]), a_k, margin)
            if math.isfinite(lo):
                interval[i] = (lo, hi)
        tested = np.nonzero((code != 3) & (seen > 0))[0]
        adjusted = np.full(m, math.nan)
        adjusted[tested] = holm(p[tested].tolist())
        open_ = (code == 0) & (seen > 0)
        rejected = open_ & (np.nan_to_num(adjusted, nan=1.0) < alpha) & (sign != 0)
        code[rejected], at[rejected] = sign[rejected].astype(int), seen[rejected]
        equivalent = open_ & ~rejected & (seen == n_k) & equiv
        code[equivalent], at[equivalent] = 2, n_k
    family = sum(1 for i in range(m) if code[i] != 3 and seen[i] > 0)
    labels = {0: UNDECIDED, 1: BETTER, -1: WORSE, 2: EQUIVALENT, 3: NO_SIGNAL}
    out = {}
    for i, name in enumerate(names):
        later = [n for n in schedule if n > seen[i]]
        more = code[i] == 0 and bool(later)
        out[name] = Decision(
            labels[int(code[i])],
            p_holm=float(adjusted[i]),
            margin=margin,
            family=family,
            alpha_next=alpha,
            seeds_needed=later[0] if more else None,
            resolves="next look" if more else "",
            sequential=True,
            decided_at=int(at[i]) if code[i] != 0 else None,
            interval=interval[i],
            look_seeds=int(at[i] or seen[i]) or None,
            cap=cap,
            repeated_p=float(p[i]),
            reason=untimed_reason(comparisons[name].variant[: at[i]], comparisons[name].baseline[: at[i]])
            if code[i] == 3
            else "",
        )
    return out


def speed_verdict(name: str, c: CensoredPaired, d: Decision, *, unit: str = "steps", baseline: str = "baseline") -> str:
    """One sentence on a time-to-target comparison, starting with its outcome.

    ``"adam: faster (better): 0.42× the steps of sgd to target (median of 5 seeds where both reached it), signed-rank
    p = 0.031, faster on 5 of 5 informative seeds, 5 of 5 vs 5 of 5 seeds reached the target"``.
    """
    reach = (
        f"{sum(t.reached for t in c.variant)} of {len(c.seeds)} vs {sum(t.reached for t in c.baseline)} of "
        f"{len(c.seeds)} seeds reached the target"
    )
    if d.outcome == NO_SIGNAL:
        return f"{name}: {NO_SIGNAL} on {unit} to target: {d.reason} ({len(c.seeds)} seeds)"
    head = {
        BETTER: "better (faster)",
        WORSE: "worse (slower)",
        EQUIVALENT: f"equivalent within ±{d.margin * 100:.0f}%",
        UNDECIDED: "undecided",
    }[d.outcome]
    ratio = f"{c.ratio:.2f}× the {unit} of {baseline}" if math.isfinite(c.ratio) else "no seed where both reached it"
    p = (
        f"repeated p = {d.repeated_p:.3g}"
        if d.sequential and d.repeated_p is not None
        else ("p undefined" if not math.isfinite(c.p) else f"signed-rank p = {c.p:.3g}")
    )
    if d.family > 1 and math.isfinite(d.p_holm):
        p += f", Holm p = {d.p_holm:.3g}"
    return (
        f"{name}: {head} on {unit} to target: {ratio}, {p}, faster on {c.faster} of {c.informative} informative "
        f"seeds, {reach}"
    )
