"""The worker pool's scheduling: an idle worker asks ``refill`` for work at once, not after the next run ends."""

from __future__ import annotations

import time
from pathlib import Path

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


def env_and_cwd(config: dict) -> tuple[dict, list, str]:
    import os

    return {"value": os.environ.get("TRICKLAB_TEST_VALUE"), "cwd": os.getcwd()}, [], "hash"


def test_workers_see_the_labs_environment_and_folder_when_they_start(tmp_path, monkeypatch):
    """The fork server starts once per process; a pool started later hands its workers the environment and the
    working folder of that moment, not the server's."""
    with WorkerPool(1, 1, fn=sleepy) as pool:  # the fork server is running from here on
        pool.run([Task(("warm",), {"sleep": 0.0})], lambda e: None)
    monkeypatch.setenv("TRICKLAB_TEST_VALUE", "set after the server started")
    monkeypatch.chdir(tmp_path)
    got = []
    with WorkerPool(1, 1, fn=env_and_cwd) as pool:
        pool.run([Task(("env",), {})], lambda e: got.append(e))
    (done,) = [e for e in got if e.kind == "done"]
    assert done.metrics == {"value": "set after the server started", "cwd": str(tmp_path)}


def modules_at_start(config: dict) -> tuple[dict, list, str]:
    import sys

    return {name: name in sys.modules for name in ("torch", "tricklab.runner", "torch._dynamo")}, [], "hash"


def test_a_worker_starts_with_what_a_run_imports_already_imported():
    """Every run builds a torch optimizer, whose first use imports ``torch._dynamo``: the fork server imports it
    once, so that each worker does not (forked workers share the server's imports)."""
    got = []
    with WorkerPool(2, 1, fn=modules_at_start) as pool:
        pool.run([Task((i,), {}) for i in range(2)], lambda e: got.append(e))
    done = [e.metrics for e in got if e.kind == "done"]
    assert done == [{"torch": True, "tricklab.runner": True, "torch._dynamo": True}] * 2


LAB_THAT_WAITS = """
import sys, time
sys.path.insert(0, {tests!r})
from tricklab.lab.runner import Task, WorkerPool
from test_runner import sleepy
with WorkerPool(2, 1, fn=sleepy) as pool:
    print(*pool.pids(), flush=True)
    pool.run([Task((i,), {{"sleep": 60}}) for i in range(2)], lambda e: None)
"""


def test_no_worker_outlives_a_killed_lab(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    code = LAB_THAT_WAITS.format(tests=str(Path(__file__).parent))
    lab = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in lab.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.5)
    lab.send_signal(signal.SIGKILL)
    lab.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if _running(p)]
    assert not alive, f"workers {alive} outlived their lab"


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
