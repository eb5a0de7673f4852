"""Reports open with what a lab found: the best variant, a ranking with Δ vs the best, and the lesson's claims
confirmed or refuted from the stored outcomes; variants without runs are "not run"; --quick is a preview; eleven
variants stay apart in the plots. Labs are written by hand into the database (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from tricklab.lab.analysis import analyse
from tricklab.lab.claims import CLAIMS, CONFIRMED, NOT_RUN, REFUTED, UNSETTLED, claims_for
from tricklab.lab.lab import DB_NAME, LabOptions, plan, run_key_hash, study_spec
from tricklab.lab.stats import NO_SIGNAL
from tricklab.lab.store import RunRow, Store
from tricklab.lab.studies import STUDIES
from tricklab.report import lab_report
from tricklab.report.findings import claim_detail, claim_sentence, findings_of, is_preview, variant_style
from tricklab.report.lab_report import OUTCOME_COLUMN, build_report, table_rows
from tricklab.report.markdown import build_markdown

BASE = [0.50, 0.52, 0.51, 0.49]


def shifted(by_pp, noise=(0, 0, 0, 0)):
    return [a + (by_pp + n) / 100 for a, n in zip(BASE, noise, strict=True)]


# norm on mnist1d (margin ±1 pp): batch, weight and group clearly better than none, layer the same as none,
# batch_after within noise of batch
NORM = {
    "none": BASE,
    "batch": shifted(10, (0, 0.5, -0.5, 0.5)),
    "layer": shifted(0, (0.01, -0.01, 0.01, -0.01)),
    "weight": shifted(5, (0, 0.3, -0.3, 0.2)),
    "group": shifted(7, (0.2, -0.2, 0.1, 0)),
}
NORM["batch_after"] = [b + n / 100 for b, n in zip(NORM["batch"], (3, -3, 2.5, -2), strict=True)]


def rows_of(study, acc, dataset="mnist1d"):
    return [
        RunRow(study, v, seed, dataset, "h", {}, "done", {"test_acc": a}, [{"epoch": 1, "val_acc": a}], None, 1, 0, 0)
        for v, accs in acc.items()
        for seed, a in enumerate(accs)
    ]


def stats_of(study, acc, dataset="mnist1d"):
    spec = study_spec(STUDIES.get(study), dataset, LabOptions(seeds=4))
    return analyse(study, dataset, spec, rows_of(study, acc, dataset))


def verdicts(s):
    return {v.claim.text: v for v in claims_for(s)}


def test_every_claim_names_comparisons_of_its_built_in_study():
    for name, claims in CLAIMS.items():
        study = STUDIES.get(name)
        compared = {v.name for v in study.variants if v.name != study.baseline_of(v)}
        for c in claims:
            assert set(c.variants) <= compared, (name, c.text)


def test_claims_are_confirmed_refuted_or_not_settled_from_the_outcomes():
    s = stats_of("norm", NORM)
    outcomes = {v.name: v.decision.outcome for v in s.variants if v.decision}
    assert outcomes == {
        "batch": "better",
        "layer": "equivalent",
        "weight": "better",
        "group": "better",
        "batch_after": "undecided",
    }
    got = verdicts(s)
    batch, cousins, placement = (got[c.text] for c in CLAIMS["norm"] if c.on == "test_acc")
    assert batch.status == CONFIRMED and batch.detail == "batch: better"
    assert cousins.status == REFUTED  # every one had to be better; layer is equivalent
    assert cousins.detail == "equivalent: layer; better: weight, group"
    assert placement.status == UNSETTLED and placement.label == "not settled at 4 seeds"


def test_a_claim_that_needs_one_comparison_is_confirmed_by_one_and_refuted_only_by_all():
    undecided = shifted(0, (3, -3, 2.5, -2))
    same = shifted(0, (0.01, -0.01, 0.01, -0.01))
    worse = shifted(-8, (0, 0.2, -0.2, 0))
    cases = [
        ({"p=0.1": shifted(5, (0, 0.3, -0.3, 0)), "p=0.3": same, "p=0.5": worse}, CONFIRMED),
        ({"p=0.1": undecided, "p=0.3": same, "p=0.5": worse}, UNSETTLED),
        ({"p=0.1": same, "p=0.3": same, "p=0.5": worse}, REFUTED),
    ]
    for acc, status in cases:
        (claim,) = claims_for(stats_of("dropout", {"p=0.0": BASE} | acc))
        assert claim.status == status, acc


def speed_rows(study, epochs_to_target, dataset="mnist1d", budget=5):
    """Runs whose validation accuracy crosses 0.99 (above any study's target) at the given epoch (None: never),
    with 100 steps an epoch and the same test accuracy everywhere."""
    rows = []
    for v, epochs in epochs_to_target.items():
        for seed, e in enumerate(epochs):
            history = [{"epoch": k, "val_acc": 0.99 if e is not None and k >= e else 0.2} for k in range(1, budget + 1)]
            metrics = {"test_acc": 0.5 + seed / 100, "steps": 100 * budget, "epochs_run": budget}
            rows.append(RunRow(study, v, seed, dataset, "h", {}, "done", metrics, history, None, 1, 0, 0))
    return rows


def test_speed_claims_are_judged_on_steps_to_target():
    """The norm study judges steps to target: batch norm reaching the target at epoch 2 on every seed where no
    normalization needs 5 or never gets there confirms 'batch norm speeds up training'; the same on the
    test-accuracy claim is equivalent (identical accuracies), so that claim is refuted, each from its own outcome."""
    spec = study_spec(STUDIES.get("norm"), "mnist1d", LabOptions(seeds=6))
    fast = {"none": [5, None, 5, None, 5, 5], "batch": [2] * 6}
    s = analyse("norm", "mnist1d", spec, speed_rows("norm", fast))
    got = verdicts(s)
    (speed,) = (got[c.text] for c in CLAIMS["norm"] if c.on == "steps_to_target")
    assert speed.status == CONFIRMED and speed.detail == "batch: better"
    assert "steps to target: batch: better" in claim_sentence(speed)
    assert claim_detail(speed) == "steps to target: batch: better"  # what the HTML and Markdown reports show
    (acc,) = (got[c.text] for c in CLAIMS["norm"] if c.text.startswith("Batch norm makes"))
    assert acc.status == REFUTED and acc.detail == "batch: equivalent"
    # both arms at the first validation on every seed: no time to compare, so the speed claim has no signal
    early = analyse("norm", "mnist1d", spec, speed_rows("norm", {"none": [1] * 6, "batch": [1] * 6}))
    (speed,) = (v for v in claims_for(early) if v.claim.on == "steps_to_target")
    assert speed.status == NO_SIGNAL and speed.label == "no signal"
    # slower on every seed: refuted
    slow = analyse("norm", "mnist1d", spec, speed_rows("norm", {"none": [2] * 6, "batch": [4] * 6}))
    (speed,) = (v for v in claims_for(slow) if v.claim.on == "steps_to_target")
    assert speed.status == REFUTED and speed.detail == "batch: worse"


def test_a_study_that_does_not_judge_speed_gets_no_speed_claims():
    s = stats_of("dropout", {"p=0.0": BASE, "p=0.1": BASE, "p=0.3": BASE, "p=0.5": BASE})
    assert all(v.claim.on == "test_acc" for v in claims_for(s))
    assert any(c.on == "steps_to_target" for claims in CLAIMS.values() for c in claims)


def test_comparisons_without_runs_are_not_run_not_undecided():
    s = stats_of("norm", {"none": BASE, "batch": NORM["batch"]})
    got = verdicts(s)
    on_acc = [got[c.text].status for c in CLAIMS["norm"] if c.on == "test_acc"]
    assert on_acc == [CONFIRMED, NOT_RUN, NOT_RUN]
    cells = {v.name: row[OUTCOME_COLUMN] for v, row in zip(s.variants, table_rows(s), strict=True)}
    assert cells == {
        "none": "baseline",
        "batch": "better",
        "layer": "not run",
        "weight": "not run",
        "group": "not run",
        "batch_after": "not run",
    }


def test_the_findings_rank_every_variant_with_its_delta_to_the_best():
    f = findings_of(stats_of("norm", NORM))
    means = {v: np.mean(a) for v, a in NORM.items()}
    order = sorted(means, key=lambda v: -means[v])
    assert [r.name for r in f.ranked] == order and f.best.name == "batch_after"
    for r in f.ranked:
        assert r.delta_pp == pytest.approx((means[r.name] - means[order[0]]) * 100)
    # batch_after leads batch by noise only: the interval of the paired lead includes 0
    assert f.lead.diff.lo < 0 < f.lead.diff.hi
    dropout = findings_of(
        stats_of("dropout", {"p=0.0": BASE, "p=0.1": shifted(1), "p=0.3": shifted(5, (0, 0.3, 0, 0))})
    )
    assert dropout.best.name == "p=0.3" and dropout.lead.diff.lo > 0


@pytest.mark.parametrize(
    ("command", "preview"),
    [
        ("tricklab lab dropout --dataset mnist1d --quick", True),
        ("tricklab lab dropout --quick --device cpu", True),
        ("tricklab.run_lab('dropout', seeds=2, quick=True)", True),
        ("tricklab lab dropout --dataset mnist1d", False),
        ("tricklab lab --out quick -- --quick", False),  # a study named --quick after "--"
        ("tricklab.run_lab('dropout', seeds=3)", False),
    ],
)
def test_a_quick_lab_is_known_by_its_stored_command(command, preview):
    assert is_preview(command) is preview


def test_eleven_variants_each_have_their_own_colour_line_and_marker(monkeypatch, tmp_path):
    acc = {v.name: shifted(i) for i, v in enumerate(STUDIES.get("init").variants)}
    s = stats_of("init", acc)
    figs = []
    monkeypatch.setattr(lab_report, "_save", lambda fig, path: figs.append(fig) or path)
    lab_report.plot_curves(s, tmp_path / "c.png")
    signals = {v.name: {"forward_std": [1.0, 0.5]} for v in s.variants}
    lab_report.plot_signal("init", "mnist1d", signals, tmp_path / "s.png", variants=tuple(signals))
    for fig in figs:
        lines = fig.axes[0].get_lines()
        looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
        assert len(lines) == len(looks) == 11
        by_name = {ln.get_label(): (ln.get_color(), ln.get_linestyle()) for ln in lines}
        assert by_name["standard_normal"] != by_name["lsuv"]  # both were matplotlib's first blue
    assert len({tuple(variant_style(i).values()) for i in range(40)}) == 40


def write_lab(out, command, acc=NORM, pending=(), asked_threads=None, threads=1):
    """A lab folder holding the norm study on mnist1d with ``acc``'s runs done and ``pending``'s not run."""
    study = STUDIES.get("norm")
    opts = LabOptions(seeds=4, dataset="mnist1d")
    out.mkdir(parents=True, exist_ok=True)
    with Store(out / DB_NAME) as store:
        (p,) = plan([study], opts, threads)
        spec = study_spec(study, "mnist1d", opts)
        if asked_threads is not None:
            spec = spec | {"overrides": {k: o | {"train.threads": asked_threads} for k, o in spec.overrides.items()}}
        store.save_study("norm", "mnist1d", spec, command)
        for key, cfg in p.configs.items():
            h = run_key_hash(cfg)
            store.ensure(*key, config=cfg.to_dict(), config_hash=h)
            if key[1] in pending:
                continue
            a = acc[key[1]][key[2]]
            store.mark_done(key, {"test_acc": a}, [{"epoch": 1, "val_acc": a - 0.01}, {"epoch": 2, "val_acc": a}], h)
    return out


def test_reports_open_with_the_findings(tmp_path):
    lab = write_lab(tmp_path / "lab", "tricklab lab norm --dataset mnist1d --seeds 4")
    page = build_report(lab).read_text()
    findings = page.index('<h2 id="findings">Findings</h2>')
    assert findings < page.index('<h2 id="norm-mnist1d">')
    top = page[findings : page.index('<h2 id="norm-mnist1d">')]
    assert (
        f"<td>batch_after ({np.mean(NORM['batch_after']) * 100:.2f})</td>" in top
        and "not separated from the runner-up, batch" in top
    )
    assert '<span class="claim-confirmed">✓ confirmed</span>: Batch norm makes a deep sigmoid net' in top
    assert '<span class="claim-refuted">✗ refuted</span>: Layer, weight and group norm' in top
    assert "not settled at 4 seeds</span>: Batch norm before the activation" in top
    assert "preview (--quick)" not in page and 'class="preview"' not in page
    md = build_markdown(lab, tmp_path / "results.md").read_text()
    assert md.index("## Findings") < md.index("## Summary") < md.index("## norm on mnist1d")
    table = md[md.index("## Findings") : md.index("## Summary")]
    means = {v: np.mean(a) for v, a in NORM.items()}
    delta = {v: f"{(m - means['batch_after']) * 100:+.2f}" for v, m in means.items()}
    assert f"| [norm on mnist1d](#norm-on-mnist1d) | batch_after ({means['batch_after'] * 100:.2f}) | " in table
    ranking = ", ".join(f"{v} {delta[v]}" for v in ("batch", "group", "weight"))
    assert f"| {ranking}, " in table and "| 1 confirmed, 1 refuted, 1 not settled | 4 |" in table
    assert "✓ Claim **confirmed**: Batch norm makes a deep sigmoid net train better than no normalization" in table
    assert "\nBest is **batch_after**" in md  # the takeaway opens the study's section too


def test_not_run_is_grey_and_a_quick_lab_is_a_preview_everywhere(tmp_path, monkeypatch):
    titles = []
    real_save = lab_report._save
    monkeypatch.setattr(
        lab_report, "_save", lambda fig, path: titles.append(fig.axes[0].get_title()) or real_save(fig, path)
    )
    command = "tricklab lab norm --dataset mnist1d --seeds 4 --quick"
    lab = write_lab(tmp_path / "lab", command, pending=("layer", "weight"))
    page = build_report(lab).read_text()
    assert '<td class="not-run">not run</td>' in page and '<li class="not-run">layer: not run yet</li>' in page
    assert '<td class="undecided">not run' not in page
    section = page[page.index('<h2 id="norm-mnist1d">') :]
    assert section.startswith('<h2 id="norm-mnist1d">norm on mnist1d <span class="preview">preview (--quick)</span>')
    findings = page[page.index('id="findings"') : page.index('<h2 id="norm-mnist1d">')]
    assert findings.count("preview (--quick)") >= 3  # the warning, the table row, the takeaway
    assert titles and all(t.endswith("\npreview (--quick): not the study's result") for t in titles)
    md = build_markdown(lab, tmp_path / "results.md").read_text()
    assert "> **Preview:** norm on mnist1d ran with --quick" in md
    assert "> **Preview:** this study ran with --quick" in md
    summary = md[md.index("## Summary") : md.index("## norm on mnist1d")]
    assert summary.count("| [norm on mnist1d](#norm-on-mnist1d) — *preview (--quick)* |") == 5
    assert "| layer | 0 |" in md and "| not run |" in md and "**not run**" not in md


def test_exact_configs_show_the_threads_the_runs_used(tmp_path):
    lab = write_lab(tmp_path / "lab", "tricklab lab norm", asked_threads=1, threads=2)
    page = build_report(lab).read_text()
    configs = page.split("<summary>Exact configs")[1].split("</pre>")[0]
    assert configs.count("train.threads: 2 (the study asked for 1)") == 6
    lab = write_lab(tmp_path / "lab2", "tricklab lab norm", threads=1)
    configs = build_report(lab).read_text().split("<summary>Exact configs")[1].split("</pre>")[0]
    assert configs.count("train.threads: 1\n") == 6


def test_a_study_where_nothing_learned_names_no_best_variant():
    """Every comparison "no signal" (each arm at chance or diverged): the findings say nothing was learned instead of
    naming the highest mean at chance as the best variant."""
    from tricklab.lab.analysis import analyse
    from tricklab.lab.store import RunRow
    from tricklab.report.findings import SILENT, findings_of, summary_rows, takeaway, takeaway_html

    def row(variant, seed, acc):
        metrics = {"test_acc": acc, "best_val_acc": acc, "wall_time_s": 1.0, "test_prior_acc": 0.1}
        history = [{"epoch": 1, "val_acc": acc, "val_loss": 2.3}]
        return RunRow("s", variant, seed, "mnist1d", "0" * 16, {}, "done", metrics, history, None, 1, 0.0, 1.0)

    spec = {
        "name": "s",
        "baseline": "none",
        "variants": ["none", "clip"],
        "baselines": {"none": "none", "clip": "none"},
        "overrides": {},
        "margin": 1.0,
        "seeds": 3,
    }
    flat = [row(v, s, 0.1 + 0.001 * s + (0.002 if v == "clip" else 0)) for v in ("none", "clip") for s in range(3)]
    f = findings_of(analyse("s", "mnist1d", spec, flat))
    assert f.silent
    assert SILENT in takeaway(f) and "best is" not in takeaway(f) and "best is" not in takeaway_html(f)
    assert summary_rows([f])[0][1] == "none: nothing learned"
    from tricklab.report.markdown import _takeaway

    assert "nothing learned" in _takeaway(f) and "best" not in _takeaway(f).split("(")[0]
    learned = [row(v, s, (0.1 if v == "none" else 0.6) + 0.01 * s) for v in ("none", "clip") for s in range(3)]
    g = findings_of(analyse("s", "mnist1d", spec, learned))
    assert not g.silent and "best is clip" in takeaway(g)
