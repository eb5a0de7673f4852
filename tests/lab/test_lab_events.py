"""The lab speaks in types: run events and progress counts are frozen dataclasses, the pools are one Executor."""

from __future__ import annotations

import dataclasses

import pytest

from tricklab.lab.events import LabCounts, RunDone, RunFailed, RunKey, RunStarted
from tricklab.lab.lab import LabOptions, run_lab
from tricklab.lab.ray_executor import RayPool
from tricklab.lab.runner import Executor, InProcess, Task, WorkerPool
from tricklab.lab.store import config_key
from tricklab.lab.studies import custom_study

STUDY = {
    "name": "typed",
    "dataset": "synthetic",
    "base": {"model.depth": 1, "model.width": 8, "train.epochs": 1},
    "baseline": "plain",
    "variants": {"plain": {}, "wide": {"model.width": 9}, "broken": {"model.width": 10}},
}


def fake(config):
    """No training: width 10 raises, the others return a fixed accuracy."""
    from tricklab.config import validate

    cfg = validate(config)
    if cfg.model.width == 10:
        raise RuntimeError("this variant always fails")
    acc = 0.8 + 0.01 * (cfg.model.width - 8) + 0.001 * cfg.train.seed
    return {"test_acc": acc, "wall_time_s": 0.0}, [{"epoch": 1, "val_acc": acc}], config_key(cfg.to_dict())


def test_every_pool_is_an_executor():
    pools = [InProcess(1, fake, why="a test"), WorkerPool(1, 1, fake), RayPool(1, fake)]
    assert all(isinstance(p, Executor) for p in pools)
    assert [p.describe() for p in pools] == [
        "in-process (a test)",
        "1 worker processes × 1 thread(s)",
        "Ray (local instance) × 1 thread(s) per run",  # its room is known once it has joined Ray
    ]
    assert [p.stopped for p in pools] == ["", "worker processes stopped; ", "Ray tasks cancelled; "]


def test_in_process_reports_typed_events_in_order():
    events = []
    with InProcess(1, fake) as pool:
        pool.run([Task(("a",), {"model": {"width": 8}}), Task(("b",), {"model": {"width": 10}})], events.append)
    # each run starts, then ends, before the next starts; which of the two runs goes first is the pool's choice
    by_run = {e.key: [x for x in events if x.key == e.key] for e in events}
    assert [type(e) for e in by_run[("a",)]] == [RunStarted, RunDone], events
    assert [type(e) for e in by_run[("b",)]] == [RunStarted, RunFailed], events
    assert events[0].key == events[1].key and events[2].key == events[3].key  # one run at a time in one process
    assert [e.kind for e in by_run[("a",)] + by_run[("b",)]] == ["start", "done", "start", "failed"]  # names matched on
    done, failed = by_run[("a",)][1], by_run[("b",)][1]
    assert done.metrics["test_acc"] == pytest.approx(0.8) and len(done.config_hash) == 16
    assert failed.error == "RuntimeError: this variant always fails" and "Traceback" in failed.detail


def test_a_lab_hands_its_progress_frozen_counts_that_follow_its_events(tmp_path):
    study, _, _ = custom_study(STUDY)
    seen: list[LabCounts] = []
    result = run_lab([study], LabOptions(seeds=2, workers=2), tmp_path / "lab", on_progress=seen.append, fn=fake)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].done = 99  # a snapshot: what the lab reported then, not a dict it keeps changing
    events = [c.event for c in seen if c.event is not None]
    assert sorted(e.key for e in events if e.kind == "start") == sorted(
        RunKey("typed", v, s, "synthetic") for v in ("plain", "wide", "broken") for s in (0, 1)
    )
    for c in seen:  # each snapshot counts the events up to its own
        upto = events[: events.index(c.event) + 1] if c.event is not None else events
        assert c.done == sum(e.kind == "done" for e in upto) and c.failed == sum(e.kind == "failed" for e in upto)
        assert c.total == 6 and c.remaining == 6 - c.done - c.failed and len(c.times) == c.done
    last = seen[-1]
    assert last.finished and (last.done, last.failed, last.running) == (4, 2, 0) == (result.done, result.failed, 0)
    assert last.executor == "2 worker processes × 1 thread(s)" and last.processes == 2
    assert {k for k, _ in result.failures} == {("typed", "broken", 0, "synthetic"), ("typed", "broken", 1, "synthetic")}
