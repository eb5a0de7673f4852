"""Calibrate the cross-dataset aggregate of ``tricklab.lab.across``: how often its interval excludes 0 when the trick
does nothing on any dataset (must be ≤ 5%), and how often it does when the trick removes a share of the errors.

Each simulated study has 3 datasets and one variant vs its baseline, paired on seeds, the same number of seeds on
every dataset (as a lab runs them). Per dataset: a baseline accuracy drawn uniformly from 60–99%, a seed-to-seed
standard deviation of the test accuracy drawn uniformly from 0.1–1.2 pp (MNIST-like to mnist1d-like), the variant
and baseline of one seed correlated (ρ = 0.5, the shared data order and initialization), and a true effect that
removes the share ``e`` of the baseline's errors (``e = 0``: the null). The interval is
:func:`tricklab.lab.across.aggregate_interval` itself (stratified bootstrap, 2000 replicates, Student-t at the
Welch–Satterthwaite degrees of freedom); beside it, the plain 95% percentile interval of an uncorrected stratified
bootstrap, to show why the correction is there. The last row is a study of 3 variants sharing one baseline, none
doing anything, each interval at 1 − 0.05/3 (Bonferroni, as the lab does): the family-wise rate of any claim.
Rates carry a 95% Wilson interval over the simulated studies.

    python benchmarks/calibrate_across.py      # 10,000 null studies per null row, 2000 per power row
    python benchmarks/calibrate_across.py --null-studies 2000 --studies 500    # quicker, rougher
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tricklab.lab.across import aggregate_interval, normalized_improvement
from tricklab.lab.improvement import wilson_interval

DATASETS = 3
RHO = 0.5


def simulate(
    rng: np.random.Generator, seeds: int, effect: float, variants: int = 1
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """One study: per variant, per dataset, (variant − baseline differences, baseline accuracies) on ``seeds``
    seeds; the variants share the baseline's runs, as in a lab."""
    out: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(variants)]
    for _ in range(DATASETS):
        base, sd = rng.uniform(0.60, 0.99), rng.uniform(0.001, 0.012)
        zb = rng.standard_normal(seeds)
        b = base + sd * zb
        for groups in out:
            zv = rng.standard_normal(seeds)
            v = base + effect * (1 - base) + sd * (RHO * zb + np.sqrt(1 - RHO**2) * zv)
            groups.append((v - b, b))
    return out


def percentile_excludes_zero(rng: np.random.Generator, groups, reps: int = 2000) -> bool:
    """The uncorrected alternative: the 2.5–97.5% percentiles of a plain stratified bootstrap."""
    total = np.zeros(reps)
    for d, b in groups:
        idx = rng.integers(0, len(d), size=(reps, len(d)))
        total += d[idx].mean(1) / (1 - b[idx].mean(1))
    lo, hi = np.percentile(total / len(groups), [2.5, 97.5])
    return lo > 0 or hi < 0


def rate(hits: int, n: int) -> str:
    lo, hi = wilson_interval(hits, n)
    return f"{hits / n:.1%} [{lo:.1%}, {hi:.1%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--null-studies", type=int, default=10000, help="simulated null studies per row (default 10000)")
    ap.add_argument("--studies", type=int, default=2000, help="simulated studies per power row (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    rows = [("null", "3–10", 0.0), ("null", "3", 0.0), ("null", "5", 0.0), ("null", "10", 0.0)]
    rows += [("power", s, e) for e in (0.02, 0.05, 0.10, 0.20) for s in ("3", "10")]
    print(f"{DATASETS} datasets, seed sd 0.1–1.2 pp, baselines 60–99%, seed {args.seed}")
    print("| what | studies | seeds per dataset | errors removed | aggregate interval excludes 0 | plain percentile |")
    print("|:--|--:|--:|--:|--:|--:|")
    for what, seeds, effect in rows:
        hits = plain = 0
        studies = args.null_studies if what == "null" else args.studies
        for _ in range(studies):
            n = int(rng.integers(3, 11)) if seeds == "3–10" else int(seeds)
            (groups,) = simulate(rng, n, effect)
            _, lo, hi = aggregate_interval(groups, rng=rng)
            hits += lo > 0 or hi < 0
            plain += percentile_excludes_zero(rng, groups)
        assert all(np.isfinite(normalized_improvement(d, b)) for d, b in groups)
        print(f"| {what} | {studies} | {seeds} | {effect:.0%} | {rate(hits, studies)} | {rate(plain, studies)} |")
    # a study of 3 variants, none of which does anything: each interval at 1 − 0.05/3 (tricklab.lab.across.across)
    family = 0
    for _ in range(args.studies):
        n = int(rng.integers(3, 11))
        studies = simulate(rng, n, 0.0, variants=3)
        family += any(
            (lo > 0 or hi < 0) for _, lo, hi in (aggregate_interval(g, 1 - 0.05 / 3, rng=rng) for g in studies)
        )
    fwer = rate(family, args.studies)
    print(f"| null, 3 variants: any claim (family-wise) | {args.studies} | 3–10 | 0% | {fwer} | |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
