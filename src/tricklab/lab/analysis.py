"""Turn a study's runs into numbers: per-variant intervals over seeds and paired outcomes against baselines.

Each comparison of a study (variant vs its baseline, paired by seed, on test accuracy) ends as better, worse,
equivalent or undecided (:func:`tricklab.lab.stats.decide`): Holm's correction runs over the study's comparisons,
and equivalence is judged against the study's margin of practical equivalence (:func:`study_margin`).

A comparison in which neither arm learned — both ended at chance, the accuracy of always answering the test set's
most common class (recorded by each run as ``test_prior_acc``), within the study's margin, or both diverged — is
*no signal* (:func:`no_signal_reason`): not tested, not in Holm's family, not given more seeds.

A study may also judge the time to its target validation accuracy (``outcomes: [test_acc, steps_to_target]``;
:mod:`tricklab.lab.speed`): those comparisons form a Holm family of their own.

A study run with ``--seeds auto`` (its spec holds ``sequential: {first, cap}``) is decided by the group-sequential
procedure of :mod:`tricklab.lab.sequential` instead, valid however many seeds were added after looking;
:func:`seeds_to_run` says which variants need more seeds. A fixed-seed study uses seeds ``0 … seeds − 1`` only
and a sequential one seeds below its cap: seeds that a differently run lab left in the same database never
enter a test they were not planned for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tricklab.errors import TrickLabError
from tricklab.lab.speed import (
    SPEED_OUTCOMES,
    CensoredPaired,
    Timed,
    decide_speed,
    decide_speed_sequential,
    paired_censored,
    speed_verdict,
    time_to_target,
)
from tricklab.lab.stats import (
    ALPHA,
    NO_SIGNAL,
    UNDECIDED,
    Decision,
    Interval,
    Paired,
    decide,
    mean_ci,
    paired,
    seeds_needed,
    verdict,
)
from tricklab.lab.store import RunRow

# Metric names shared by the analysis and the report layer.
TEST_ACC = "test_acc"
BEST_VAL_ACC = "best_val_acc"
EPOCHS_TO_TARGET = "epochs_to_target"
WALL_TIME = "wall_time_s"
PRIOR_ACC = "test_prior_acc"  # a run's metric: share of the most common class in the test labels (chance accuracy)
#: The outcomes a study may judge (its ``outcomes``); test accuracy is the default.
JUDGED = (TEST_ACC, *SPEED_OUTCOMES)

# Margins of practical equivalence, in percentage points of test accuracy: a difference known to lie within ± the
# margin is of no practical consequence for the lesson's claims. Each is below the effects the lesson claims on
# that dataset (≥ 0.3 pp on MNIST, ≥ 2 pp on mnist1d) and above the seed-to-seed noise, so that equivalence is
# within reach: with the measured spread of paired differences (full MNIST 0.08–0.16 pp, mnist1d 1.2 pp) a true
# null is shown equivalent with 80% probability at about 4–9 seeds on MNIST and 17 on mnist1d. MNIST-like
# datasets trained on a subset are noisier. A study's ``margin`` overrides them.
MARGINS_PP = {"mnist": 0.2, "fashion-mnist": 0.2, "mnist1d": 1.0, "cifar10": 0.5}
SUBSET_MARGIN_PP = 0.5  # mnist / fashion-mnist trained on a subset (small-data studies, --quick): noisier
DEFAULT_MARGIN_PP = 0.5  # any other dataset (synthetic, npz, csv, plugins)
FULL_SIZE = {"mnist": 60000, "fashion-mnist": 60000}


def epochs_to_target(history: list[dict[str, Any]], target: float | None) -> float | None:
    """The first epoch whose validation accuracy reaches ``target`` (None if never reached)."""
    if target is None:
        return None
    for row in history:
        if row.get("val_acc", -1) >= target:
            return float(row["epoch"])
    return None


def default_margin(dataset: str, subset: int | None = None) -> float:
    """The margin of practical equivalence (pp) for ``dataset`` trained on ``subset`` examples (None: all)."""
    if dataset in FULL_SIZE and subset and subset < FULL_SIZE[dataset]:
        return SUBSET_MARGIN_PP
    return MARGINS_PP.get(dataset, DEFAULT_MARGIN_PP)


def study_margin(spec: dict[str, Any], dataset: str) -> float:
    """The study's margin (pp): its ``margin`` when set, else :func:`default_margin` for the baseline's setup."""
    margin = spec.get("margin")
    if margin is None:
        subset = spec.get("overrides", {}).get(spec.get("baseline"), {}).get("data.subset")
        return default_margin(dataset, subset if isinstance(subset, int) else None)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin <= 100:
        raise TrickLabError(f"study {spec.get('name', '?')!r}: margin = {margin!r}: must be a number of pp in (0, 100]")
    return float(margin)


@dataclass
class VariantStats:
    name: str
    baseline: str
    seeds: list[int]
    failed: list[int]
    values: dict[str, dict[int, float]]  # metric → {seed: value}
    intervals: dict[str, Interval]
    reached_target: int  # runs that reached the target validation accuracy
    diverged: list[int] = field(default_factory=list)  # seeds whose training stopped on NaN/Inf
    comparison: Paired | None = None  # test accuracy vs baseline on common seeds
    decision: Decision | None = None  # its outcome within the study (None for a baseline)
    verdict: str = ""
    curves: dict[int, list[float]] = field(default_factory=dict)  # seed → val_acc per epoch
    times: dict[str, dict[int, Timed]] = field(default_factory=dict)  # steps/seconds_to_target → {seed: time}
    speed: dict[str, CensoredPaired] = field(default_factory=dict)  # judged time-to-target outcome → comparison
    speed_decisions: dict[str, Decision] = field(default_factory=dict)
    speed_verdicts: dict[str, str] = field(default_factory=dict)


@dataclass
class StudyStats:
    study: str
    dataset: str
    baseline: str
    target: float | None
    variants: list[VariantStats]
    pending: int
    margin_pp: float = math.nan  # ± margin of practical equivalence, percentage points of test accuracy
    alpha: float = ALPHA  # family-wise error rate of the study's better/worse claims (Holm)
    chance: float | None = None  # accuracy of always answering the test set's most common class (None: not recorded)
    outcomes: tuple[str, ...] = (TEST_ACC,)  # the outcomes the study judges
    aggregate: str = "mean"  # how the report summarises each arm over seeds: "mean" or "iqm" (the spec's aggregate)

    @property
    def comparisons(self) -> int:
        """Comparisons with a test: the size of the study's Holm family."""
        return next((v.decision.family for v in self.variants if v.decision), 0)

    def variant(self, name: str) -> VariantStats:
        return next(v for v in self.variants if v.name == name)


