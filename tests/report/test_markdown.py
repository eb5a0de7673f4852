"""The Markdown report a lab publishes (``tricklab report DIR --markdown FILE``) and the sessions it is built from.

Labs are written by hand into the database (no training): every number on the page must be the one the terminal
table shows, the plots must be files linked by relative paths, and the same database must give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess

import pytest

from tricklab.cli import lab_cmd
from tricklab.cli.main import main
from tricklab.lab import machine
from tricklab.lab.analysis import analyse
from tricklab.lab.lab import DB_NAME, LabOptions, plan, run_key_hash, study_spec
from tricklab.lab.machine import machine_info
from tricklab.lab.store import Store, StoreError
from tricklab.lab.studies import custom_study
from tricklab.report.lab_report import OUTCOME_COLUMN, table_rows
from tricklab.report.markdown import LAB_FLAGS, build_markdown, reproduce_command

COMMAND = "tricklab lab all --dataset synthetic --seeds 4 --out labs/synthetic"
MACHINE = {
    "cpu": "Test CPU 9000",
    "cores": 8,
    "ram_gib": 31.3,
    "os": "Linux-test",
    "python": "3.11.2",
    "torch": "2.13.0+cpu",
    "tricklab": "0.1.0",
    "git_commit": "0123456789abcdef0123",
    "git_dirty": False,
}
T0 = 1_714_550_400.0  # 2024-05-01 08:00 UTC
# test accuracy on seeds 0–3: `wide` is clearly above `plain`, `same` within ±0.05 pp of it, `noisy` undecided
ACC = {
    "plain": [0.900, 0.910, 0.905, 0.895],
    "wide": [0.950, 0.962, 0.953, 0.946],
    "same": [0.9002, 0.9098, 0.9051, 0.8949],
    "noisy": [0.930, 0.880, 0.925, 0.885],
}


def write_lab(out, studies=("tiny", "other"), command=COMMAND, signal=True):
    """A lab folder whose database holds ``studies`` with every run done, made by hand (no training)."""
    raws = [
        {
            "name": "tiny",
            "doc": "A tiny study.\n\nIt has | pipes | in its text.",
            "dataset": "synthetic",
            "base": {"model": {"depth": 1, "width": 8}},
            "baseline": "plain",
            "variants": {
                "plain": {},
                "wide": {"model.width": 16},
                "same": {"model.dropout": 0.1},
                "noisy": {"model.dropout": 0.2},
            },
        },
        {
            "name": "other",
            "dataset": "synthetic",
            "base": {"model": {"depth": 1, "width": 8}},
            "baseline": "plain",
            "variants": {"plain": {}, "wide": {"model.width": 16}},
        },
    ]
    out.mkdir(parents=True, exist_ok=True)
    opts = LabOptions(seeds=4)
    with Store(out / DB_NAME) as store:
        for raw in (r for r in raws if r["name"] in studies):
            study, _, _ = custom_study(raw)
            for p in plan([study], opts):
                spec = study_spec(study, p.dataset, opts) | {"init_signal": signal and study.name == "tiny"}
                store.save_study(study.name, p.dataset, spec, command)
                for key, cfg in p.configs.items():
                    _, variant, seed, _ = key
                    h = run_key_hash(cfg)
                    store.ensure(*key, config=cfg.to_dict(), config_hash=h)
                    acc = ACC[variant][seed]
                    history = [{"epoch": 1, "val_acc": acc - 0.1}, {"epoch": 2, "val_acc": acc - 0.01}]
                    metrics = {"test_acc": acc, "best_val_acc": acc - 0.01, "wall_time_s": 10.0 + seed}
                    store.mark_done(key, metrics, history, h)
                    if spec["init_signal"] and seed == 0:
                        store.save_signal(*key[:2], key[3], h, {"forward_std": [1.0, 0.5, 0.25]})
    return out


def add_sessions(out):
    with Store(out / DB_NAME) as store:
        store.record_session(COMMAND, T0, 125.0, 20, MACHINE)
        store.record_session(COMMAND, T0 + 86400, 75.4, 4, MACHINE)


def damage(out, statement):
    con = sqlite3.connect(out / DB_NAME)
    try:
        con.execute(statement)
        con.commit()
    finally:
        con.close()


def stats(out):
    with Store(out / DB_NAME) as store:
        return {
            study: analyse(study, dataset, spec, store.rows(study, dataset))
            for study, dataset, spec, _ in store.studies()
        }


@pytest.fixture
def lab(tmp_path):
    out = write_lab(tmp_path / "lab")
    add_sessions(out)
    return out


@pytest.fixture
def small_lab(tmp_path):
    """One study of one comparison (two plots: keeps the tests that render it fast)."""
    out = write_lab(tmp_path / "lab", studies=("other",))
    add_sessions(out)
    return out


def test_the_page_shows_every_study_with_the_terminal_tables_numbers(lab, tmp_path):
    page = build_markdown(lab, tmp_path / "docs" / "results.md")
    assert page == tmp_path / "docs" / "results.md"
    text = page.read_text()
    assert text.startswith("# tricklab results: synthetic\n")
    for name, s in stats(lab).items():
        assert f"\n## {name} on synthetic\n" in text
        for v, row in zip(s.variants, table_rows(s), strict=True):
            cells = list(row)
            if v.decision and v.decision.outcome != "undecided":
                cells[OUTCOME_COLUMN] = f"**{cells[OUTCOME_COLUMN]}**"
            assert "| " + " | ".join(cells) + " |" in text, row
            if v.comparison:
                assert f"\n- {v.verdict}\n" in text
                assert f"| {v.name} vs plain | {row[3]} |" in text  # the summary table, same Δ cell
    outcomes = {v.name: v.decision.outcome for v in stats(lab)["tiny"].variants if v.decision}
    assert outcomes == {"wide": "better", "same": "equivalent", "noisy": "undecided"}
    assert "**better**" in text and "**equivalent**" in text and "undecided (≈" in text
    assert "margin of practical equivalence (±0.5 pp here)" in text
    assert "Holm's correction over the study's 3 comparisons" in text and "inside ±0.5 pp" in text
    assert "It has \\| pipes \\| in its text." not in text and "It has | pipes | in its text." in text  # prose
    # plots: PNG files beside the page, linked relatively
    plots = tmp_path / "docs" / "results-plots"
    for png in (
        "tiny-synthetic-curves.png",
        "tiny-synthetic-test-acc.png",
        "tiny-synthetic-signal.png",
        "other-synthetic-curves.png",
        "other-synthetic-test-acc.png",
    ):
        assert (plots / png).read_bytes().startswith(b"\x89PNG") and f"](results-plots/{png})" in text
    assert not (plots / "other-synthetic-signal.png").exists() and not list(plots.glob("*.part*"))
    # rerun exactly one study: the study list replaced, the options kept
    assert "**Reproduce:** `tricklab lab tiny --dataset synthetic --seeds 4 --out labs/synthetic`" in text
    assert "**Reproduce:** `tricklab lab other --dataset synthetic --seeds 4 --out labs/synthetic`" in text
    # how the lab ran: its command, the machine, the wall time summed over its sessions with their dates (UTC)
    assert f"- **Produced by:** `{COMMAND}`" in text
    assert (
        "- **Machine:** Test CPU 9000, 8 cores, 31.3 GiB RAM; Linux-test; Python 3.11.2, torch 2.13.0+cpu, "
        "tricklab 0.1.0; commit 0123456789ab\n"
    ) in text
    assert "- **Wall time:** 3 min 20 s over 2 sessions (24 runs trained), 2024-05-01 to 2024-05-02 (UTC)" in text
    assert "| 2024-05-01 08:00 | " in text


def test_regenerating_gives_the_same_bytes_and_drops_stale_plots(tmp_path):
    lab = write_lab(tmp_path / "lab", studies=("tiny",))
    page = build_markdown(lab, tmp_path / "results.md")
    plots = tmp_path / "results-plots"
    before = {p.name: p.read_bytes() for p in [page, *plots.iterdir()]}
    (plots / "gone-synthetic-curves.png").write_bytes(b"old")
    (plots / "notes.txt").write_text("mine")
    build_markdown(lab, tmp_path / "results.md")
    assert {p.name: p.read_bytes() for p in [page, *plots.iterdir()] if p.name != "notes.txt"} == before
    assert (plots / "notes.txt").read_text() == "mine"


def test_cli_writes_html_and_markdown(small_lab, tmp_path, capsys):
    lab = small_lab
    target = tmp_path / "new" / "deeper" / "page.md"
    assert main(["report", str(lab), "--markdown", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"markdown: {target}\n" in out and "report: " in out
    assert target.is_file() and (target.parent / "page-plots" / "other-synthetic-curves.png").is_file()
    assert (lab / "report.html").is_file()
    assert main(["report", str(lab), "--markdown"]) == 0  # default: DIR/results.md
    assert f"markdown: {lab / 'results.md'}" in capsys.readouterr().out
    assert (lab / "results-plots" / "other-synthetic-test-acc.png").is_file()


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("folder", "is a folder; name the Markdown file"),
        ("under-a-file", "is a file, not a folder"),
        ("no-lab", "holds no lab results"),
    ],
)
def test_cli_bad_markdown_input_is_one_line_and_exit_2(lab, tmp_path, capsys, where, fragment):
    (tmp_path / "afile").write_text("x")
    lab_dir = tmp_path / "nowhere" if where == "no-lab" else lab
    target = {"folder": tmp_path, "under-a-file": tmp_path / "afile" / "r.md"}.get(where, tmp_path / "r.md")
    assert main(["report", str(lab_dir), "--markdown", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "r.md").exists()


def test_a_lab_from_before_sessions_were_recorded_still_reports(tmp_path):
    out = write_lab(tmp_path / "lab", studies=("tiny",), signal=False)
    damage(out, "DROP TABLE sessions")  # as written by a tricklab without sessions
    text = build_markdown(out, tmp_path / "r.md").read_text()
    assert "- **Wall time:** not recorded" in text and "- **Machine:** not recorded" in text
    assert f"- **Produced by:** `{COMMAND}`" in text and "## tiny on synthetic" in text
    assert not (tmp_path / "r-plots" / "tiny-synthetic-signal.png").exists()
    with Store(out / DB_NAME) as store:  # the table is there now, empty, and takes sessions
        assert store.sessions() == []
        store.record_session("tricklab lab tiny", T0, 1.5, 2, {})
        assert [s["runs_done"] for s in store.sessions()] == [2]


def test_sessions_round_trip_oldest_first(tmp_path):
    with Store(tmp_path / DB_NAME) as store:
        store.record_session("tricklab lab b", T0 + 10, 3.25, 7, MACHINE)
        store.record_session("", T0, 0.0, 0, {"cpu": "x"})
        got = store.sessions()
    assert got == [
        {"command": "", "started_at": T0, "wall_time_s": 0.0, "runs_done": 0, "machine": {"cpu": "x"}},
        {"command": "tricklab lab b", "started_at": T0 + 10, "wall_time_s": 3.25, "runs_done": 7, "machine": MACHINE},
    ]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((1, T0, 1.0, 1, {}), "command: expected a string"),
        (("c", T0, float("nan"), 1, {}), "wall_time_s: expected a finite number"),
        (("c", T0, 1.0, -1, {}), "runs_done: expected a count"),
        (("c", T0, 1.0, 1, {"cpu": ["a"]}), "machine.cpu: expected a string, number or null"),
    ],
)
def test_record_session_refuses_bad_arguments_and_writes_nothing(tmp_path, args, fragment):
    with Store(tmp_path / DB_NAME) as store:
        with pytest.raises(ValueError, match=fragment):
            store.record_session(*args)
        assert store.sessions() == []


@pytest.mark.parametrize(
    "column, value, fragment",
    [
        ("machine", "'{'", "bad JSON"),
        ("machine", "'[1]'", "machine: expected a JSON object"),
        ("machine", "'{\"cpu\": {}}'", "machine.cpu: expected a string, number or null"),
        ("command", "X'41'", "command: expected a string"),
        ("wall_time_s", "'long'", "wall_time_s: expected a finite number"),
        ("runs_done", "-3", "runs_done: expected a count"),
    ],
)
def test_a_damaged_session_row_is_one_line(lab, column, value, fragment):
    damage(lab, f"UPDATE sessions SET {column} = {value} WHERE id = 2")
    with Store(lab / DB_NAME) as store, pytest.raises(StoreError) as e:
        store.sessions()
    msg = str(e.value)
    assert "\n" not in msg and "session 2 is not what tricklab wrote" in msg and fragment in msg


def test_report_on_a_damaged_session_row_is_one_line_and_writes_no_page(small_lab, tmp_path, capsys):
    lab = small_lab
    damage(lab, "UPDATE sessions SET machine = '{' WHERE id = 1")
    assert main(["report", str(lab), "--markdown", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "session 1 is not what tricklab wrote (bad JSON" in err
    assert "move it away to start afresh" in err and not (tmp_path / "r.md").exists()


def test_a_lab_without_studies_gives_a_short_page(tmp_path):
    Store(tmp_path / DB_NAME).close()
    text = build_markdown(tmp_path, tmp_path / "r.md").read_text()
    assert text.startswith("# tricklab results\n") and text.endswith("No study is recorded in this lab yet.\n")


@pytest.mark.parametrize(
    "command, expected",
    [
        ("tricklab lab all", "tricklab lab tiny"),
        ("tricklab lab dropout tiny bn --seeds 5 --quick", "tricklab lab tiny --seeds 5 --quick"),
        ("tricklab lab --quick all -d mnist1d --workers=2", "tricklab lab --quick tiny -d mnist1d --workers=2"),
        ("tricklab lab -dmnist1d all -o 'my labs/x'", "tricklab lab -dmnist1d tiny -o 'my labs/x'"),
        ("tricklab lab --config study.yaml --seeds 3", "tricklab lab --config study.yaml --seeds 3"),
        ("tricklab lab 'unbalanced", "tricklab lab 'unbalanced"),
        ("python train.py", "python train.py"),
        ("", ""),
    ],
)
def test_reproduce_names_the_single_study_and_keeps_the_options(command, expected):
    assert reproduce_command(command, "tiny") == expected


def test_the_options_without_a_value_are_those_of_the_lab_command():
    sub = argparse.ArgumentParser().add_subparsers()
    lab_cmd.add_parser(sub)
    no_value = {s for a in sub.choices["lab"]._actions if a.option_strings and a.nargs == 0 for s in a.option_strings}
    assert no_value == LAB_FLAGS


def test_machine_info_is_json_ready_and_never_fails(monkeypatch, tmp_path):
    info = machine_info()
    assert json.loads(json.dumps(info)) == info
    assert {"cores", "os", "python", "tricklab"} <= set(info) and isinstance(info["cores"], int)

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(subprocess, "run", no_git)
    bare = machine_info()
    assert "git_commit" not in bare and {"cores", "python"} <= set(bare)
    with Store(tmp_path / DB_NAME) as store:
        store.record_session("tricklab lab x", T0, 1.0, 1, bare)
        assert store.sessions()[0]["machine"] == bare
