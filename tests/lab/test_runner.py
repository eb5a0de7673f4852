"""The worker pool's scheduling: an idle worker asks ``refill`` for work at once, not after the next run ends."""

from __future__ import annotations

import time

from tricklab.lab.runner import Task, WorkerPool


def sleepy(config: dict) -> tuple[dict, list, str]:
    time.sleep(config["sleep"])
    return {"slept": config["sleep"]}, [], "hash"


def test_an_idle_worker_gets_refilled_work_while_a_long_run_is_still_running():
    events: list[tuple[str, tuple, float]] = []
    calls = {"n": 0}

    def refill() -> list[Task]:
        calls["n"] += 1
        if calls["n"] == 1:
            return [Task(("short",), {"sleep": 0.1})]
        return []

    t0 = time.monotonic()
    with WorkerPool(2, 1, fn=sleepy) as pool:
        pool.run(
            [Task(("long",), {"sleep": 3.0})],
            lambda e: events.append((e.kind, e.key, time.monotonic() - t0)),  # a typed RunEvent
            poll_s=0.05,
            refill=refill,
        )
    done = {key: t for kind, key, t in events if kind == "done"}
    assert set(done) == {("long",), ("short",)}
    assert done[("short",)] < done[("long",)] - 1.0  # ran beside the long one, not after it
