"""One trick across datasets: the normalized improvement, the stratified-bootstrap interval against a hand-computed
bootstrap (fixed rng), the performance profile, the per-dataset study instances a lab plans, the checks of several
datasets, and the report that opens with the scoreboard."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from tricklab.errors import ConfigError, TrickLabError
from tricklab.lab.across import (
    across,
    aggregate_interval,
    normalized_improvement,
    performance_profile,
    stratified_bootstrap,
    welch_df,
)
from tricklab.lab.analysis import analyse
from tricklab.lab.lab import plan, run_config, run_key_hash
from tricklab.lab.request import PYTHON, SHELL, LabOptions, lab_folder, lab_options
from tricklab.lab.stats import BETTER, UNDECIDED, WORSE
from tricklab.lab.store import RunRow
from tricklab.lab.studies import STUDIES, custom_study

# two datasets, (diffs, baseline) on the same seeds
A = ([0.010, 0.020, 0.030], [0.80, 0.82, 0.78])  # baseline error 0.20
B = ([0.001, -0.001, 0.003, 0.001], [0.98, 0.985, 0.975, 0.98])  # baseline error 0.02


def test_normalized_improvement_is_the_share_of_the_baseline_error_removed():
    assert normalized_improvement([0.003], [0.98]) == pytest.approx(0.15)
    assert normalized_improvement(*A) == pytest.approx(0.02 / 0.20)
    assert normalized_improvement(*B) == pytest.approx(0.001 / 0.02)
    assert math.isnan(normalized_improvement([0.0], [1.0]))  # nothing to remove
    assert math.isnan(normalized_improvement([], []))


def test_stratified_bootstrap_resamples_seeds_within_each_dataset_as_computed_by_hand():
    got = stratified_bootstrap([A, B], reps=4, rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same draws: dataset A's indices first, then B's
    idx = {"A": rng.integers(0, 3, size=(4, 3)), "B": rng.integers(0, 4, size=(4, 4))}
    want = []
    for r in range(4):
        total = 0.0
        for key, (d, b) in (("A", A), ("B", B)):
            n = len(d)
            f = math.sqrt(n / (n - 1))
            dm, bm = sum(d) / n, sum(b) / n
            ds = [dm + f * (d[i] - dm) for i in idx[key][r]]
            bs = [bm + f * (b[i] - bm) for i in idx[key][r]]
            total += (sum(ds) / n) / (1 - sum(bs) / n)
        want.append(total / 2)
    assert got == pytest.approx(want)


def test_welch_df_by_hand():
    va = np.var(np.array(A[0]) / 0.2, ddof=1) / 3
    vb = np.var(np.array(B[0]) / 0.02, ddof=1) / 4
    assert welch_df([A, B]) == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3))


def test_the_aggregate_interval_is_the_estimate_plus_minus_t_times_the_bootstrap_sd():
    est, lo, hi = aggregate_interval([A, B], reps=50, rng=np.random.default_rng(1))
    boot = stratified_bootstrap([A, B], reps=50, rng=np.random.default_rng(1))
    half = stats.t.ppf(0.975, welch_df([A, B])) * np.std(boot)
    assert est == pytest.approx((0.10 + 0.05) / 2)
    assert (lo, hi) == pytest.approx((est - half, est + half))
    assert aggregate_interval([A, B]) == aggregate_interval([A, B])  # a fixed stream by default
    # fewer than 2 seeds on a dataset: no interval
    assert math.isnan(aggregate_interval([A, ([0.01], [0.9])])[1])


def test_a_constant_improvement_everywhere_has_a_point_interval():
    same = [([0.01, 0.01, 0.01], [0.9, 0.9, 0.9]), ([0.002, 0.002], [0.98, 0.98])]
    est, lo, hi = aggregate_interval(same, reps=20)
    assert est == lo == hi == pytest.approx((0.1 + 0.1) / 2)


def test_performance_profile_counts_runs_strictly_above_each_threshold():
    runs = [-0.1, 0.0, 0.2, 0.5, math.nan]
    assert list(performance_profile(runs, [-0.2, 0.0, 0.3, 0.6])) == [1.0, 0.5, 0.25, 0.0]
    assert math.isnan(performance_profile([], [0.0])[0])


def _rows(dataset, plain, trick):
    def row(variant, seed, acc):
        return RunRow("s", variant, seed, dataset, "h", {}, "done", {"test_acc": acc}, [], None, 1, 0.0, 1.0)

    return [row("plain", s, a) for s, a in enumerate(plain)] + [row("trick", s, a) for s, a in enumerate(trick)]


SPEC = {"variants": ["plain", "trick"], "baselines": {"plain": "plain", "trick": "plain"}, "baseline": "plain"}


def _instances(shift_b):
    spec = SPEC | {"seeds": 4}
    a = analyse("s", "mnist1d", spec, _rows("mnist1d", [0.70, 0.72, 0.71, 0.69], [0.75, 0.76, 0.77, 0.74]))
    trick_b = [0.90 + shift_b + x for x in (0.001, 0.011, -0.009, 0.002)]
    b = analyse("s", "synthetic", spec, _rows("synthetic", [0.90, 0.91, 0.89, 0.90], trick_b))
    return [a, b]


def test_across_gives_each_dataset_its_outcome_and_the_aggregate():
    (item,) = across(_instances(shift_b=0.02))
    assert (item.study, item.variant, item.baseline) == ("s", "trick", "plain")
    assert [c.dataset for c in item.datasets] == ["mnist1d", "synthetic"]
    assert [c.outcome for c in item.datasets] == [BETTER, BETTER]
    assert item.mean_prob == 1.0
    want = np.mean([0.05 / (1 - 0.705), (0.02 + 0.00125) / (1 - 0.90)])
    assert item.normalized == pytest.approx(want)
    assert item.lo > 0 and item.outcome == BETTER
    assert across(_instances(shift_b=0.02)[:1]) == []  # one dataset: no aggregate


def test_the_aggregate_outcome_follows_its_interval():
    (worse,) = across(_instances(shift_b=-0.2))  # a large loss on one dataset outweighs the gain on the other
    assert worse.hi < 0 and worse.outcome == WORSE
    (mixed,) = across(_instances(shift_b=-0.018))  # +17% of the errors removed on one, −17% on the other
    assert mixed.lo < 0 < mixed.hi and mixed.outcome == UNDECIDED


def test_a_study_with_several_variants_widens_each_aggregate_interval_bonferroni():
    one_variant = across(_instances(shift_b=0.02))[0]
    baselines = SPEC["baselines"] | {"twin": "plain"}
    spec = SPEC | {"seeds": 4, "variants": ["plain", "trick", "twin"], "baselines": baselines}
    two_variants = []
    for s in _instances(shift_b=0.02):  # the same data, with a second variant identical to the first
        plain = [s.variant("plain").values["test_acc"][k] for k in range(4)]
        trick = [s.variant("trick").values["test_acc"][k] for k in range(4)]
        twin = [replace(r, variant="twin") for r in _rows(s.dataset, plain, trick) if r.variant == "trick"]
        two_variants.append(analyse("s", s.dataset, spec, _rows(s.dataset, plain, trick) + twin))
    trick, twin = across(two_variants)
    assert (one_variant.confidence, trick.confidence, twin.confidence) == (0.95, 0.975, 0.975)
    assert trick.normalized == pytest.approx(one_variant.normalized)
    assert trick.lo < one_variant.lo and trick.hi > one_variant.hi  # two claims at a family-wise 5%: wider


def test_several_datasets_are_parsed_and_checked_in_one_line():
    opts = lab_options(PYTHON, dataset="synthetic,mnist1d")
    assert opts.datasets == ("synthetic", "mnist1d") and opts.dataset is None
    assert lab_options(PYTHON, dataset=["synthetic", "mnist1d"]).datasets == ("synthetic", "mnist1d")
    assert lab_options(PYTHON, dataset="synthetic").dataset == "synthetic"  # one dataset: as before
    with pytest.raises(TrickLabError, match=r"^--dataset = mnist1d,mnist1d: names 'mnist1d' twice; name each"):
        lab_options(SHELL, dataset="mnist1d,mnist1d")
    with pytest.raises(TrickLabError, match=r"^--dataset = mnist1d,: expected dataset names separated by commas"):
        lab_options(SHELL, dataset="mnist1d,")
    with pytest.raises(TrickLabError, match=r"unknown dataset 'mnist2d'.*valid: .*mnist1d"):
        lab_options(SHELL, dataset="mnist1d,mnist2d")
    assert str(lab_folder(None, "synthetic,mnist1d", [])) == "labs/synthetic+mnist1d"


def test_a_custom_study_lists_its_datasets_and_they_are_checked():
    raw = {"name": "d", "datasets": ["synthetic", "mnist1d"], "variants": {"a": {}, "b": {"model.dropout": 0.1}}}
    study, _, _ = custom_study(raw | {"margin": 1.0})
    assert study.datasets == ("synthetic", "mnist1d") and study.margin == {"synthetic": 1.0, "mnist1d": 1.0}
    assert str(lab_folder(None, None, [study])) == "labs/synthetic+mnist1d"
    with pytest.raises(ConfigError, match=r"^study.datasets = \['synthetic', 'synthetic'\]: names 'synthetic' twice"):
        custom_study(raw | {"datasets": ["synthetic", "synthetic"]})
    with pytest.raises(ConfigError, match=r"^study.datasets.1 = 'mnist2d': unknown dataset 'mnist2d'"):
        custom_study(raw | {"datasets": ["synthetic", "mnist2d"]})
    with pytest.raises(ConfigError, match=r"^study.datasets = .*: give either dataset or datasets, not both"):
        custom_study(raw | {"dataset": "mnist"})


def test_each_dataset_is_its_own_study_instance_with_the_runs_it_has_alone():
    study = STUDIES.get("dropout")
    both = plan([study], LabOptions(datasets=("mnist1d", "synthetic"), seeds=2))
    assert [p.dataset for p in both] == ["mnist1d", "synthetic"]
    for p in both:
        alone = plan([study], LabOptions(dataset=p.dataset, seeds=2))[0]
        assert {k: run_key_hash(c) for k, c in p.configs.items()} == {
            k: run_key_hash(c) for k, c in alone.configs.items()
        }
    cfg = run_config(study, study.variants[0].name, "mnist1d", LabOptions(datasets=("mnist1d", "synthetic")), 0, 1)
    assert run_key_hash(cfg) == run_key_hash(
        run_config(study, study.variants[0].name, "mnist1d", LabOptions(dataset="mnist1d"), 0, 1)
    )


def test_a_lab_on_two_datasets_reports_the_scoreboard_and_the_aggregate(tmp_path):
    import tricklab
    from tricklab.report.markdown import build_markdown

    study = {
        "name": "xd",
        "base": {"model": {"width": 16, "depth": 1}, "train": {"epochs": 1}},
        "variants": {"plain": {}, "wide": {"model.width": 32}},
    }
    lab = tricklab.run_lab(
        study, dataset="synthetic,mnist1d", seeds=2, out=tmp_path / "lab", progress=False, aggregate="iqm"
    )
    by = {(r["dataset"], r["variant"]): r for r in lab.records}
    assert set(by) == {(d, v) for d in ("synthetic", "mnist1d") for v in ("plain", "wide")}
    wide = by[("mnist1d", "wide")]
    assert 0 <= wide["prob_improvement_ci_low"] <= wide["prob_improvement"] <= wide["prob_improvement_ci_high"] <= 1
    (agg,) = lab.across
    assert (agg["study"], agg["variant"], set(agg["outcomes"])) == ("xd", "wide", {"synthetic", "mnist1d"})
    assert agg["normalized_ci_low"] <= agg["normalized"] <= agg["normalized_ci_high"]
    page = lab.report.read_text()
    assert page.index('id="scoreboard"') < page.index('id="xd-synthetic"')  # the report opens with it
    assert "xd: wide" in page and "error removed, mean [CI]" in page
    assert page.count("<td>IQM ") == 4  # --aggregate iqm, stored with each study instance: every arm by its IQM
    assert (tmp_path / "lab" / "plots" / "across-datasets-profile.png").stat().st_size > 0
    md = build_markdown(tmp_path / "lab", tmp_path / "results.md").read_text()
    assert "## Across datasets" in md and "results-plots/across-datasets-profile.png" in md


def test_the_command_line_refuses_a_dataset_named_twice_before_any_run(tmp_path, capsys):
    from tricklab.cli.main import main

    assert main(["lab", "dropout", "--dataset", "mnist1d,mnist1d", "--out", str(tmp_path / "lab")]) == 2
    assert "error: --dataset = mnist1d,mnist1d: names 'mnist1d' twice" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()
