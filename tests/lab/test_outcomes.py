"""The four outcomes of a comparison (better, worse, equivalent, undecided) on constructed data; Holm's correction
against a hand computation; the probability of improvement; the seeds-needed estimate against its own simulation;
the study's margin of practical equivalence."""

import math

import numpy as np
import pytest
from scipy import stats

from tricklab.errors import ConfigError, TrickLabError
from tricklab.lab.analysis import analyse, default_margin, study_margin
from tricklab.lab.stats import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    Interval,
    Paired,
    decide,
    holm,
    mean_ci,
    paired,
    seeds_needed,
    verdict,
)
from tricklab.lab.store import RunRow
from tricklab.lab.studies import custom_study

BASE = {s: 0.9800 + 0.0010 * (s % 3) for s in range(5)}  # test accuracy of the baseline on seeds 0–4
MARGIN = 0.002  # ±0.2 pp


def shifted(by, wobble=()):
    return {s: BASE[s] + by + (wobble[s] if s < len(wobble) else 0.0) for s in BASE}


def test_four_outcomes_on_constructed_data():
    comparisons = {
        "up": paired(shifted(+0.010, [0.0005, -0.0005, 0.0002, 0.0, -0.0002]), BASE),
        "down": paired(shifted(-0.010, [0.0005, -0.0005, 0.0002, 0.0, -0.0002]), BASE),
        "same": paired(shifted(0.0, [0.0001, -0.0002, 0.0001, 0.0002, -0.0001]), BASE),
        "noisy": paired(shifted(0.0005, [0.004, -0.005, 0.006, -0.003, 0.001]), BASE),
    }
    d = decide(comparisons, MARGIN)
    assert {k: v.outcome for k, v in d.items()} == {"up": BETTER, "down": WORSE, "same": EQUIVALENT, "noisy": UNDECIDED}
    same = comparisons["same"].diff
    assert -MARGIN < same.lo and same.hi < MARGIN  # the whole 95% interval inside the margin
    assert d["noisy"].seeds_needed > 5 and d["noisy"].resolves in ("difference", "equivalence")
    assert all(v.seeds_needed is None for k, v in d.items() if k != "noisy")
    assert all(v.family == 4 for v in d.values())
    # the same "same" data is undecided against a margin its interval does not fit in
    narrow = decide({"same": comparisons["same"]}, margin=0.0002)["same"]
    assert narrow.outcome == UNDECIDED and narrow.resolves == "equivalence" and narrow.seeds_needed > 5


def test_equivalence_is_the_95_percent_interval_inside_the_margin():
    c = paired(shifted(0.0, [0.0001, -0.0002, 0.0001, 0.0002, -0.0001]), BASE)
    d = c.diff
    assert (d.lo, d.hi) == pytest.approx(stats.t.interval(0.95, 4, loc=d.mean, scale=d.sd / math.sqrt(5)))
    just_outside = max(-d.lo, d.hi) * 0.999
    assert decide({"x": c}, margin=just_outside)["x"].outcome == UNDECIDED
    assert decide({"x": c}, margin=max(-d.lo, d.hi) * 1.001)["x"].outcome == EQUIVALENT
    # a 90% interval (TOST at 0.05) would fit inside this margin; the 95% one does not: the rule is the 95% one
    lo90, hi90 = stats.t.interval(0.90, 4, loc=d.mean, scale=d.sd / math.sqrt(5))
    assert max(-lo90, hi90) < just_outside


def test_identical_on_every_seed_is_equivalent_and_one_seed_is_undecided():
    assert decide({"x": paired(BASE, BASE)}, MARGIN)["x"].outcome == EQUIVALENT
    one = paired({0: 0.99}, {0: 0.90})
    assert decide({"x": one}, MARGIN)["x"].outcome == UNDECIDED
    with pytest.raises(ValueError, match="margin"):
        decide({"x": one}, 0.0)


def test_holm_matches_a_hand_computation():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # comparisons without a test are not in the family: m = 2
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def _given_p(mean, p, n=5):
    """A comparison with a given mean difference and p-value (its interval excludes zero, not inside any margin)."""
    lo, hi = sorted((mean / 2, mean * 1.5))
    return Paired(Interval(mean, lo, hi, n, abs(mean)), p, tuple(range(n)), (mean,) * n)


