"""The lab's statistics against scipy on known data, and verdicts that say exactly what the numbers say.

The four outcomes, Holm's correction and the seeds-needed estimate are tested in test_outcomes.py."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from tricklab.lab.stats import MIN_SEEDS, decide, fmt_p, mean_ci, paired, verdict

VALUES = [0.981, 0.984, 0.979, 0.986, 0.982]
MARGIN = 0.002  # ±0.2 pp


def say(name, c, margin=MARGIN):
    """The verdict of ``c`` alone in its study."""
    return verdict(name, c, decide({name: c}, margin)[name])


def test_mean_ci_matches_scipy_t_interval():
    iv = mean_ci(VALUES)
    lo, hi = stats.t.interval(0.95, len(VALUES) - 1, loc=np.mean(VALUES), scale=stats.sem(VALUES))
    assert iv.mean == pytest.approx(np.mean(VALUES))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert iv.n == 5 and iv.sd == pytest.approx(np.std(VALUES, ddof=1))


def test_mean_ci_edge_cases():
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.lo) and one.n == 1
    assert mean_ci([0.5, float("nan"), None]).n == 1  # non-finite values are not data


def test_paired_matches_scipy_ttest_rel_on_common_seeds():
    a = {0: 0.985, 1: 0.987, 2: 0.984, 3: 0.988, 9: 0.5}  # seed 9 has no baseline: ignored
    b = {0: 0.981, 1: 0.986, 2: 0.980, 3: 0.983}
    c = paired(a, b)
    x, y = [a[s] for s in range(4)], [b[s] for s in range(4)]
    assert c.seeds == (0, 1, 2, 3)
    assert c.p == pytest.approx(stats.ttest_rel(x, y).pvalue)
    d = np.subtract(x, y)
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (c.diff.mean, c.diff.lo, c.diff.hi) == (pytest.approx(d.mean()), pytest.approx(lo), pytest.approx(hi))


def _numbers(text):
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def test_significant_verdict_text_matches_the_numbers():
    a = {s: 0.980 + 0.004 + 0.0005 * (s % 2) for s in range(5)}
    b = {s: 0.980 + 0.0003 * s for s in range(5)}
    c = paired(a, b)
    text = say("dropout 0.3", c)
    assert c.significant
    assert text.startswith("dropout 0.3: better: +")
    mean, lo, hi = _numbers(text.split(": ", 2)[2])[:3]
    assert mean == pytest.approx(round(c.diff.mean * 100, 2))
    assert (lo, hi) == (pytest.approx(round(c.diff.lo * 100, 2)), pytest.approx(round(c.diff.hi * 100, 2)))
    assert "5 seeds" in text and "test accuracy" in text
    assert fmt_p(c.p) in text and "better on 5 of 5" in text


def test_not_significant_verdict_says_so_with_its_interval():
    c = paired({0: 0.981, 1: 0.979, 2: 0.983}, {0: 0.980, 1: 0.982, 2: 0.981})
    text = say("dropout 0.1", c)
    assert not c.significant and text.startswith("dropout 0.1: undecided at 3 seeds: ")
    assert f"[{c.diff.lo * 100:+.2f}, {c.diff.hi * 100:+.2f}]" in text
    assert f"p = {c.p:.3f}" in text
    assert "seeds would likely" in text  # and how many would decide it


def test_few_seeds_are_called_weak():
    c = paired({0: 0.99, 1: 0.98}, {0: 0.97, 1: 0.975})
    assert c.diff.n < MIN_SEEDS
    assert "weak: only 2 seeds" in say("x", c)
    assert "too few seeds for a test" in say("x", paired({0: 0.9}, {0: 0.8}))


def test_identical_shift_on_every_seed_is_not_given_a_p_value():
    c = paired({0: 0.91, 1: 0.92}, {0: 0.90, 1: 0.91})
    assert math.isnan(c.p) and not c.significant
    assert "every one of 2 seeds" in say("x", c) and "no t-test" in say("x", c)


def test_float_rounding_of_the_same_shift_is_no_spread():
    # 0.3 − 0.1 and 0.2 − 0.0 are the same shift, but as floats they differ in the last bit
    assert 0.3 - 0.1 != 0.2 - 0.0
    c = paired({0: 0.3, 1: 0.2}, {0: 0.1, 1: 0.0})
    assert math.isnan(c.p) and not c.significant
    assert "every one of 2 seeds" in say("x", c)
