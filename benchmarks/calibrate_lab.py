"""Calibrate the lab's time-to-target test: simulated null studies with censoring, through the lab's decision code.

Each simulated study has one baseline and ``comparisons`` variants compared with it on the same seeds, as a lab
study does. A run's time to target is log-normal with a per-seed part shared by every arm of that seed (the pairing)
and a per-run part; it is resolved to epochs (steps at the end of the first epoch that reaches the target, as
:func:`tricklab.lab.speed.time_to_target` does) and censored at the budget of ``epochs`` epochs, the distribution
placed so that a share ``censored`` of the baseline's runs never reach the target. Under the null every variant has
the baseline's distribution; for power, the first variant needs ``effect`` fewer steps (0.25: 25% fewer) and the
others are null.

Every study is decided by :func:`tricklab.lab.speed.decide_speed_sequential` (``--seeds auto``: looks 3, 5, 7, 10,
alpha spending α·t², repeated p-values, Holm over the study's comparisons) or :func:`~tricklab.lab.speed.decide_speed`
(a fixed number of seeds), exactly as the lab calls them. The family-wise false-positive rate is the share of
studies with any null comparison called better or worse; its 95% interval is Clopper–Pearson's.

    .venv/bin/python benchmarks/calibrate_lab.py --studies 2000
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tricklab.lab.speed import Timed, decide_speed, decide_speed_sequential, paired_censored
from tricklab.lab.stats import BETTER, WORSE

SEED_SD = 0.2  # sd of log time shared by the arms of one seed (same data order, same init draw)
RUN_SD = 0.25  # sd of log time of one run beyond it (--run-sd)
STEPS_PER_EPOCH = 100


@dataclass(frozen=True)
class Calibration:
    studies: int
    family_rate: float  # share of studies with a false better/worse among the null comparisons
    family_ci: tuple[float, float]
    power: float  # share of studies whose first variant (with the effect) is called better (NaN under the null)
    power_ci: tuple[float, float]
    censored: float  # share of simulated runs that never reached the target
    mean_seeds: float  # mean seeds per comparison at its decision (sequential) or the fixed seeds


def _ci(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def _timed(steps: float, reached: bool) -> Timed:
    """A run's time as :func:`~tricklab.lab.speed.time_to_target` gives it: met between the previous epoch's
    validation and this one's, or censored at the budget."""
    steps = float(steps)
    return Timed(steps, True, after=steps - STEPS_PER_EPOCH) if reached else Timed(steps, False)


def simulate(
    *,
    studies: int = 2000,
    comparisons: int = 4,
    effect: float = 0.0,
    censored: float = 0.3,
    epochs: int = 10,
    seeds: int = 10,
    first: int | None = 3,
    seed: int = 0,
    run_sd: float = RUN_SD,
) -> Calibration:
    """Simulate ``studies`` studies; ``first`` None: a fixed design of ``seeds`` seeds, else ``--seeds auto`` from
    ``first`` up to the cap ``seeds``."""
    rng = np.random.default_rng(seed)
    budget = epochs * STEPS_PER_EPOCH
    sd = math.hypot(SEED_SD, run_sd)
    mu = math.log(budget) - stats.norm.ppf(1 - censored) * sd  # P(T > budget) = censored for the baseline
    arms = comparisons + 1  # arm 0 is the baseline
    shift = np.zeros(arms)
    shift[1] = math.log1p(-effect) if effect else 0.0
    log_t = mu + rng.normal(0, SEED_SD, (studies, 1, seeds)) + rng.normal(0, run_sd, (studies, arms, seeds))
    log_t += shift[None, :, None]
    steps = np.ceil(np.exp(log_t) / STEPS_PER_EPOCH) * STEPS_PER_EPOCH  # resolved to the end of an epoch
    reached = steps <= budget
    steps = np.minimum(steps, budget)
    family_errors = power_hits = 0
    used = []
    for i in range(studies):
        timed = [{s: _timed(steps[i, a, s], reached[i, a, s]) for s in range(seeds)} for a in range(arms)]
        pairs = {f"v{a}": paired_censored(timed[a], timed[0]) for a in range(1, arms)}
        if first is None:
            decisions = decide_speed(pairs)
        else:
            decisions = decide_speed_sequential(pairs, first=first, cap=seeds)
        nulls = [n for n in pairs if not (effect and n == "v1")]
        family_errors += any(decisions[n].outcome in (BETTER, WORSE) for n in nulls)
        power_hits += bool(effect) and decisions["v1"].outcome == BETTER
        used += [d.look_seeds or seeds if first is not None else seeds for d in decisions.values()]
    return Calibration(
        studies=studies,
        family_rate=family_errors / studies,
        family_ci=_ci(family_errors, studies),
        power=power_hits / studies if effect else math.nan,
        power_ci=_ci(power_hits, studies) if effect else (math.nan, math.nan),
        censored=float((~reached).mean()),
        mean_seeds=float(np.mean(used)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--comparisons", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-sd", type=float, default=RUN_SD, help="sd of a run's log time beyond its seed's")
    ap.add_argument("--effects", default="0,0.1,0.25,0.5", help="fractions of steps saved by the first variant")
    ap.add_argument("--designs", default="auto,10", help="auto (--seeds auto, 3…10) and/or fixed seed counts")
    args = ap.parse_args()
    print(
        "| design | comparisons | run sd | runs censored | effect | family-wise false-positive rate [95% CI] | "
        "power [95% CI] | mean seeds | time |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    designs = [
        ("--seeds auto (3…10)", 3, 10) if d == "auto" else (f"fixed {d} seeds", None, int(d))
        for d in args.designs.split(",")
    ]
    for label, first, seeds in designs:
        for censored in (0.2, 0.4):
            for effect in (float(e) for e in args.effects.split(",")):
                start = time.perf_counter()
                c = simulate(
                    studies=args.studies,
                    comparisons=args.comparisons,
                    effect=effect,
                    censored=censored,
                    seeds=seeds,
                    first=first,
                    seed=args.seed,
                    run_sd=args.run_sd,
                )
                power = "—" if not effect else f"{c.power:.1%} [{c.power_ci[0]:.1%}, {c.power_ci[1]:.1%}]"
                print(
                    f"| {label} | {args.comparisons} | {args.run_sd:g} | {c.censored:.0%} | {effect:.0%} fewer steps | "
                    f"{c.family_rate:.2%} [{c.family_ci[0]:.2%}, {c.family_ci[1]:.2%}] | {power} | "
                    f"{c.mean_seeds:.1f} | {time.perf_counter() - start:.0f} s |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
