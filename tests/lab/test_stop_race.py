"""A stop signal can land between the database marking a run "running" and the lab knowing it started; the run
must still go back to pending (a rerun redoes it), never stay "running" in the database."""

from __future__ import annotations

import signal

import pytest

import tricklab.lab.lab as lab_mod
from tricklab.lab.lab import DB_NAME, LabInterrupted, LabOptions, _Stop, run_lab
from tricklab.lab.store import Store
from tricklab.lab.studies import custom_study

FAKE = {"name": "fake", "dataset": "synthetic", "base": {"model.depth": 1, "model.width": 8}, "baseline": "plain"}
FAKE["variants"] = {"plain": {}, "wide": {"model.width": 9}}


class StoppedMidStart:
    """An executor stopped while starting its first task: the database already says "running" (its row was
    updated) when the signal arrives, before the lab's own bookkeeping."""

    slots, stopped = 1, "worker processes stopped; "

    def __init__(self, out):
        self.out = out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def describe(self) -> str:
        return "a test executor"

    def run(self, tasks, on_event, poll_s=0.2, refill=None):
        with Store(self.out / DB_NAME) as store:
            store.mark_running(tasks[0].key)  # the database knows; the schedule does not yet
        raise _Stop(signal.SIGTERM)


def test_a_run_whose_start_a_signal_interrupted_goes_back_to_pending(tmp_path, monkeypatch):
    study, _, _ = custom_study(FAKE)
    out = tmp_path / "lab"
    monkeypatch.setattr(lab_mod, "executor", lambda opts, lab, fn: StoppedMidStart(out))
    said = r"0 finished runs kept, 1 running run marked unfinished, 3 not started"
    with pytest.raises(LabInterrupted, match=said) as stopped:
        run_lab([study], LabOptions(seeds=2, workers=1), out, fn=lambda config: None)
    assert stopped.value.exit_code == 143
    with Store(out / DB_NAME) as store:
        statuses = [r.status for r in store.rows()]
    assert statuses == ["pending"] * 4  # none left "running"
