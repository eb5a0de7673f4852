"""The sequential procedure for ``--seeds auto``, proved by simulation on synthetic noise (no training).

Each simulated study has 4 variants compared with one shared baseline (so its comparisons are correlated, as in
the lab); seeds are added as ``--seeds auto`` would: a first look at 3 seeds, then only to comparisons still
undecided, up to the next look, until each is decided or the cap (10) is reached. The measured rates are printed
(``pytest -s``). Differences are in units of their own standard deviation.
"""

import numpy as np
import pytest
from scipy import stats

from tricklab.lab.sequential import CAP, decide_sequential, looks, spending
from tricklab.lab.stats import ALPHA

SEED = 20261202
VARIANTS = 4


def study_diffs(rng, effects, cap=CAP):
    """Paired differences (variant − shared baseline) of one study, scaled to unit sd, with the given means."""
    base = rng.standard_normal(cap)
    noise = (rng.standard_normal((len(effects), cap)) - base) / np.sqrt(2)
    return {f"v{i}": e + noise[i] for i, e in enumerate(effects)}


def run_auto(full, margin, cap=CAP):
    """Add seeds as --seeds auto would: each comparison runs only as far as the procedure asks for."""
    have = dict.fromkeys(full, looks(cap=cap)[0])
    while True:
        d = decide_sequential({k: full[k][: have[k]] for k in full}, margin, cap=cap)
        more = {k: s.next_seeds for k, s in d.items() if s.more}
        if not more:
            return d, have
        have.update(more)


def naive_p(x):
    """The fixed-sample paired t-test's p-value after each of 3 … len(x) seeds."""
    n = np.arange(3, len(x) + 1)
    mean = np.array([x[:k].mean() for k in n])
    sd = np.array([x[:k].std(ddof=1) for k in n])
    return 2 * stats.t.sf(np.abs(mean) / (sd / np.sqrt(n)), n - 1)


def claims(d):
    return [k for k, s in d.items() if s.outcome in ("better", "worse")]


def test_looks_and_alpha_spending():
    assert looks(3, 10) == (3, 5, 7, 10)
    assert looks(3, 20) == (3, 5, 7, 10, 14, 20) and looks(3, 12)[-1] == 12 and looks(3, 3) == (3,)
    spent = spending(looks(3, 10))
    assert sum(spent) == pytest.approx(ALPHA) and all(a > 0 for a in spent)
    assert spent == pytest.approx((0.05 * 0.09, 0.05 * 0.16, 0.05 * 0.24, 0.05 * 0.51))  # α·t², t = n/10
    with pytest.raises(ValueError, match="at least 2 seeds"):
        looks(1, 10)


def test_constructed_cases():
    rng = np.random.default_rng(SEED)
    big = 5.0 + 0.1 * rng.standard_normal(3)
    d = decide_sequential({"big": big, "short": [0.1, -0.2], "none": [0.0, 0.0, 0.0]}, margin=0.5)
    assert d["big"].outcome == "better" and d["big"].seeds == 3 and not d["big"].more
    assert d["short"].outcome == "undecided" and d["short"].more and d["short"].next_seeds == 3
    assert d["none"].outcome == "equivalent"  # bit-identical on every seed: a zero-width interval inside ±0.5
    assert decide_sequential({"neg": -big}, margin=0.5)["neg"].outcome == "worse"
    noisy = decide_sequential({"noisy": rng.standard_normal(10) * 10}, margin=0.5)["noisy"]
    assert noisy.outcome == "undecided" and not noisy.more and noisy.next_seeds is None and noisy.seeds == 10
    mid = decide_sequential({"mid": [0.3, -0.4, 0.1, 0.5, -0.2, 0.9]}, margin=0.5)["mid"]
    assert mid.seeds == 5 and mid.next_seeds == 7  # 6 seeds: judged at the look of 5, the 6th waits for 7
    with pytest.raises(ValueError, match="margin"):
        decide_sequential({"x": big}, margin=0)


