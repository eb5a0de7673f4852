"""No verdict where neither arm learned: a comparison whose two arms ended at chance (the share of the test set's
most common class, plus the study's margin) or both diverged is "no signal", with its reason; it is left out of
Holm's family, ``--seeds auto`` adds no seeds for it, and the records and reports carry it. Constructed data."""

import random

import pytest

from tricklab.lab.analysis import analyse, no_signal_reason, seeds_to_run
from tricklab.lab.lab import LabOptions, run_lab
from tricklab.lab.stats import BETTER, EQUIVALENT, NO_SIGNAL, OUTCOMES, UNDECIDED
from tricklab.lab.store import RunRow, Store, config_key
from tricklab.lab.studies import custom_study

PRIOR = 0.1135  # share of the digit 1 in MNIST's test labels
MARGIN_PP = 0.5


def row(variant, seed, acc, *, diverged=False, prior=PRIOR):
    metrics = {"test_acc": acc, "best_val_acc": acc, "wall_time_s": 1.0, "test_prior_acc": prior}
    if diverged:
        metrics["diverged"] = True
    history = [{"epoch": 1, "val_acc": acc, "val_loss": 1.0}]
    return RunRow("s", variant, seed, "mnist", "0" * 16, {}, "done", metrics, history, None, 1, 0.0, 1.0)


def spec(*variants, baseline="none", margin=MARGIN_PP):
    return {
        "name": "s",
        "baseline": baseline,
        "variants": list(variants),
        "baselines": {v: baseline for v in variants},
        "overrides": {},
        "margin": margin,
        "seeds": 5,
    }


def accs(level, wobble=0.0002):
    return [level + wobble * ((s % 3) - 1) for s in range(5)]


def study_rows(levels):
    return [row(name, s, a) for name, level in levels.items() for s, a in enumerate(accs(level))]


def outcome(stats, name):
    return stats.variant(name).decision


def test_both_arms_at_chance_is_no_signal_with_its_reason():
    stats = analyse("s", "mnist", spec("none", "layer"), study_rows({"none": PRIOR, "layer": PRIOR}))
    d = outcome(stats, "layer")
    assert d.outcome == NO_SIGNAL
    assert "layer at chance" in d.reason and "none at chance" in d.reason and "11.35%" in d.reason
    assert stats.variant("layer").verdict.startswith("layer: no signal vs none: both arms learned nothing")


def test_chance_threshold_on_both_sides():
    """At chance + margin exactly: no signal; just above (+0.05 pp over the margin) on one arm: a tested comparison."""
    at = PRIOR + MARGIN_PP / 100
    on = analyse("s", "mnist", spec("none", "v"), study_rows({"none": at, "v": at}))
    assert outcome(on, "v").outcome == NO_SIGNAL
    just = at + 0.0005
    off = analyse("s", "mnist", spec("none", "v"), study_rows({"none": at, "v": just}))
    assert outcome(off, "v").outcome != NO_SIGNAL and outcome(off, "v").reason == ""
    # one arm learned, the other did not: a real difference, tested as before
    rows = study_rows({"none": PRIOR}) + [row("v", s, 0.9 + 0.001 * s) for s in range(5)]
    learned = analyse("s", "mnist", spec("none", "v"), rows)
    assert outcome(learned, "v").outcome == BETTER


def test_chance_is_taken_from_the_recorded_label_prior():
    """The same accuracies are no signal on a test set whose most common class is 11.35%, and a tested comparison
    (the arms are equivalent) on one whose most common class is 5%."""
    rows = study_rows({"none": 0.11, "v": 0.11})
    assert outcome(analyse("s", "mnist", spec("none", "v"), rows), "v").outcome == NO_SIGNAL
    rows = [row(r.variant, r.seed, r.metrics["test_acc"], prior=0.05) for r in rows]
    assert outcome(analyse("s", "mnist", spec("none", "v"), rows), "v").outcome == EQUIVALENT


def test_both_diverged_is_no_signal():
    rows = [row(v, s, 0.5, diverged=True) for v in ("none", "v") for s in range(5)]
    d = outcome(analyse("s", "mnist", spec("none", "v"), rows), "v")
    assert d.outcome == NO_SIGNAL and "v diverged on every seed" in d.reason and "none diverged" in d.reason


def test_no_signal_comparisons_leave_holms_family():
    """Two comparisons at chance and one real: Holm's m is 1, not 3."""
    levels = {"none": PRIOR, "a": PRIOR, "b": PRIOR + 0.001}
    rows = study_rows(levels) + [row("c", s, PRIOR + 0.02 + 0.001 * s) for s in range(5)]
    stats = analyse("s", "mnist", spec("none", "a", "b", "c"), rows)
    assert outcome(stats, "a").outcome == NO_SIGNAL and outcome(stats, "b").outcome == NO_SIGNAL
    assert outcome(stats, "c").outcome == BETTER and outcome(stats, "c").family == 1