def test_outcomes_use_the_holm_adjusted_p_value():
    # each of these is significant alone (p < 0.05); Holm over the 3 keeps only the first two
    family = {"a": _given_p(0.01, 0.004), "b": _given_p(-0.01, 0.02), "c": _given_p(0.01, 0.03)}
    d = decide(family, MARGIN)
    # hand: 0.004·3 = 0.012, 0.02·2 = 0.04, 0.03·1 → max(0.04, 0.03) = 0.04
    assert [d[k].p_holm for k in "abc"] == pytest.approx([0.012, 0.04, 0.04])
    assert (d["a"].outcome, d["b"].outcome, d["c"].outcome) == (BETTER, WORSE, BETTER)
    family["c"] = _given_p(0.01, 0.045)
    family["d"] = _given_p(0.01, 0.049)
    d = decide(family, MARGIN)
    # 0.004·4 = 0.016, 0.02·3 = 0.06 → every later one ≥ 0.06: only "a" survives
    assert [d[k].outcome for k in "abcd"] == [BETTER, UNDECIDED, UNDECIDED, UNDECIDED]
    assert [d[k].p_holm for k in "abcd"] == pytest.approx([0.016, 0.06, 0.09, 0.09])
    assert d["b"].alpha_next == pytest.approx(0.05 / 3)  # the level the undecided face now: α / (m − rejected)
    assert "Holm p = 0.060" in verdict("b", family["b"], d["b"])


def test_probability_of_improvement_counts_wins_and_half_ties():
    c = paired({0: 0.95, 1: 0.96, 2: 0.90, 3: 0.93}, {0: 0.94, 1: 0.95, 2: 0.91, 3: 0.93})
    assert (c.wins, c.ties) == (2, 1)
    assert c.prob_improvement == pytest.approx(2.5 / 4)
    flipped = paired({0: 0.94, 1: 0.95, 2: 0.91, 3: 0.93}, {0: 0.95, 1: 0.96, 2: 0.90, 3: 0.93})
    assert c.prob_improvement + flipped.prob_improvement == pytest.approx(1.0)
    assert math.isnan(paired({}, {}).prob_improvement)