def test_decisions_depend_only_on_the_looks_and_never_change():
    """Calling after every added seed (peeking as often as one likes) decides exactly as calling at the looks."""
    rng = np.random.default_rng(SEED + 1)
    for _ in range(60):
        full = study_diffs(rng, rng.choice([0.0, 0.0, 1.0, 2.5], VARIANTS))
        decided = {}
        for n in range(1, CAP + 1):
            d = decide_sequential({k: v[:n] for k, v in full.items()}, margin=0.8)
            for k, s in d.items():
                if k in decided:
                    assert s.outcome == decided[k]  # a decision stands
                elif s.outcome != "undecided":
                    decided[k] = s.outcome
        assert {k: s.outcome for k, s in run_auto(full, 0.8)[0].items()} == {k: s.outcome for k, s in d.items()}


def test_false_positive_rate_under_optional_stopping_stays_below_5_percent():
    rng = np.random.default_rng(SEED + 2)
    studies, any_claim, claims_total, seeds, naive = 2000, 0, 0, [], 0
    for _ in range(studies):
        full = study_diffs(rng, [0.0] * VARIANTS)
        d, have = run_auto(full, margin=0.5)
        any_claim += bool(claims(d))
        claims_total += len(claims(d))
        seeds.append(max(have.values()))
        # what the fixed-sample t-test would claim if re-run after every added seed (one comparison, no Holm)
        naive += bool((naive_p(full["v0"]) < ALPHA).any())
    fwer, per_comparison, naive_rate = any_claim / studies, claims_total / (studies * VARIANTS), naive / studies
    print(
        f"\n{studies} null studies × {VARIANTS} comparisons, looks {looks()}: family-wise false-positive rate "
        f"{fwer:.2%}, per comparison {per_comparison:.2%}, mean seeds {np.mean(seeds):.1f}; a fixed-sample t-test "
        f"re-run after every seed: {naive_rate:.2%}"
    )
    assert fwer <= ALPHA
    assert naive_rate > 2 * ALPHA  # the simulation is sharp enough to see the inflation the procedure prevents


def test_false_equivalence_rate_at_the_margin_stays_below_5_percent():
    rng = np.random.default_rng(SEED + 3)
    studies, margin, wrong = 2000, 1.0, 0
    for i in range(studies):
        truth = margin if i % 2 else -margin  # the true difference sits on the margin: "equivalent" would be wrong
        d, _ = run_auto({"v": truth + rng.standard_normal(CAP)}, margin)
        wrong += d["v"].outcome == "equivalent"
    print(f"\n{studies} studies with the true difference on ±margin: equivalence claimed in {wrong / studies:.2%}")
    assert wrong / studies <= ALPHA


def test_power_on_true_effects():
    rng = np.random.default_rng(SEED + 4)
    studies, power, mean_seeds = 300, {}, {}
    for effect in (0.5, 1.0, 1.5, 2.0, 3.0):
        found, used = 0, []
        for _ in range(studies):
            d, have = run_auto(study_diffs(rng, [effect] + [0.0] * (VARIANTS - 1)), margin=0.5)
            found += d["v0"].outcome == "better"
            used.append(have["v0"])
        power[effect], mean_seeds[effect] = found / studies, float(np.mean(used))
    equivalent = np.mean(
        [run_auto({"v": rng.standard_normal(CAP)}, 1.5)[0]["v"].outcome == "equivalent" for _ in range(studies)]
    )
    table = ", ".join(f"{e:g} sd: {p:.0%} ({mean_seeds[e]:.1f} seeds)" for e, p in power.items())
    print(
        f"\npower to call one true effect better among {VARIANTS} comparisons (cap {CAP}): {table}; "
        f"a true null called equivalent within ±1.5 sd: {equivalent:.0%}"
    )
    effects = sorted(power)
    assert all(power[a] <= power[b] + 0.05 for a, b in zip(effects, effects[1:], strict=False))
    assert power[1.0] >= 0.25 and power[2.0] >= 0.9 and power[3.0] >= 0.98
    assert mean_seeds[3.0] < 7  # clear effects stop early
    assert equivalent >= 0.7
