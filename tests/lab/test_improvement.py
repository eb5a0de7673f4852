"""Probability of improvement with its Wilson interval, and the interquartile mean, against hand computations; how
both reach the report's tables, the records, and the one check of ``aggregate``."""

import math

import numpy as np
import pytest

from tricklab.errors import TrickLabError
from tricklab.lab.analysis import analyse
from tricklab.lab.improvement import improvement, iqm, iqm_interval, wilson_interval
from tricklab.lab.request import PYTHON, SHELL, lab_options
from tricklab.lab.store import RunRow
from tricklab.report.lab_report import COLUMNS, table_rows
from tricklab.report.scoreboard import PROB_COLUMN, prob_cell

Z = 1.959963984540054  # the normal quantile at 0.975


def test_wilson_interval_matches_the_formula_worked_by_hand():
    # 3 wins of 3: p = 1, z²/n = 1.28054; centre = (1 + 0.64027)/2.28054 = 0.71925; half = z/2.28054 · √(z²/36)
    lo, hi = wilson_interval(3, 3)
    assert lo == pytest.approx(0.438503, abs=1e-6) and hi == 1.0
    # 2.5 of 4 (2 wins, 1 tie, 1 loss): p = 0.625
    p, n, z2 = 0.625, 4, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    assert wilson_interval(2.5, 4) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(2.5, 4) == pytest.approx((0.219427, 0.908101), abs=1e-6)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_probability_of_improvement_counts_ties_half_and_mirrors_for_the_baseline():
    diffs = [0.004, 0.002, 0.0, -0.001]
    pi = improvement(diffs)
    assert (pi.p, pi.n, pi.wins, pi.ties) == (0.625, 4, 2, 1)
    assert (pi.lo, pi.hi) == pytest.approx(wilson_interval(2.5, 4))
    flipped = improvement([-d for d in diffs])
    assert pi.p + flipped.p == pytest.approx(1.0)
    assert (flipped.lo, flipped.hi) == pytest.approx((1 - pi.hi, 1 - pi.lo))  # Wilson's interval is symmetric
    every = improvement([0.01, 0.02, 0.03])
    assert every.p == 1.0 and every.lo == pytest.approx(0.438503, abs=1e-6)  # 3 seeds cannot make it certain
    assert improvement([0.01, math.nan]).n == 1
    assert math.isnan(improvement([]).p)


def test_iqm_cuts_a_quarter_from_each_end():
    assert iqm([1, 2, 3, 100]) == 2.5  # ⌊4/4⌋ = 1 cut from each end: mean of 2, 3
    assert iqm([0.1, 0.9, 0.91, 0.92, 0.93, 0.2, 0.94, 0.95]) == pytest.approx(0.915)  # 2 cut from each end
    assert iqm([5, 1, 3]) == 3.0  # below 4 values nothing is cut: the mean
    assert iqm([1, 2, 3, 4, 1000]) == 3.0  # ⌊5/4⌋ = 1 cut: mean of 2, 3, 4
    assert math.isnan(iqm([]))


def test_iqm_interval_is_the_percentile_bootstrap_of_resampled_iqms():
    x = [0.97, 0.98, 0.975, 0.2, 0.979]  # one diverged seed
    centre, lo, hi = iqm_interval(x, reps=5, rng=np.random.default_rng(3))
    idx = np.random.default_rng(3).integers(0, 5, size=(5, 5))  # the same draws, by hand
    boots = []
    for row in idx:
        s = sorted(x[i] for i in row)[1:4]  # ⌊5/4⌋ = 1 cut from each end
        boots.append(sum(s) / 3)
    assert centre == pytest.approx((0.97 + 0.975 + 0.979) / 3)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])))
    assert iqm_interval(x) == iqm_interval(x)  # a fixed stream: the same report every time
    assert math.isnan(iqm_interval([0.9])[1])


def test_aggregate_is_checked_once_for_both_faces():
    assert lab_options(PYTHON, aggregate="iqm").aggregate == "iqm"
    assert lab_options(PYTHON, aggregate="mean").aggregate is None  # the default, stored as before
    with pytest.raises(TrickLabError, match=r"^aggregate = 'median': must be one of mean, iqm$"):
        lab_options(PYTHON, aggregate="median")
    with pytest.raises(TrickLabError, match=r"^--aggregate = median: must be one of mean, iqm$"):
        lab_options(SHELL, aggregate="median")


def _row(variant, seed, acc):
    return RunRow("s", variant, seed, "mnist1d", "h", {}, "done", {"test_acc": acc}, [], None, 1, 0.0, 1.0)


SPEC = {"variants": ["plain", "trick"], "baselines": {"plain": "plain", "trick": "plain"}, "baseline": "plain"}


def _stats(aggregate="mean"):
    plain = [0.70, 0.72, 0.71, 0.69, 0.70]
    trick = [0.72, 0.73, 0.71, 0.68, 0.20]  # 2 wins, 1 tie, 2 losses (one diverged seed)
    rows = [_row("plain", s, a) for s, a in enumerate(plain)] + [_row("trick", s, a) for s, a in enumerate(trick)]
    s = analyse("s", "mnist1d", SPEC | {"seeds": 5}, rows)
    s.aggregate = aggregate
    return s


def test_the_comparison_table_shows_p_better_with_its_interval():
    s = _stats()
    rows = table_rows(s)
    col = COLUMNS.index(PROB_COLUMN)
    lo, hi = wilson_interval(2.5, 5)
    assert rows[1][col] == f"0.50 [{lo:.2f}, {hi:.2f}]" == prob_cell(s.variant("trick"))
    assert rows[0][col] == ""  # the baseline has none


def test_a_study_summarised_by_iqm_shows_the_iqm_not_the_mean():
    acc = COLUMNS.index("test acc %")
    mean_cell = table_rows(_stats())[1][acc]
    assert mean_cell.startswith("60.80 ±")  # the diverged seed drags the mean down 10 pp
    iqm_cell = table_rows(_stats("iqm"))[1][acc]
    assert iqm_cell.startswith("IQM 70.33 [")  # mean of 0.68, 0.71, 0.72 once a seed is cut from each end


def test_a_stored_aggregate_that_is_not_known_is_refused_with_the_study_name():
    from tricklab.lab.results import study_result
    from tricklab.lab.spec import StudySpec

    class NoRuns:
        def rows(self, study, dataset):
            return []

    spec = StudySpec.from_dict(SPEC | {"name": "s", "aggregate": "median"})
    with pytest.raises(TrickLabError, match=r"^study 's': aggregate = 'median': must be one of mean, iqm$"):
        study_result(NoRuns(), "s", "mnist1d", spec)
    iqm_spec = StudySpec.from_dict(SPEC | {"aggregate": "iqm"})
    assert study_result(NoRuns(), "s", "mnist1d", iqm_spec).stats.aggregate == "iqm"