def test_seeds_needed_matches_the_textbook_and_its_own_simulation():
    # a paired t-test at α = 0.05 with 80% power on an effect of one standard deviation needs 10 (Cohen 1988)
    assert seeds_needed(Interval(0.01, 0, 0, 3, 0.01), margin=0.001) == (10, "difference")
    # a stricter level (Holm's α/4) needs more
    assert seeds_needed(Interval(0.01, 0, 0, 3, 0.01), margin=0.001, alpha=0.0125)[0] > 10
    # no spread, or too few seeds: no estimate; an effect exactly on the margin with a huge spread: beyond the limit
    assert seeds_needed(Interval(0.01, 0.01, 0.01, 3, 0.0), 0.002) == (None, "")
    assert seeds_needed(mean_ci([0.01]), 0.002) == (None, "")
    assert seeds_needed(Interval(0.002, 0, 0, 3, 1.0), 0.002) == (None, "limit")
    # simulated: at the predicted n the decision comes in about 80% of experiments, and clearly less at half of it
    rng = np.random.default_rng(7)
    for mean, sd, margin, kind in ((0.0, 1.0, 1.0, "equivalence"), (0.8, 1.0, 0.2, "difference")):
        n, what = seeds_needed(Interval(mean, 0, 0, 3, sd), margin)
        assert what == kind
        at_n, at_half = (decided_share(rng, k, mean, sd, margin, kind) for k in (n, n // 2))
        print(f"\n{kind}: {n} seeds predicted; decided in {at_n:.0%} of simulations there, {at_half:.0%} at {n // 2}")
        assert 0.7 <= at_n <= 0.9 and at_half < 0.6


def decided_share(rng, k, mean, sd, margin, kind, runs=4000):
    """Share of simulated k-seed experiments with N(mean, sd²) differences that the fixed rule decides as ``kind``."""
    x = mean + sd * rng.standard_normal((runs, k))
    m, s = x.mean(1), x.std(1, ddof=1)
    half = stats.t.ppf(0.975, k - 1) * s / np.sqrt(k)
    if kind == "difference":
        return np.mean(np.abs(m) > half)
    return np.mean((m - half > -margin) & (m + half < margin))


def test_verdict_sentences_start_with_the_outcome_and_carry_the_numbers():
    d3 = {0: 0.0001, 1: 0.0032, 2: -0.0015}  # +0.06 pp on average, 3 seeds
    c = paired({s: 0.98 + v for s, v in d3.items()}, {s: 0.98 for s in d3})
    decision = decide({"dropout 0.1": c}, MARGIN)["dropout 0.1"]
    text = verdict("dropout 0.1", c, decision, baseline="p=0")
    assert decision.outcome == UNDECIDED
    assert text.startswith(f"dropout 0.1: undecided at 3 seeds: +0.06 pp test accuracy [{c.diff.lo * 100:+.2f}, ")
    assert f"vs p=0, p = {c.p:.3f}, better on 2 of 3" in text
    assert text.endswith(f"about {decision.seeds_needed} seeds would likely resolve ±0.20 pp")
    up = paired(shifted(0.010, [0.0005, -0.0005, 0.0002, 0.0, -0.0002]), BASE)
    text = verdict("up", up, decide({"up": up}, MARGIN)["up"])
    assert text.startswith("up: better: +1.00 pp test accuracy [") and "5 seeds, better on 5 of 5" in text
    assert "Holm" not in text  # a family of one: Holm's p is the p-value
    same = paired(shifted(0.0, [0.0001, -0.0002, 0.0001, 0.0002, -0.0001]), BASE)
    text = verdict("same", same, decide({"same": same}, MARGIN)["same"])
    assert text.startswith("same: equivalent within ±0.20 pp: ")


def _row(variant, seed, acc):
    return RunRow("s", variant, seed, "mnist1d", "h", {}, "done", {"test_acc": acc}, [], None, 1, 0.0, 1.0)


def test_analyse_applies_the_margin_and_holm_across_the_study():
    spec = {
        "name": "s",
        "variants": ["plain", "big", "tiny"],
        "baseline": "plain",
        "baselines": {"plain": "plain", "big": "plain", "tiny": "plain"},
    }
    wobble = [0.001, -0.002, 0.0015, -0.001, 0.0005, 0.0]
    rows = [_row("plain", s, 0.6 + wobble[s]) for s in range(6)]
    rows += [_row("big", s, 0.65 + wobble[s] + 0.001 * (s % 2)) for s in range(6)]
    rows += [_row("tiny", s, 0.6 + wobble[s] + 0.002 * (s % 2) - 0.001) for s in range(6)]
    s = analyse("s", "mnist1d", spec, rows)
    assert s.margin_pp == 1.0 and s.comparisons == 2
    assert s.variant("big").decision.outcome == BETTER and s.variant("tiny").decision.outcome == EQUIVALENT
    assert s.variant("tiny").verdict.startswith("tiny: equivalent within ±1.00 pp: ")
    assert s.variant("plain").decision is None and s.variant("plain").verdict == "plain: baseline"
    # the study's own margin overrides the dataset's default
    s = analyse("s", "mnist1d", spec | {"margin": 0.05}, rows)
    assert s.margin_pp == 0.05 and s.variant("tiny").decision.outcome == UNDECIDED


def test_margin_defaults_per_dataset_and_the_study_field():
    assert (default_margin("mnist"), default_margin("fashion-mnist"), default_margin("mnist1d")) == (0.2, 0.2, 1.0)
    assert default_margin("mnist", subset=5000) == 0.5 and default_margin("csv:my.csv") == 0.5
    spec = {"baseline": "p", "overrides": {"p": {"data.subset": 10000}}}
    assert study_margin(spec, "mnist") == 0.5 and study_margin({}, "mnist") == 0.2
    assert study_margin({"margin": 0.3}, "mnist") == 0.3
    for bad in (0, -1, "1", True, math.nan):
        with pytest.raises(TrickLabError, match="margin"):
            study_margin({"name": "x", "margin": bad}, "mnist")


def test_a_custom_study_sets_its_margin_in_pp():
    raw = {"name": "m", "dataset": "mnist1d", "variants": {"a": {}, "b": {"model.dropout": 0.1}}}
    assert custom_study(raw | {"margin": 2.5})[0].margin == {"mnist1d": 2.5}
    assert custom_study(raw)[0].margin == {}
    with pytest.raises(ConfigError, match="study.margin"):
        custom_study(raw | {"margin": 0})
