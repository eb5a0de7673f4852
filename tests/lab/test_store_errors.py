"""The results database tells the truth or refuses in one line.

A corrupt, truncated or foreign ``results.sqlite``, or a row whose JSON the lab did not write, gives ``lab`` and
``report`` one line naming the file and how to start afresh (exit 2, no traceback). A result is stored only
against the config it was computed from. A study cannot train on one dataset while recording another.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.lab.lab import DB_NAME, LabOptions, plan, run_key_hash, run_lab, study_spec
from tricklab.lab.store import Store, StoreError
from tricklab.lab.studies import custom_study, load_custom_study

STUDY = """
name: tiny
dataset: synthetic
base: {model: {depth: 1, width: 8}, train: {epochs: 1}}
baseline: plain
variants:
  plain: {}
  wide: {model.width: 16}
%s
seeds: 2
"""


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]


@pytest.fixture
def lab(tmp_path):
    """A lab folder whose database holds the study ``tiny`` with every run done (made by hand, no training)."""
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY % "")
    study, seeds, _ = load_custom_study(str(study_file))
    opts = LabOptions(seeds=seeds)
    out = tmp_path / "lab"
    out.mkdir()
    with Store(out / DB_NAME) as store:
        for p in plan([study], opts):
            store.save_study(study.name, p.dataset, study_spec(study, p.dataset, opts), "tricklab lab")
            for key, cfg in p.configs.items():
                store.ensure(*key, config=cfg.to_dict(), config_hash=run_key_hash(cfg))
                history = [{"epoch": 1, "val_acc": 0.5 + key[2] / 10}]
                store.mark_done(key, {"test_acc": 0.6 + key[2] / 10}, history, run_key_hash(cfg))
    return study_file, out


def sql(db: Path, statement: str) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(statement)
        con.commit()
    finally:
        con.close()


def not_a_database(db: Path) -> None:
    db.write_text("name,score\nada,3\n")


def truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def a_folder(db: Path) -> None:
    db.unlink()
    db.mkdir()


def foreign(db: Path) -> None:
    db.unlink()
    sql(db, "CREATE TABLE runs (id INTEGER, note TEXT)")


def row(column: str, value: str):
    def damage(db: Path) -> None:
        sql(db, f"UPDATE runs SET {column} = '{value}' WHERE variant = 'wide' AND seed = 1")

    return damage


def spec(value: str):
    def damage(db: Path) -> None:
        sql(db, f"UPDATE studies SET spec = '{value}'")

    return damage


DAMAGE = [
    ("not-a-database", not_a_database, "not a readable tricklab results database"),
    ("truncated", truncated, "not a readable tricklab results database"),
    ("a-folder", a_folder, "is a folder"),
    ("foreign-tables", foreign, "not a readable tricklab results database"),
    ("bad-json-metrics", row("metrics", '{"test_acc": 0.9'), "run tiny/wide/1/synthetic is not what tricklab wrote"),
    ("bad-json-history", row("history", "[{]"), "bad JSON"),
    ("bad-json-config", row("config", "nope"), "bad JSON"),
    ("metrics-a-list", row("metrics", "[1, 2]"), "metrics: expected a JSON object"),
    ("test-acc-a-string", row("metrics", '{"test_acc": "high"}'), "metrics.test_acc: expected a number"),
    ("history-not-rows", row("history", '{"epoch": 1}'), "history: expected a JSON list of objects"),
    ("bad-json-spec", spec("{"), "study tiny/synthetic is not what tricklab wrote"),
    ("spec-without-variants", spec('{"baseline": "plain"}'), "spec.variants"),
]


@pytest.mark.parametrize("damage, fragment", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_report_on_a_damaged_database_is_one_line(lab, damage, fragment, capsys):
    _, out = lab
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    damage(out / DB_NAME)
    assert main(["report", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out / DB_NAME) in line and "move it away to start afresh" in line
    assert fragment in line


@pytest.mark.parametrize(
    "damage",
    [not_a_database, truncated, a_folder, foreign, row("metrics", "{"), row("history", "[1]")],
    ids=["not-a-database", "truncated", "a-folder", "foreign-tables", "bad-json-metrics", "history-not-rows"],
)
def test_lab_on_a_damaged_database_is_one_line_and_runs_nothing(lab, damage, capsys):
    study_file, out = lab
    damage(out / DB_NAME)
    assert main(["lab", "--config", str(study_file), "--out", str(out), "--workers", "1"]) == 2
    line = one_error_line(capsys)
    assert str(out / DB_NAME) in line and "move it away to start afresh" in line
    assert not (out / "report.html").exists()


def test_lab_out_naming_a_file_is_one_line(lab, tmp_path, capsys):
    study_file, _ = lab
    (tmp_path / "taken").write_text("mine")
    assert main(["lab", "--config", str(study_file), "--out", str(tmp_path / "taken")]) == 2
    assert f"{tmp_path / 'taken'}: is a file, not a folder" in one_error_line(capsys)
    assert (tmp_path / "taken").read_text() == "mine"
    assert main(["lab", "--config", str(study_file), "--out", str(tmp_path / "taken" / "sub")]) == 2
    assert "taken" in one_error_line(capsys)


def test_a_result_is_stored_only_against_the_config_it_was_computed_from(lab):
    _, out = lab
    key = ("tiny", "plain", 0, "synthetic")
    with Store(out / DB_NAME) as store:
        held = store.get(*key).config_hash
        error = store.mark_done(key, {"test_acc": 0.99}, [], "0123456789abcdef")
        got = store.get(*key)
        assert error is not None and got.status == "failed" and got.metrics["test_acc"] != 0.99
        assert "computed from config 0123456789abcdef" in got.error and f"the row holds config {held}" in got.error
        assert store.mark_done(key, {"test_acc": 0.42}, [], held) is None
        assert store.get(*key).status == "done" and store.get(*key).metrics["test_acc"] == 0.42


def wrong_hash(config):
    """A worker's run function that reports a config other than the one it was given."""
    return {"test_acc": 0.5}, [{"epoch": 1, "val_acc": 0.5}], "ffffffffffffffff"


