"""The lab end to end on synthetic data: report contents, skip/resume after a kill, failure isolation."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.lab.lab import LabOptions, run_lab
from tricklab.lab.store import Store
from tricklab.lab.studies import load_custom_study

STUDY = """
name: tiny
doc: A tiny study on synthetic data.
dataset: synthetic
base: {model: {depth: 1, width: 16}, data: {batch_size: 64}, train: {epochs: %(epochs)d}, schedule: {name: constant}}
baseline: plain
variants:
  plain: {}
  dropout: {model.dropout: 0.3}
  wide: {model.width: 64}
%(extra)s
seeds: %(seeds)d
target_val_acc: 0.5
"""


def write_study(tmp_path, epochs=2, seeds=2, extra=""):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY % {"epochs": epochs, "seeds": seeds, "extra": extra})
    return path


def rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT variant, seed, status, metrics, finished_at FROM runs ORDER BY variant, seed"
        ).fetchall()
    finally:
        con.close()


def test_lab_end_to_end_report_has_every_variant_and_rerun_skips(tmp_path, capsys):
    study = write_study(tmp_path)
    out = tmp_path / "lab"
    assert main(["lab", "--config", str(study), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    first = rows(out / "results.sqlite")
    assert len(first) == 6 and all(r[2] == "done" for r in first)
    html = (out / "report.html").read_text()
    for name in ("plain", "dropout", "wide"):
        assert f"<td>{name}</td>" in html
    assert "data:image/png;base64," in html and "Reproduce:" in html
    assert "dropout: " in printed and "report: " in printed
    # every comparison ends with one of the five outcomes, coloured, and the report says how they were decided (two
    # epochs leave plain and dropout at chance on some machines: "no signal", out of Holm's family)
    outcomes = ("better", "worse", "equivalent", "undecided", "no signal")
    for name in ("dropout", "wide"):
        assert any(line.strip().startswith(tuple(f"{name}: {o}" for o in outcomes)) for line in printed.splitlines())
        assert sum(f'<td class="{o.replace(" ", "-")}">' in html for o in outcomes) >= 1
    rule = html.replace("&#x27;", "'")
    assert re.search(r"Holm's correction over the study's [12] comparisons? with a t-test", rule)
    assert "inside ±0.5 pp" in rule
    for png in ("tiny-synthetic-curves.png", "tiny-synthetic-test-acc.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    # rerunning the same command recomputes nothing
    assert main(["lab", "--config", str(study), "--out", str(out), "--workers", "2"]) == 0
    assert "0 runs done, 6 already done" in capsys.readouterr().out
    assert rows(out / "results.sqlite") == first
    # a changed config never reuses an old result
    study.write_text(study.read_text().replace("batch_size: 64", "batch_size: 65"))
    assert main(["lab", "--config", str(study), "--out", str(out)]) == 0
    second = rows(out / "results.sqlite")
    assert len(second) == 6 and all(a[4] != b[4] for a, b in zip(first, second, strict=True))


def test_report_rerenders_from_the_database_alone(tmp_path, capsys):
    out = tmp_path / "lab"
    assert main(["lab", "--config", str(write_study(tmp_path, seeds=2)), "--out", str(out)]) == 0
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "<td>wide</td>" in (out / "report.html").read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "holds no lab results" in capsys.readouterr().err


def test_a_failing_variant_is_recorded_and_the_others_complete(tmp_path, capsys):
    extra = "  broken: {model.name: inception, model.residual: true}"
    out = tmp_path / "lab"
    code = main(["lab", "--config", str(write_study(tmp_path, seeds=2, extra=extra)), "--out", str(out)])
    assert code == 1
    got = rows(out / "results.sqlite")
    assert sorted(r[2] for r in got if r[0] == "broken") == ["failed", "failed"]
    assert all(r[2] == "done" for r in got if r[0] != "broken") and len(got) == 8
    with Store(out / "results.sqlite") as store:
        err = store.get("tiny", "broken", 0, "synthetic").error
    assert "inception has no residual variant" in err
    assert "failed: tiny/broken/0/synthetic" in capsys.readouterr().err


def crash_or_raise(config):
    """A run function for the worker pool: one variant raises, one kills its worker process."""
    from tricklab.lab.runner import execute

    if config["model"]["width"] == 64:
        raise RuntimeError("boom")
    if config["model"]["dropout"] > 0:
        os._exit(3)
    return execute(config)


def test_a_crashed_worker_does_not_take_the_others_down(tmp_path):
    study, _, _ = load_custom_study(str(write_study(tmp_path, seeds=2)))
    result = run_lab([study], LabOptions(seeds=2, workers=2), tmp_path / "lab", fn=crash_or_raise)
    assert result.done == 2 and result.failed == 4
    errors = {key[1]: err for key, err in result.failures}
    assert "RuntimeError: boom" in errors["wide"]
    assert "worker process died (exit code 3)" in errors["dropout"]
    statuses = {(r[0], r[1]): r[2] for r in rows(tmp_path / "lab" / "results.sqlite")}
    assert statuses[("plain", 0)] == statuses[("plain", 1)] == "done"


def _lab_cmd(study, out):
    return [sys.executable, "-m", "tricklab", "lab", "--config", str(study), "--out", str(out), "--workers", "1"]


def test_killing_the_lab_mid_study_loses_no_finished_run(tmp_path, capsys):
    """A ``tricklab lab`` process and its workers SIGKILLed after two runs; the rerun and the uninterrupted lab it is
    compared with run in this process (what is on disk is all a rerun reads)."""
    study = write_study(tmp_path, epochs=6, seeds=2)
    out = tmp_path / "lab"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        _lab_cmd(study, out), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    db = out / "results.sqlite"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                if db.exists() and sum(r[2] == "done" for r in rows(db)) >= 2:
                    break
            except sqlite3.OperationalError:  # the lab is still creating its tables
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the lab finished no run in 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the lab and its workers, at once
        proc.wait()
    before = {(r[0], r[1]): r for r in rows(db) if r[2] == "done"}
    assert 2 <= len(before) < 6, "kill it mid-study"
    capsys.readouterr()
    assert main(_lab_cmd(study, out)[3:]) == 0, capsys.readouterr().err
    done = capsys.readouterr()
    after = rows(db)
    assert len(after) == 6 and all(r[2] == "done" for r in after)
    for r in after:
        if (r[0], r[1]) in before:
            assert r == before[(r[0], r[1])], "a finished run was recomputed"
    assert f"{6 - len(before)} runs done, {len(before)} already done, 0 failed" in done.out
    # same results as an uninterrupted lab
    ref = tmp_path / "ref"
    assert main(_lab_cmd(study, ref)[3:]) == 0, capsys.readouterr().err
    metric = {(r[0], r[1]): json.loads(r[3])["test_acc"] for r in after}
    assert metric == {(r[0], r[1]): json.loads(r[3])["test_acc"] for r in rows(ref / "results.sqlite")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lab"], "name the studies to run"),
        (["lab", "dropuot"], "did you mean 'dropout'"),
        (["lab", "dropout", "--seeds", "0"], "--seeds = 0"),
        (["lab", "dropout", "--dataset", "mnits"], "unknown dataset 'mnits'"),
    ],
)
def test_bad_lab_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not Path("labs").exists()


def test_a_diverging_variant_is_a_result_not_a_failure(tmp_path, capsys):
    extra = "  diverges: {optim.name: sgd, optim.lr: 1.0e+16, data.scale: none}  # the largest lr allowed"
    out = tmp_path / "lab"
    assert main(["lab", "--config", str(write_study(tmp_path, seeds=2, extra=extra)), "--out", str(out)]) == 0
    got = {(r[0], r[1]): (r[2], json.loads(r[3])) for r in rows(out / "results.sqlite")}
    status, metrics = got[("diverges", 0)]
    assert status == "done" and metrics["diverged"] is True
    assert "non-finite" in metrics["stop_reason"] and 0 <= metrics["test_acc"] <= 1
    assert "<td>2 (2 diverged)</td>" in (out / "report.html").read_text()
