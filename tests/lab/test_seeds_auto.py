"""``--seeds auto``: seeds are added only to undecided comparisons, at the sequential design's looks, up to the cap;
a rerun continues; the report and records carry the sequential outcomes. Runs are faked (no training)."""

import random

from tricklab.cli.main import main
from tricklab.lab.analysis import analyse, seeds_to_run
from tricklab.lab.lab import LabOptions, run_lab
from tricklab.lab.sequential import looks
from tricklab.lab.store import Store, config_key
from tricklab.lab.studies import custom_study

STUDY = {
    "name": "auto",
    "dataset": "synthetic",
    "base": {"model.depth": 1, "model.width": 8, "train.epochs": 1},
    "baseline": "plain",
    "variants": {
        "plain": {},
        "big": {"model.width": 9},  # +5 pp, sd 0.5: decided at the first look
        "same": {"model.width": 10},  # no effect, sd 0.05 pp ≪ the ±0.5 pp margin: equivalent early
        "noisy": {"model.width": 11},  # +0.5 pp, sd 3 pp: undecided up to the cap
    },
    "margin": 0.5,
}
EFFECT = {8: (0.0, 0.0), 9: (0.05, 0.005), 10: (0.0, 0.0005), 11: (0.005, 0.03)}  # width → (mean, sd) of Δ


def fake(config):
    """Test accuracy = 0.8 + a per-seed baseline noise + the variant's effect; no training."""
    from tricklab.config import validate

    cfg = validate(config)
    seed, width = cfg.train.seed, cfg.model.width
    base = 0.8 + random.Random(seed).gauss(0, 0.01)
    mean, sd = EFFECT[width]
    acc = base + mean + random.Random(seed * 100 + width).gauss(0, sd) if sd else base + mean
    metrics = {"test_acc": acc, "test_loss": 1 - acc, "best_val_acc": acc, "wall_time_s": 0.0}
    return metrics, [{"epoch": 1, "val_acc": acc, "val_loss": 1 - acc}], config_key(cfg.to_dict())


def seeds_by_variant(out):
    with Store(out / "results.sqlite") as store:
        rows = store.rows("auto", "synthetic")
    got: dict[str, list[int]] = {}
    for r in rows:
        if r.status == "done":
            got.setdefault(r.variant, []).append(r.seed)
    return {k: sorted(v) for k, v in got.items()}


def test_seeds_go_only_where_undecided_and_a_rerun_adds_nothing(tmp_path, capsys):
    study, _, _ = custom_study(STUDY)
    out = tmp_path / "lab"
    result = run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=2), out, fn=fake)
    seeds = seeds_by_variant(out)
    assert seeds["big"] == [0, 1, 2]  # decided at the first look
    assert seeds["noisy"] == list(range(10)) and seeds["plain"] == list(range(10))  # to the cap, with its baseline
    assert len(seeds["same"]) in looks(3, 10)  # stopped at a look
    assert result.done == sum(len(v) for v in seeds.values()) and result.failed == 0
    with Store(out / "results.sqlite") as store:
        spec = store.studies()[0][2]
        rows = store.rows("auto", "synthetic")
    assert spec["sequential"] == {"first": 3, "cap": 10}
    stats = analyse("auto", "synthetic", spec, rows)
    out_of = {v.name: v.decision for v in stats.variants if v.decision}
    assert out_of["big"].outcome == "better" and out_of["big"].decided_at == 3
    assert out_of["same"].outcome == "equivalent"
    assert out_of["noisy"].outcome == "undecided" and out_of["noisy"].cap == 10
    assert seeds_to_run(stats) == {}  # nothing left to run
    verdicts = {v.name: v.verdict for v in stats.variants}
    assert verdicts["big"].startswith("big: better at 3 seeds: +")
    assert "repeated 95% interval" in verdicts["big"] and "Holm" in verdicts["big"]
    assert "still undecided at the cap of 10 seeds" in verdicts["noisy"]
    # a rerun of the same lab finds everything done
    again = run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    assert again.done == 0 and again.skipped == result.done


def test_an_interrupted_auto_lab_continues_from_its_database(tmp_path):
    """A lab stopped after the first look (simulated: only 3 seeds were run, as a fixed lab) goes on from there."""
    study, _, _ = custom_study(STUDY)
    out = tmp_path / "lab"
    first = run_lab([study], LabOptions(seeds=3, workers=1), out, fn=fake)
    assert first.done == 12
    auto = run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    assert auto.skipped >= 12 and seeds_by_variant(out)["noisy"] == list(range(10))


