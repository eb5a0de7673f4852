"""SIGTERM, SIGHUP and SIGINT on a running ``tricklab lab``: workers stopped, one line, no process left behind.

A real lab (``python -m tricklab lab``, 2 worker processes) on a tiny synthetic study whose runs last seconds is
signalled once a run is running. Its process tree (workers and multiprocessing's resource tracker) is listed
with ``ps --ppid`` before the signal; afterwards every one of those processes must be gone, finished runs must
still be stored, and no row may be left ``running``: the interrupted runs are ``pending`` again, which a rerun
redoes. While it runs, a second lab and a report on the same folder are refused, naming it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tricklab.lab.lab as lab_module
from tricklab.cli.main import main
from tricklab.config import validate
from tricklab.lab.lab import LabInterrupted, LabOptions, run_key_hash
from tricklab.lab.store import Store
from tricklab.lab.studies import custom_study

STUDY = """
name: tiny
dataset: synthetic
base: {model: {depth: 1, width: 16}, data: {batch_size: 32}, train: {epochs: 400}, schedule: {name: constant}}
baseline: plain
variants:
  plain: {}
  dropout: {model.dropout: 0.3}
seeds: 2
"""


def rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT variant, seed, status, metrics, error FROM runs ORDER BY variant, seed").fetchall()
    finally:
        con.close()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from ``ps --ppid``."""
    found, todo = set(), [pid]
    while todo:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True).stdout
        children = {int(p) for p in out.split()}
        todo += children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:.0f} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_a_signal_stops_the_lab_keeps_finished_runs_and_leaves_no_process(sig, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    out, db = tmp_path / "lab", tmp_path / "lab" / "results.sqlite"
    argv = ["lab", "--config", str(study), "--out", str(out), "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TRICKLAB_DATA=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tricklab", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's signals would reach the whole group; here only we signal it
    )
    try:

        def running():
            try:
                return db.exists() and any(r[2] == "running" for r in rows(db))
            except sqlite3.OperationalError:  # the lab is still creating its tables
                return False

        wait_for(running, 120, "running run")

        def workers_and_tracker():
            tree = descendants(proc.pid)
            return tree if len(tree) >= 3 else None

        tree = wait_for(workers_and_tracker, 30, "2 workers and the resource tracker")

        assert main(argv) == 2  # the folder is the running lab's
        assert f"is in use by pid {proc.pid} (tricklab lab --config" in capsys.readouterr().err
        assert main(["report", str(out)]) == 2
        assert f"is in use by pid {proc.pid}" in capsys.readouterr().err

        before = {(r[0], r[1]): r for r in rows(db) if r[2] == "done"}
        os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    name = signal.Signals(sig).name
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr + stdout and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: lab stopped by {name}: ")
    assert "marked unfinished" in lines[0] and "worker processes stopped; rerun the same command" in lines[0]

    wait_for(lambda: not any(alive(p) for p in tree), 10, "exit of every worker and of the resource tracker")

    after = rows(db)
    assert len(after) == 4 and {r[2] for r in after} <= {"done", "pending"}
    stopped = [r for r in after if r[2] == "pending" and r[4] and name in r[4]]
    assert stopped, after  # at least the run that was running when the signal came
    for key, r in before.items():  # finished runs kept as they were
        assert next(a for a in after if (a[0], a[1]) == key) == r
    for r in after:
        if r[2] == "done":
            assert 0 <= json.loads(r[3])["test_acc"] <= 1
    assert not (out / ".tricklab.lock").exists()


def fake_run_then_stop(config):
    """An in-process run function: the first run (the wider: the lab starts the longest first) finishes at once,
    the second (width 8) is stopped by SIGTERM."""
    if config["model"]["width"] == 8:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises here
    return {"test_acc": 0.5}, [{"epoch": 1, "val_acc": 0.5}], run_key_hash(validate(config))


def test_a_signal_stops_an_in_process_lab_too(tmp_path, monkeypatch):
    """Plugins that workers cannot import run in the lab's own process: a signal stops that run the same way."""
    study, _, _ = custom_study(
        {
            "name": "tiny",
            "dataset": "synthetic",
            "variants": {"a": {"model.width": 16}, "b": {"model.width": 8}},
        }  # a runs first: the longer
    )
    monkeypatch.setattr(lab_module, "plugins_for_workers", lambda planned: ((), "a test says so"))
    with pytest.raises(LabInterrupted) as e:
        lab_module.run_lab([study], LabOptions(seeds=1), tmp_path / "lab", fn=fake_run_then_stop)
    assert e.value.exit_code == 143
    assert str(e.value).startswith("lab stopped by SIGTERM: 1 finished run kept, 1 running run marked unfinished, 0 ")
    assert "worker processes" not in str(e.value)  # there were none
    with Store(tmp_path / "lab" / "results.sqlite") as store:
        got = {r.variant: (r.status, r.error) for r in store.rows()}
    assert got["a"] == ("done", None) and got["b"][0] == "pending" and "stopped by SIGTERM" in got["b"][1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