def sequential_design(spec: dict[str, Any]) -> tuple[int, int] | None:
    """``(first, cap)`` of a study run with ``--seeds auto``, None for a fixed number of seeds."""
    seq = spec.get("sequential")
    if seq is None:
        return None
    first, cap = (seq.get("first"), seq.get("cap")) if isinstance(seq, dict) else (None, None)
    ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (first, cap)) and 2 <= first <= cap <= 1000
    if not ok:
        raise TrickLabError(
            f"study {spec.get('name', '?')!r}: sequential = {seq!r}: "
            "expected {first, cap} with 2 ≤ first ≤ cap ≤ 1000"
        )
    return first, cap


def seed_limit(spec: dict[str, Any]) -> int | None:
    """The seeds a study's analysis uses are ``0 … limit − 1``: its cap when sequential, else its seeds."""
    design = sequential_design(spec)
    if design:
        return design[1]
    seeds = spec.get("seeds")
    return seeds if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0 else None


def analyse(study: str, dataset: str, spec: dict[str, Any], rows: list[RunRow]) -> StudyStats:
    """Statistics of one study on one dataset from its rows; ``spec`` holds variants, baselines and target."""
    target = spec.get("target_val_acc")
    limit = seed_limit(spec)
    if limit is not None:
        rows = [r for r in rows if r.seed < limit]
    out: list[VariantStats] = []
    by_variant: dict[str, list[RunRow]] = {}
    for r in rows:
        by_variant.setdefault(r.variant, []).append(r)
    for name in spec["variants"]:
        vrows = by_variant.get(name, [])
        done = [r for r in vrows if r.status == "done" and r.metrics]
        values: dict[str, dict[int, float]] = {TEST_ACC: {}, BEST_VAL_ACC: {}, EPOCHS_TO_TARGET: {}, WALL_TIME: {}}
        curves: dict[int, list[float]] = {}
        times: dict[str, dict[int, Timed]] = {}
        for r in done:
            hist = r.history or []
            values[TEST_ACC][r.seed] = float(r.metrics["test_acc"])
            vals = [h["val_acc"] for h in hist if "val_acc" in h and "member" not in h] or [
                h["val_acc"] for h in hist if "val_acc" in h
            ]
            if vals:
                values[BEST_VAL_ACC][r.seed] = float(r.metrics.get("best_val_acc", max(vals)))
            e = epochs_to_target([h for h in hist if h.get("member", 0) == 0], target)
            if e is not None:
                values[EPOCHS_TO_TARGET][r.seed] = e
            values[WALL_TIME][r.seed] = float(r.metrics.get("wall_time_s", math.nan))
            if target is not None:
                for key, t in time_to_target(hist, r.metrics, target).items():
                    times.setdefault(key, {})[r.seed] = t
            curves[r.seed] = [h["val_acc"] for h in hist if "val_acc" in h and h.get("member", 0) == 0]
        intervals = {m: mean_ci(list(v.values())) for m, v in values.items()}
        out.append(
            VariantStats(
                name=name,
                baseline=spec["baselines"][name],
                seeds=sorted(values[TEST_ACC]),
                failed=sorted(r.seed for r in vrows if r.status == "failed"),
                values=values,
                intervals=intervals,
                reached_target=len(values[EPOCHS_TO_TARGET]),
                curves=curves,
                times=times,
                diverged=sorted(r.seed for r in done if r.metrics.get("diverged") or r.metrics.get("diverged_members")),
            )
        )
    stats = StudyStats(
        study,
        dataset,
        spec["baseline"],
        target,
        out,
        pending=sum(1 for r in rows if r.status in ("pending", "running")),
        margin_pp=study_margin(spec, dataset),
        chance=_chance(rows),
        outcomes=study_outcomes(spec),
    )
    compared = [v for v in stats.variants if v.name != v.baseline]
    for v in compared:
        v.comparison = paired(v.values[TEST_ACC], stats.variant(v.baseline).values[TEST_ACC])
    margin = stats.margin_pp / 100
    silent = {
        v.name: r for v in compared if (r := no_signal_reason(v, stats.variant(v.baseline), stats.chance, margin))
    }
    tested = [v for v in compared if v.name not in silent]
    design = sequential_design(spec)
    if design:
        decisions = _decide_sequential(tested, margin, stats.alpha, *design)
    else:
        decisions = decide({v.name: v.comparison for v in tested}, margin, stats.alpha) if tested else {}
    family = next((d.family for d in decisions.values()), 0)
    for name, reason in silent.items():
        decisions[name] = Decision(  # part of the study's design all the same (sequential: its cap)
            NO_SIGNAL, math.nan, margin, family, stats.alpha, reason=reason, sequential=bool(design),
            cap=design[1] if design else None,
        )
    for v in stats.variants:
        if v.comparison is None:
            v.verdict = f"{v.name}: baseline"
            continue
        v.decision = decisions[v.name]
        v.verdict = verdict(v.name, v.comparison, v.decision, baseline=v.baseline)
    _judge_speed(stats, compared, design)
    return stats