def test_the_lab_refuses_a_result_for_another_config(tmp_path):
    study, _, _ = custom_study({"name": "tiny", "dataset": "synthetic", "variants": {"plain": {}}})
    result = run_lab([study], LabOptions(seeds=1, workers=1), tmp_path / "lab", fn=wrong_hash)
    assert result.done == 0 and result.failed == 1
    assert "result not stored: it was computed from config ffffffffffffffff" in result.failures[0][1]
    with Store(tmp_path / "lab" / DB_NAME) as store:
        assert [r.status for r in store.rows()] == ["failed"]


@pytest.mark.parametrize(
    "extra, argv, fragment",
    [
        ("", ["--dataset", "mnist1d"], None),  # no conflict: the --dataset one is used
        ("  other: {data.name: mnist1d}", [], "variant 'other': data.name = 'mnist1d' conflicts with the study's"),
        ("  other: {data: {name: mnist1d}}", ["--dataset", "synthetic"], "conflicts with --dataset 'synthetic'"),
    ],
    ids=["none", "variant", "variant-nested"],
)
def test_a_study_setting_another_dataset_is_refused(tmp_path, capsys, extra, argv, fragment):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY % extra)
    study, _, _ = load_custom_study(str(study_file))
    dataset = argv[1] if argv else None
    if fragment is None:
        planned = plan([study], LabOptions(dataset=dataset, seeds=1))
        assert {cfg.data.name for p in planned for cfg in p.configs.values()} == {dataset}
        return
    assert main(["lab", "--config", str(study_file), "--out", str(tmp_path / "lab"), *argv]) == 2
    line = one_error_line(capsys)
    assert "study 'tiny'" in line and fragment in line and "must not set data.name" in line
    assert not (tmp_path / "lab").exists()


def test_a_study_base_setting_another_dataset_is_refused(tmp_path, capsys):
    raw = {"name": "b", "dataset": "synthetic", "base": {"data": {"name": "mnist1d"}}, "variants": {"v": {}}}
    study, _, _ = custom_study(raw)
    with pytest.raises(Exception, match="study 'b', variant 'v': data.name = 'mnist1d' conflicts with the study's "):
        plan([study], LabOptions(seeds=1))


def test_store_error_is_a_one_line_tricklab_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"\x00" * 10000)
    with pytest.raises(StoreError) as e:
        Store(tmp_path / DB_NAME)
    assert "\n" not in str(e.value) and e.value.exit_code == 2