def test_without_a_recorded_prior_only_divergence_is_detected():
    rows = [row(r.variant, r.seed, r.metrics["test_acc"], prior=None) for r in study_rows({"none": PRIOR, "v": PRIOR})]
    for r in rows:
        del r.metrics["test_prior_acc"]
    stats = analyse("s", "mnist", spec("none", "v"), rows)
    assert stats.chance is None and outcome(stats, "v").outcome != NO_SIGNAL


def test_no_signal_reason_is_empty_when_one_arm_learned():
    stats = analyse("s", "mnist", spec("none", "v"), study_rows({"none": PRIOR, "v": 0.5}))
    assert no_signal_reason(stats.variant("v"), stats.variant("none"), stats.chance, 0.005) == ""


def test_no_signal_is_a_fifth_outcome():
    assert OUTCOMES[-1] == NO_SIGNAL and len(OUTCOMES) == 5


# ---- through the lab: --seeds auto, records, reports ---------------------------------------------------------

STUDY = {
    "name": "chance",
    "dataset": "synthetic",
    "base": {"model.depth": 1, "model.width": 8, "train.epochs": 1},
    "baseline": "plain",
    "variants": {"plain": {}, "flat": {"model.width": 9}, "noisy": {"model.width": 10}},
    "margin": 0.5,
}


def fake(config):
    """Width 8 and 9 learn nothing (accuracy = the prior, 0.25, ± noise below the margin); width 10 learns, noisily."""
    from tricklab.config import validate

    cfg = validate(config)
    seed, width = cfg.train.seed, cfg.model.width
    rng = random.Random(seed * 100 + width)
    acc = 0.25 + rng.uniform(-0.001, 0.001) if width in (8, 9) else 0.27 + rng.gauss(0, 0.03)
    metrics = {"test_acc": acc, "best_val_acc": acc, "wall_time_s": 0.0, "test_prior_acc": 0.25}
    return metrics, [{"epoch": 1, "val_acc": acc, "val_loss": 1.0}], config_key(cfg.to_dict())


def test_seeds_auto_adds_no_seeds_for_no_signal_and_the_reports_carry_it(tmp_path):
    from tricklab.api import lab_records
    from tricklab.report.lab_report import build_report
    from tricklab.report.markdown import build_markdown

    study, _, _ = custom_study(STUDY)
    out = tmp_path / "lab"
    run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    with Store(out / "results.sqlite") as store:
        spec_, rows = store.studies()[0][2], store.rows("chance", "synthetic")
    done = {(r.variant, r.seed) for r in rows if r.status == "done"}
    assert {s for v, s in done if v == "flat"} == {0, 1, 2}  # no seed beyond the first look
    stats = analyse("chance", "synthetic", spec_, rows)
    assert stats.variant("flat").decision.outcome == NO_SIGNAL and "flat" not in seeds_to_run(stats)
    assert stats.variant("noisy").decision.outcome != NO_SIGNAL
    records = {r["variant"]: r for r in lab_records(out)}
    assert records["flat"]["outcome"] == NO_SIGNAL and "at chance" in records["flat"]["no_signal_reason"]
    assert records["noisy"]["no_signal_reason"] is None
    page = build_report(out, out_dir=tmp_path / "r").read_text()
    assert 'class="no-signal">no signal<' in page and "td.no-signal{" in page
    md = build_markdown(out, tmp_path / "r.md").read_text()
    assert "| no signal |" in md and "flat: no signal vs plain: both arms learned nothing" in md


@pytest.mark.parametrize("outcome_", [BETTER, UNDECIDED, NO_SIGNAL])
def test_every_outcome_has_a_colour(outcome_):
    from tricklab.report.lab_report import COLOURS

    assert outcome_ in COLOURS


def test_every_lab_run_records_the_test_sets_chance_accuracy():
    """The lab's runner records ``test_prior_acc``: the share of the most common class among the test labels."""
    import torch

    from tricklab.config import load_config
    from tricklab.data import sources
    from tricklab.lab.runner import execute

    cfg = load_config(overrides={"data.name": "synthetic", "model.depth": 1, "model.width": 8, "train.epochs": 1})
    metrics, _, _ = execute(cfg.to_dict())
    labels = sources.synthetic(None).test.y.reshape(-1)
    expected = torch.bincount(labels).max().item() / len(labels)
    assert metrics["test_prior_acc"] == pytest.approx(expected)


def test_a_sequential_study_whose_every_comparison_is_no_signal_is_still_sequential():
    """A --seeds auto study where nothing learned keeps its design: its no-signal decisions say they belong to the
    sequential study and its cap, so a Markdown page of --seeds auto studies describes them as --seeds auto."""
    seq_spec = {**spec("none", "layer"), "sequential": {"first": 3, "cap": 10}}
    stats = analyse("s", "mnist", seq_spec, study_rows({"none": PRIOR, "layer": PRIOR}))
    d = outcome(stats, "layer")
    assert d.outcome == NO_SIGNAL and d.sequential and d.cap == 10
    fixed = analyse("s", "mnist", spec("none", "layer"), study_rows({"none": PRIOR, "layer": PRIOR}))
    assert not outcome(fixed, "layer").sequential and outcome(fixed, "layer").cap is None