def study_outcomes(spec: dict[str, Any]) -> tuple[str, ...]:
    """The outcomes a stored study judges (its ``outcomes``; test accuracy alone when absent), checked."""
    outcomes = spec.get("outcomes")
    if outcomes is None:
        return (TEST_ACC,)
    ok = isinstance(outcomes, list | tuple) and outcomes and all(o in JUDGED for o in outcomes)
    if not ok or len(set(outcomes)) != len(outcomes):
        raise TrickLabError(
            f"study {spec.get('name', '?')!r}: outcomes = {outcomes!r}: expected a list of distinct names from "
            f"{', '.join(JUDGED)}"
        )
    if any(o in SPEED_OUTCOMES for o in outcomes) and spec.get("target_val_acc") is None:
        raise TrickLabError(
            f"study {spec.get('name', '?')!r}: outcomes = {list(outcomes)!r}: time to target needs the study's "
            "target_val_acc, which is not set"
        )
    return tuple(outcomes)


def _chance(rows: list[RunRow]) -> float | None:
    """The test set's chance accuracy as the runs recorded it (the same test set for every run of a study)."""
    found = [float(r.metrics[PRIOR_ACC]) for r in rows if r.metrics and _finite(r.metrics.get(PRIOR_ACC))]
    return max(found) if found else None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _learned_nothing(v: VariantStats, seeds: list[int], chance: float | None, margin: float) -> str:
    """Why arm ``v`` learned nothing on ``seeds`` ("" when it learned): every run diverged, or its mean test
    accuracy is at or below ``chance`` + ``margin``."""
    if seeds and set(seeds) <= set(v.diverged):
        return f"{v.name} diverged on every seed"
    accs = [v.values[TEST_ACC][s] for s in seeds if _finite(v.values[TEST_ACC].get(s))]
    if chance is None or not accs:
        return ""
    mean = sum(accs) / len(accs)
    if mean <= chance + margin:
        return f"{v.name} at chance ({mean * 100:.2f}% ≤ {chance * 100:.2f}% + {margin * 100:.2f} pp)"
    return ""


