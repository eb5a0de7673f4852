"""Time to target as a compared outcome: censored pairs scored by what is known of their order, the exact paired
signed-rank test against hand computations and scipy, the outcomes (with Holm and the sequential design), the
study's ``outcomes`` key, and a small null simulation of the family-wise false-positive rate."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tricklab.errors import ConfigError
from tricklab.lab.analysis import analyse, seeds_to_run
from tricklab.lab.speed import (
    STEPS_TO_TARGET,
    Timed,
    decide_speed,
    decide_speed_sequential,
    paired_censored,
    rank_test_spending,
    resolved,
    scores,
    signed_rank_p,
    time_to_target,
)
from tricklab.lab.stats import BETTER, EQUIVALENT, NO_SIGNAL, UNDECIDED, WORSE
from tricklab.lab.store import RunRow
from tricklab.lab.studies import STUDIES, custom_study

R, C = True, False  # reached the target / censored at the budget


def timed(*pairs):
    return {s: Timed(float(v), r) for s, (v, r) in enumerate(pairs)}


# ---- one run's time to target ----------------------------------------------------------------------------------


def test_steps_and_seconds_to_target_from_per_epoch_history():
    history = [
        {"epoch": e, "val_acc": a, "epoch_time_s": t} for e, a, t in ((1, 0.5, 1.0), (2, 0.8, 2.0), (3, 0.9, 3.0))
    ]
    metrics = {"steps": 300, "epochs_run": 3}
    got = time_to_target(history, metrics, 0.8)
    assert got[STEPS_TO_TARGET] == Timed(200.0, True, after=100.0)  # between the validations at 100 and 200 steps
    assert got["seconds_to_target"] == Timed(3.0, True, after=1.0)
    never = time_to_target(history, metrics, 0.95)
    assert never[STEPS_TO_TARGET] == Timed(300.0, False) and never["seconds_to_target"] == Timed(6.0, False)


def test_an_ensemble_is_timed_on_its_first_member():
    history = [{"epoch": 1, "val_acc": 0.9, "member": 0}, {"epoch": 1, "val_acc": 0.1, "member": 1}]
    metrics = {"members": [{"steps": 50, "epochs_run": 1}, {"steps": 50, "epochs_run": 1}], "epochs_run": 2}
    assert time_to_target(history, metrics, 0.8)[STEPS_TO_TARGET] == Timed(50.0, True, after=0.0)


# ---- censored pairs -----------------------------------------------------------------------------------------------


def test_censored_pairs_are_scored_by_what_is_known_of_their_order():
    variant = [Timed(200, R), Timed(300, R), Timed(1000, C), Timed(500, R), Timed(500, R)]
    baseline = [Timed(400, R), Timed(1000, C), Timed(1000, C), Timed(400, R), Timed(400, C)]
    d = scores(variant, baseline)
    assert d[0] == pytest.approx(math.log(2))  # both reached: the exact log ratio
    assert d[1] == pytest.approx(math.log(1000 / 300))  # baseline censored after the variant reached: a bound
    assert d[2] == 0  # both censored: no information
    assert d[3] == pytest.approx(math.log(0.8))
    assert d[4] == 0  # variant reached it after the baseline's (shorter) budget ran out: order unknown
    assert (scores(baseline, variant) == -d).all()  # swapping the arms negates every score
    # reached at the very end of a budget the other arm spent without reaching it: faster, by the smallest score
    last = scores([Timed(500, R), Timed(500, C)], [Timed(500, C), Timed(500, R)])
    assert last[0] > 0 and last[1] < 0 and abs(last[0]) < 1e-6


def test_signed_rank_p_by_hand():
    # 3 informative pairs all one way: 2 of the 2³ sign patterns are as extreme
    p, sign = signed_rank_p(np.array([[0.3, 0.2, 0.1, 0.0]]))
    assert p[0] == pytest.approx(2 / 8) and sign[0] == 1
    # 6 informative pairs all slower: 2/64
    p, sign = signed_rank_p(-np.arange(1, 7, dtype=float)[None, :])
    assert p[0] == pytest.approx(2 / 64) and sign[0] == -1


def test_signed_rank_p_of_a_censored_study_by_hand():
    """Ranks 2, 4, −1, 3 (seed 2: both censored, left out): T = 8 of a total of 10. |T| ≥ 8 for the sign patterns
    whose positive ranks sum to ≥ 9 ({2,3,4}, {1,2,3,4}) or ≤ 1 ({}, {1}): 4 of 16, p = 0.25."""
    c = paired_censored(
        timed((200, R), (300, R), (1000, C), (500, R), (100, R)),
        timed((400, R), (1000, C), (1000, C), (400, R), (300, R)),
    )
    assert c.p == pytest.approx(4 / 16) and c.sign == 1
    assert c.informative == 4 and c.faster == 3
    assert c.ratio == pytest.approx(np.median([0.5, 1.25, 1 / 3]))


def test_signed_rank_p_matches_scipy_without_censoring():
    rng = np.random.default_rng(0)
    for n in (5, 8, 12):
        d = rng.normal(0.3, 1.0, n)
        ours = signed_rank_p(d[None, :])[0][0]
        assert ours == pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-9)


def test_large_samples_use_the_normal_approximation():
    d = np.linspace(-1, 2, 40)
    ours = signed_rank_p(d[None, :])[0][0]
    assert ours == pytest.approx(stats.wilcoxon(d, method="approx", correction=False).pvalue, rel=1e-6)


# ---- outcomes -----------------------------------------------------------------------------------------------------

FAST6 = timed(*[(100 + 10 * s, R) for s in range(6)])
SLOW6 = timed(*[(300 + 50 * s, R) for s in range(6)])
NEVER6 = timed(*[(1000, C)] * 6)


def test_outcomes_with_holm_by_hand():
    faster = paired_censored(FAST6, SLOW6)  # p = 2/64 = 0.03125
    slower = paired_censored(SLOW6, FAST6)  # the same, the other way
    assert decide_speed({"a": faster})["a"].outcome == BETTER
    assert decide_speed({"a": slower})["a"].outcome == WORSE
    both = decide_speed({"a": faster, "b": slower})
    assert both["a"].p_holm == pytest.approx(0.0625) and both["a"].outcome == UNDECIDED  # Holm: 2 × 0.03125


def test_no_signal_when_neither_arm_reaches_the_target_and_it_leaves_the_family():
    d = decide_speed({"a": paired_censored(FAST6, SLOW6), "none": paired_censored(NEVER6, NEVER6)})
    assert d["none"].outcome == NO_SIGNAL and "neither arm reached the target" in d["none"].reason
    assert d["a"].outcome == BETTER and d["a"].family == 1


def test_one_arm_censored_everywhere_is_slower():
    """The baseline never reaches the target; the variant does on every seed: faster on 6 of 6, p = 2/64."""
    c = paired_censored(FAST6, NEVER6)
    assert c.p == pytest.approx(2 / 64) and decide_speed({"a": c})["a"].outcome == BETTER


def test_equivalent_when_every_seed_reached_and_times_agree_within_ten_percent():
    base = timed(*[(1000 + 100 * s, R) for s in range(6)])
    same = timed(*[(v.value * f, R) for v, f in zip(base.values(), (1.01, 0.99, 1.02, 1.0, 0.98, 1.01), strict=True)])
    assert decide_speed({"a": paired_censored(same, base)})["a"].outcome == EQUIVALENT
    censored = dict(same) | {5: Timed(1500, C)}  # one censored run: no exact ratio there, not equivalent
    assert decide_speed({"a": paired_censored(censored, base)})["a"].outcome != EQUIVALENT


def test_sequential_looks_use_the_same_spending_as_the_t_test_design():
    """α·t² at the looks 3, 5, 7, 10 spends 0.0045, 0.008, 0.012, 0.0255; the exact test cannot reach p ≤ 0.0045 at
    3 seeds (smallest p 2/8) nor ≤ 0.0125 at 5 (2/32), so their α passes on: 7 seeds test at 0.0245, 10 at 0.0255."""
    assert rank_test_spending((3, 5, 7, 10)) == pytest.approx((0.0, 0.0, 0.0245, 0.0255))
    assert sum(rank_test_spending((3, 5, 7, 10))) == pytest.approx(0.05)
    fast = timed(*[(100 + s, R) for s in range(10)])
    slow = timed(*[(300 + 7 * s, R) for s in range(10)])
    five = {s: fast[s] for s in range(5)}, {s: slow[s] for s in range(5)}
    d5 = decide_speed_sequential({"a": paired_censored(*five)}, first=3, cap=10)["a"]
    assert d5.outcome == UNDECIDED and d5.resolves == "next look" and d5.seeds_needed == 7 and d5.repeated_p == 1.0
    seven = {s: fast[s] for s in range(7)}, {s: slow[s] for s in range(7)}
    d7 = decide_speed_sequential({"a": paired_censored(*seven)}, first=3, cap=10)["a"]
    assert d7.outcome == BETTER and d7.decided_at == 7
    assert d7.repeated_p == pytest.approx((2 / 128) * 0.05 / 0.0245)  # 0.0319
    # two comparisons: Holm doubles it (0.0638), so 7 seeds do not decide; 10 seeds: 2 × (2/1024)·0.05/0.0255
    slow2 = timed(*[(400 + 3 * s, R) for s in range(10)])
    two = decide_speed_sequential(
        {"a": paired_censored(*seven), "b": paired_censored(*({s: fast[s] for s in range(7)}, slow2))}, first=3, cap=10
    )
    assert two["a"].outcome == UNDECIDED and two["a"].seeds_needed == 10
    ten = decide_speed_sequential(
        {"a": paired_censored(fast, slow), "b": paired_censored(fast, slow2)}, first=3, cap=10
    )
    assert ten["a"].outcome == BETTER and ten["a"].decided_at == 10
    assert ten["a"].p_holm == pytest.approx(2 * (2 / 1024) * 0.05 / 0.0255)


def test_times_are_interval_censored_by_the_validations():
    """Times are resolved to validations: a target met at the first one is known only to take at most one epoch; at
    validation k, to lie between k − 1 and k epochs."""
    history = [{"epoch": e, "val_acc": a, "epoch_time_s": 1.0} for e, a in ((1, 0.9), (2, 0.95))]
    got = time_to_target(history, {"steps": 200, "epochs_run": 2}, 0.8)
    assert got[STEPS_TO_TARGET] == Timed(100.0, True, after=0.0)
    later = time_to_target(history, {"steps": 200, "epochs_run": 2}, 0.92)
    assert later[STEPS_TO_TARGET] == Timed(200.0, True, after=100.0)
    first, second, third = Timed(100, R, after=0), Timed(200, R, after=100), Timed(300, R, after=200)
    d = scores([first, second, first, third], [first, second, third, first])
    assert d[0] == 0 and d[1] == 0  # met between the same two validations: the order is unknown
    assert d[2] == pytest.approx(math.log(3)) and d[3] == pytest.approx(-math.log(3))  # disjoint: the order is known
    # the ratio of two times met at the same validation k lies in ((k−1)/k, k/(k−1)): within ±10% from k = 11
    at = [Timed(100.0 * k, R, after=100.0 * (k - 1)) for k in (1, 2, 10, 11, 12)]
    assert [resolved(t, t) for t in at] == [False, False, False, True, True]
    assert resolved(Timed(100, R), Timed(105, R))  # exact times always are


def test_the_same_early_validation_on_every_seed_is_no_signal_not_equivalent():
    """Both arms met the target at the same early validation on all six seeds: the ratio 1.0 is the clock's
    resolution, not a measured equality."""
    for k in (1, 2):
        early = {s: Timed(100.0 * k, R, after=100.0 * (k - 1)) for s in range(6)}
        fixed = decide_speed({"a": paired_censored(early, early)})["a"]
        assert fixed.outcome == NO_SIGNAL and "same two validations" in fixed.reason
        seq = decide_speed_sequential({"a": paired_censored(early, early)}, first=3, cap=10)["a"]
        assert seq.outcome == NO_SIGNAL and "same two validations" in seq.reason and seq.seeds_needed is None
    # met at validation 20 on every seed by both arms: the ratio is within (19/20, 20/19), equivalent within ±10%
    late = {s: Timed(2000.0, R, after=1900.0) for s in range(6)}
    assert decide_speed({"a": paired_censored(late, late)})["a"].outcome == EQUIVALENT
    # five seeds exact and equal, one seed both at the first validation: that ratio is unresolved, not equivalent
    base = timed(*[(1000 + 100 * s, R) for s in range(6)])
    mixed = dict(base) | {5: Timed(100, R, after=0.0)}
    assert decide_speed({"a": paired_censored(mixed, mixed)})["a"].outcome == UNDECIDED


def test_sequential_no_signal_stops_at_the_first_look():
    never = {s: Timed(1000, C) for s in range(3)}
    d = decide_speed_sequential({"a": paired_censored(never, never)}, first=3, cap=10)["a"]
    assert d.outcome == NO_SIGNAL and d.resolves == "" and d.seeds_needed is None


# ---- a study's outcomes -------------------------------------------------------------------------------------------


def test_speed_studies_judge_steps_to_target():
    for name in ("norm", "optimizers", "lr-decay", "init", "depth"):
        study = STUDIES.get(name)
        assert study.outcomes == ("test_acc", STEPS_TO_TARGET) and study.target_val_acc
    assert STUDIES.get("dropout").outcomes == ("test_acc",)


@pytest.mark.parametrize(
    ("outcomes", "message"),
    [
        (["test_acc", "speed"], "study.outcomes = 'speed': unknown outcome; valid: test_acc, steps_to_target"),
        ("test_acc", "study.outcomes = 'test_acc': a non-empty list of test_acc"),
        (["test_acc", "test_acc"], "each outcome at most once"),
    ],
)
def test_custom_study_outcomes_are_checked(outcomes, message):
    raw = {"variants": {"a": {}, "b": {}}, "target_val_acc": 0.9, "outcomes": outcomes}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        custom_study(raw)


def test_time_to_target_needs_a_target():
    with pytest.raises(ConfigError, match="time to target needs target_val_acc"):
        custom_study({"variants": {"a": {}, "b": {}}, "outcomes": ["steps_to_target"]})
    study, _, _ = custom_study({"variants": {"a": {}, "b": {}}, "target_val_acc": 0.5, "outcomes": ["steps_to_target"]})
    assert study.outcomes == ("steps_to_target",)


def _row(variant, seed, reach_epoch, epochs=5, steps_per_epoch=100):
    history = [
        {"epoch": e, "val_acc": 0.95 if reach_epoch and e >= reach_epoch else 0.5, "epoch_time": 1.0}
        for e in range(1, epochs + 1)
    ]
    metrics = {"test_acc": 0.9, "steps": epochs * steps_per_epoch, "epochs_run": epochs, "test_prior_acc": 0.1}
    return RunRow("s", variant, seed, "mnist", "0" * 16, {}, "done", metrics, history, None, 1, 0.0, 1.0)


def test_analysis_judges_the_declared_outcomes():
    spec = {
        "name": "s",
        "baseline": "plain",
        "variants": ["plain", "fast", "never"],
        "baselines": {"plain": "plain", "fast": "plain", "never": "plain"},
        "overrides": {},
        "seeds": 8,
        "target_val_acc": 0.9,
        "outcomes": ["test_acc", "steps_to_target"],
    }
    rows = [_row("plain", s, 4 if s % 2 else None) for s in range(8)]  # baseline: half its seeds never get there
    rows += [_row("fast", s, 1) for s in range(8)] + [_row("never", s, None) for s in range(8)]
    stats = analyse("s", "mnist", spec, rows)
    fast = stats.variant("fast")
    # fast: 8 of 8 faster (4 of them against a censored baseline), p = 2/256, Holm: 2 × 2/256 = 0.0156 < 0.05
    assert fast.speed[STEPS_TO_TARGET].p == pytest.approx(2 / 256)
    assert fast.speed_decisions[STEPS_TO_TARGET].outcome == BETTER
    assert fast.speed_decisions[STEPS_TO_TARGET].p_holm == pytest.approx(2 * 2 / 256)
    never = stats.variant("never").speed_decisions[STEPS_TO_TARGET]
    # never: slower on the 4 seeds where the baseline got there, no information on the 4 others: p = 2/16, Holm 0.125
    assert stats.variant("never").speed[STEPS_TO_TARGET].p == pytest.approx(2 / 16)
    assert never.outcome == UNDECIDED and never.p_holm == pytest.approx(0.125)
    assert "faster on 8 of 8 informative seeds" in fast.speed_verdicts[STEPS_TO_TARGET]
    assert stats.variant("fast").decision.outcome == EQUIVALENT  # test accuracy is judged as before
    plain_spec = {k: v for k, v in spec.items() if k != "outcomes"}
    assert not analyse("s", "mnist", plain_spec, rows).variant("fast").speed  # not declared: not judged


def test_seeds_auto_asks_for_seeds_while_the_speed_outcome_is_open():
    spec = {
        "name": "s",
        "baseline": "plain",
        "variants": ["plain", "fast"],
        "baselines": {"plain": "plain", "fast": "plain"},
        "overrides": {},
        "seeds": 3,
        "sequential": {"first": 3, "cap": 10},
        "target_val_acc": 0.9,
        "outcomes": ["test_acc", "steps_to_target"],
    }
    rows = [_row("plain", s, 4) for s in range(3)] + [_row("fast", s, 1) for s in range(3)]
    stats = analyse("s", "mnist", spec, rows)
    # test accuracy: identical on every seed (no spread: no test); speed: 3 of 3 faster, undecided at the first look
    assert stats.variant("fast").speed_decisions[STEPS_TO_TARGET].outcome == UNDECIDED
    assert seeds_to_run(stats) == {"fast": 5, "plain": 5}


# ---- calibration (the full run is benchmarks/calibrate_lab.py) ----------------------------------------------------


def test_null_studies_keep_the_family_wise_error_near_five_percent():
    """200 null studies of 4 comparisons sharing a baseline, 30% of runs censored, sequential looks to 10 seeds:
    false "better/worse" claims in at most ~10% of studies (5% plus sampling error of 200 studies)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "calibrate_lab.py"
    spec = importlib.util.spec_from_file_location("calibrate_lab", path)
    calib = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = calib  # its dataclasses look their module up there
    spec.loader.exec_module(calib)
    fpr = calib.simulate(studies=200, comparisons=4, effect=0.0, censored=0.3, seed=1).family_rate
    assert fpr <= 0.10