def test_a_changed_config_redoes_the_seeds_an_earlier_auto_lab_added(tmp_path):
    study, _, _ = custom_study(STUDY)
    out = tmp_path / "lab"
    first = run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    changed, _, _ = custom_study({**STUDY, "base": {**STUDY["base"], "data.batch_size": 65}})
    again = run_lab([changed], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    assert again.skipped == 0 and again.done == first.done  # nothing reused, the same design redone
    with Store(out / "results.sqlite") as store:
        assert all(r.config["data"]["batch_size"] == 65 for r in store.rows("auto", "synthetic") if r.status == "done")


def test_a_fixed_seed_analysis_ignores_seeds_a_sequential_lab_added(tmp_path):
    study, _, _ = custom_study(STUDY)
    out = tmp_path / "lab"
    run_lab([study], LabOptions(seeds=3, max_seeds=10, workers=1), out, fn=fake)
    run_lab([study], LabOptions(seeds=3, workers=1), out, fn=fake)  # now a fixed 3-seed lab on the same database
    with Store(out / "results.sqlite") as store:
        spec, rows = store.studies()[0][2], store.rows("auto", "synthetic")
    stats = analyse("auto", "synthetic", spec, rows)
    assert all(v.seeds == [0, 1, 2] for v in stats.variants)
    assert not any(v.decision and v.decision.sequential for v in stats.variants)


def test_cli_seeds_auto_flags(tmp_path, capsys):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "variants": {"plain": {}, "wide": {"model.width": 32}}}))
    assert (
        main(["lab", "--config", str(path), "--seeds", "auto", "--max-seeds", "2", "--out", str(tmp_path / "a")]) == 2
    )
    assert "--max-seeds = 2: must be at least 3" in capsys.readouterr().err
    assert main(["lab", "--config", str(path), "--seeds", "many", "--out", str(tmp_path / "b")]) == 2
    assert "--seeds = 'many': expected a whole number or 'auto'" in capsys.readouterr().err
    assert main(["lab", "--config", str(path), "--seeds", "3", "--max-seeds", "5", "--out", str(tmp_path / "c")]) == 2
    assert "only with --seeds auto" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")
    # a real (tiny) sequential lab from the command line: the first look's 3 seeds at least, the outcomes printed
    assert (
        main(["lab", "--config", str(path), "--seeds", "auto", "--max-seeds", "5", "--out", str(tmp_path / "d")]) == 0
    )
    printed = capsys.readouterr().out
    assert "(repeated 95% interval)" in printed
    assert "Outcomes (--seeds auto, group-sequential)" in " ".join(printed.split())
    with Store(tmp_path / "d" / "results.sqlite") as store:
        n = {r.seed for r in store.rows("auto", "synthetic") if r.status == "done"}
    assert len(n) >= 3 and max(n) < 5


def test_run_lab_seeds_auto_records_where_each_was_decided(tmp_path, monkeypatch):
    import pytest

    import tricklab
    from tricklab.errors import TrickLabError

    with pytest.raises(TrickLabError, match="max_seeds = 2"):
        tricklab.run_lab(STUDY, seeds="auto", max_seeds=2, out=tmp_path / "x")
    with pytest.raises(TrickLabError, match="only with seeds='auto'"):
        tricklab.run_lab(STUDY, seeds=3, max_seeds=5, out=tmp_path / "y")
    small = {**STUDY, "variants": {"plain": {}, "wide": {"model.width": 32}}}
    lab = tricklab.run_lab(small, seeds="auto", max_seeds=4, out=tmp_path / "lab", progress=False)
    rec = next(r for r in lab.records if r["variant"] == "wide")
    assert rec["outcome"] in ("better", "worse", "equivalent", "undecided")
    assert rec["seeds"] in (3, 4)
    if rec["outcome"] != "undecided":
        assert rec["decided_at"] in (3, 4)
    assert rec["decision_ci_low"] <= rec["decision_ci_high"]
    with Store(tmp_path / "lab" / "results.sqlite") as store:
        assert "seeds='auto', max_seeds=4" in store.studies()[0][3]