def no_signal_reason(v: VariantStats, base: VariantStats, chance: float | None, margin: float) -> str:
    """Why the comparison of ``v`` with ``base`` carries no signal, or "" when at least one arm learned.

    An arm learned nothing when every one of its runs diverged, or when its mean test accuracy over the seeds both
    arms ran is at or below ``chance`` — the share of the test set's most common class, the accuracy of a net that
    always answers it — plus ``margin`` (the study's margin of practical equivalence, a fraction). Both arms at
    11.35% on MNIST (the share of the digit 1) compare nothing, however equal they look.

    Example: ``"both arms learned nothing: layer at chance (11.35% ≤ 11.35% + 0.20 pp); none at chance (…)"``.
    """
    seeds = sorted((set(v.seeds) | set(v.diverged)) & (set(base.seeds) | set(base.diverged)))
    if not seeds:
        return ""
    a, b = _learned_nothing(v, seeds, chance, margin), _learned_nothing(base, seeds, chance, margin)
    return f"both arms learned nothing: {a}; {b}" if a and b else ""


def _judge_speed(stats: StudyStats, compared: list[VariantStats], design: tuple[int, int] | None) -> None:
    """Time-to-target outcomes of the study's comparisons, for each speed outcome it judges (a Holm family each)."""
    for key in (o for o in stats.outcomes if o in SPEED_OUTCOMES):
        pairs = {
            v.name: paired_censored(v.times.get(key, {}), stats.variant(v.baseline).times.get(key, {}))
            for v in compared
        }
        pairs = {n: c for n, c in pairs.items() if c.seeds}
        if design:
            decisions = decide_speed_sequential(pairs, alpha=stats.alpha, first=design[0], cap=design[1])
        else:
            decisions = decide_speed(pairs, alpha=stats.alpha)
        unit = key.removesuffix("_to_target")
        for v in compared:
            if v.name in decisions:
                v.speed[key], v.speed_decisions[key] = pairs[v.name], decisions[v.name]
                v.speed_verdicts[key] = speed_verdict(
                    v.name, pairs[v.name], decisions[v.name], unit=unit, baseline=v.baseline
                )


def _decide_sequential(
    compared: list[VariantStats], margin: float, alpha: float, first: int, cap: int
) -> dict[str, Decision]:
    """:func:`~tricklab.lab.sequential.decide_sequential` on the paired differences in seed order, as Decisions."""
    from tricklab.lab.sequential import decide_sequential

    seq = decide_sequential({v.name: v.comparison.diffs for v in compared}, margin, alpha=alpha, first=first, cap=cap)
    family = sum(1 for v in compared if len(v.comparison.diffs) >= first)
    out = {}
    for v in compared:
        d = seq[v.name]
        decided = d.outcome != UNDECIDED
        need, resolves = (d.next_seeds, "next look") if d.more else (None, "")
        if not decided and not d.more and v.comparison.diff.n >= 2:  # at the cap: what a fixed design would need
            need, resolves = seeds_needed(v.comparison.diff, margin, alpha)
        out[v.name] = Decision(
            d.outcome,
            p_holm=d.p_holm,
            margin=margin,
            family=family,
            alpha_next=alpha,
            seeds_needed=need,
            resolves=resolves,
            sequential=True,
            decided_at=d.seeds if decided else None,
            interval=(d.lo, d.hi) if d.seeds else None,
            look_seeds=d.seeds or None,
            look_mean=d.mean if d.seeds else None,
            cap=cap,
            repeated_p=d.p,
        )
    return out


def seeds_to_run(stats: StudyStats) -> dict[str, int]:
    """For a sequential study: the seeds each variant should have, given its comparisons' outcomes so far.

    A comparison still open below the cap asks for its next look's seed count, for the variant and for its
    baseline; a variant needed by nothing keeps what it has. Decided comparisons ask for nothing more.
    """
    want: dict[str, int] = {}
    for v in stats.variants:
        judged = [v.decision] if TEST_ACC in stats.outcomes else []
        for d in [*judged, *v.speed_decisions.values()]:
            if d is not None and d.sequential and d.resolves == "next look" and d.seeds_needed:
                for name in (v.name, v.baseline):
                    want[name] = max(want.get(name, 0), d.seeds_needed)
    return want