def fake_speed(config):
    """Width 9 reaches the 0.9 target at epoch 1 of 4, width 8 at epoch 3; test accuracy equal within 0.05 pp."""
    import random

    from tricklab.config import validate
    from tricklab.lab.store import config_key

    cfg = validate(config)
    seed, width = cfg.train.seed, cfg.model.width
    reach = 1 if width == 9 else 3
    acc = 0.8 + random.Random(seed * 100 + width).uniform(-0.0005, 0.0005)
    history = [{"epoch": e, "val_acc": 0.95 if e >= reach else 0.5, "epoch_time": 1.0} for e in range(1, 5)]
    metrics = {"test_acc": acc, "best_val_acc": 0.95, "wall_time_s": 4.0, "steps": 400, "epochs_run": 4}
    return metrics, history, config_key(cfg.to_dict())


def test_seeds_auto_adds_seeds_for_an_open_speed_comparison(tmp_path):
    """Test accuracy is equivalent at the first look; steps to target (3 of 3 faster) cannot be decided before the
    7-seed look, so the lab adds seeds up to 7 for it and stops there, better."""
    from tricklab.lab.lab import LabOptions, run_lab
    from tricklab.lab.store import Store

    study, _, _ = custom_study(
        {
            "name": "speedy",
            "dataset": "synthetic",
            "base": {"model.depth": 1, "model.width": 8, "train.epochs": 4},
            "baseline": "plain",
            "variants": {"plain": {}, "fast": {"model.width": 9}},
            "margin": 0.5,
            "target_val_acc": 0.9,
            "outcomes": ["test_acc", "steps_to_target"],
        }
    )
    out = tmp_path / "lab"
    run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake_speed)
    with Store(out / "results.sqlite") as store:
        spec, rows = store.studies()[0][2], store.rows("speedy", "synthetic")
    assert spec["outcomes"] == ["test_acc", "steps_to_target"]
    assert sorted(r.seed for r in rows if r.variant == "fast" and r.status == "done") == list(range(7))
    stats = analyse("speedy", "synthetic", spec, rows)
    fast = stats.variant("fast")
    assert fast.decision.outcome == EQUIVALENT and fast.decision.decided_at == 3
    d = fast.speed_decisions[STEPS_TO_TARGET]
    assert d.outcome == BETTER and d.decided_at == 7 and seeds_to_run(stats) == {}
