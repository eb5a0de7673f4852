"""``--executor ray`` on a local Ray instance: a lab end to end with the same metrics as the process pool, a worker
killed mid-run retried, a run that raises failed and not retried, a stopped or killed driver's lab resumed by a rerun.
"""

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tricklab[ray]'; CI has it in [dev])")

from tricklab.cli.main import main  # noqa: E402
from tricklab.errors import TrickLabError  # noqa: E402
from tricklab.lab.lab import LabInterrupted, LabOptions, run_lab  # noqa: E402
from tricklab.lab.store import Store, config_key  # noqa: E402
from tricklab.lab.studies import custom_study  # noqa: E402

STUDY = """
name: tiny
dataset: synthetic
base: {model: {depth: 1, width: 16}, data: {batch_size: 64}, train: {epochs: %(epochs)d}, schedule: {name: constant}}
baseline: plain
variants:
  plain: {}
  dropout: {model.dropout: 0.3}
seeds: 2
"""
FAKE = {"name": "fake", "dataset": "synthetic", "base": {"model.depth": 1, "model.width": 8}, "baseline": "plain"}
FAKE["variants"] = {"plain": {}, "wide": {"model.width": 9}}
TIMES = ("wall_time_s", "time_s", "epoch_time_s")  # how long a run took differs between any two runs


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module (the lab uses a Ray this process already initialised, and leaves it)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    yield
    ray.shutdown()
    for s, h in handlers.items():
        signal.signal(s, h)


def write_study(tmp_path: Path, epochs: int = 1) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY % {"epochs": epochs})
    return path


def rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT variant, seed, status, metrics, history, finished_at, attempts FROM runs ORDER BY variant, seed"
        ).fetchall()
    finally:
        con.close()


def without_times(x):
    if isinstance(x, dict):
        return {k: without_times(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [without_times(v) for v in x]
    return x


def fake_result(config):
    from tricklab.config import validate

    cfg = validate(config)
    acc = 0.8 + cfg.train.seed / 100 + (cfg.model.width - 8) / 10
    metrics = {"test_acc": acc, "test_loss": 1 - acc, "best_val_acc": acc, "wall_time_s": 0.0}
    return metrics, [{"epoch": 1, "val_acc": acc, "val_loss": 1 - acc}], config_key(cfg.to_dict())


def die_once(folder: str, config):
    """A run function: the first attempt of (wide, seed 0) says its worker's pid and waits to be killed."""
    key = f"{config['model']['width']}-{config['train']['seed']}"
    with open(os.path.join(folder, key), "a") as f:
        f.write(f"{os.getpid()}\n")
    if key == "9-0" and len(Path(folder, key).read_text().split()) == 1:
        time.sleep(60)  # killed by the test long before
    return fake_result(config)


def raise_once(folder: str, config):
    """A run function: (wide, seed 0) raises, every time it is tried."""
    key = f"{config['model']['width']}-{config['train']['seed']}"
    with open(os.path.join(folder, key), "a") as f:
        f.write(f"{os.getpid()}\n")
    if key == "9-0":
        raise RuntimeError("boom")
    return fake_result(config)


def test_a_lab_on_ray_gives_bit_identical_metrics_to_the_process_pool(tmp_path, capsys):
    study = write_study(tmp_path)
    cmd = ["lab", "--config", str(study), "--workers", "2"]
    assert main([*cmd, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    printed = capsys.readouterr().out
    assert "lab: 4 runs to do, Ray (local instance): up to 2 runs at once × 1 thread(s)" in printed
    assert "4 runs done, 0 already done, 0 failed" in printed and (tmp_path / "ray" / "report.html").exists()
    assert main([*cmd, "--out", str(tmp_path / "process")]) == 0
    on_ray, on_pool = rows(tmp_path / "ray" / "results.sqlite"), rows(tmp_path / "process" / "results.sqlite")
    assert [r[2] for r in on_ray] == ["done"] * 4
    for a, b in zip(on_ray, on_pool, strict=True):
        assert a[:2] == b[:2]
        assert without_times(json.loads(a[3])) == without_times(json.loads(b[3]))  # ==: bit for bit, not approx
        assert without_times(json.loads(a[4])) == without_times(json.loads(b[4]))
    assert json.loads(on_ray[0][3])["test_acc"] > 0  # something was compared
    # the same lab again skips everything, on either executor
    assert main([*cmd, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert "0 runs done, 4 already done" in capsys.readouterr().out


@pytest.mark.parametrize("retries", [3, 0])
def test_a_worker_killed_mid_run_is_retried_and_the_lab_completes(tmp_path, retries):
    study, _, _ = custom_study(FAKE)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    victim = attempts / "9-0"

    def kill_the_worker():
        deadline = time.time() + 60
        while time.time() < deadline and not victim.exists():
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(int(victim.read_text().split()[0]), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    opts = LabOptions(seeds=2, executor="ray", max_retries=retries)
    result = run_lab([study], opts, tmp_path / "lab", fn=functools.partial(die_once, str(attempts)))
    killer.join()
    pids = victim.read_text().split()
    statuses = {(r[0], r[1]): r[2] for r in rows(tmp_path / "lab" / "results.sqlite")}
    if retries:
        assert len(pids) == 2 and pids[0] != pids[1]  # tried again, in a fresh worker process
        assert result.done == 4 and result.failed == 0 and set(statuses.values()) == {"done"}
    else:
        assert len(pids) == 1 and result.done == 3 and result.failed == 1
        assert statuses[("wide", 0)] == "failed"
        assert "Ray lost the run's worker (WorkerCrashedError) after 0 retries" in result.failures[0][1]
    for other in ("8-0", "8-1", "9-1"):
        assert len((attempts / other).read_text().split()) == 1


def test_a_run_that_raises_is_failed_and_not_retried(tmp_path):
    study, _, _ = custom_study(FAKE)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    opts = LabOptions(seeds=2, executor="ray", max_retries=3)
    result = run_lab([study], opts, tmp_path / "lab", fn=functools.partial(raise_once, str(attempts)))
    assert result.done == 3 and result.failed == 1
    assert result.failures == [(("fake", "wide", 0, "synthetic"), "RuntimeError: boom")]
    assert len((attempts / "9-0").read_text().split()) == 1  # tried once
    with Store(tmp_path / "lab" / "results.sqlite") as store:
        row = store.get("fake", "wide", 0, "synthetic")
    assert row.status == "failed" and "RuntimeError: boom" in row.error and "raise_once" in row.error


def slow_result(config):
    time.sleep(1.0 if config["train"]["seed"] == 0 else 30.0)  # seed 1 is still running when the lab is stopped
    return fake_result(config)


def test_a_stopped_ray_lab_puts_its_running_runs_back_to_pending(tmp_path):
    study, _, _ = custom_study(FAKE)
    out = tmp_path / "lab"

    def stop_after_the_first_run():
        deadline = time.time() + 60
        while time.time() < deadline:
            if (out / "results.sqlite").exists() and any(r[2] == "done" for r in rows(out / "results.sqlite")):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_after_the_first_run)
    stopper.start()
    with pytest.raises(LabInterrupted, match="lab stopped by SIGTERM: .* Ray tasks cancelled; rerun") as stopped:
        run_lab([study], LabOptions(seeds=2, executor="ray", workers=2), out, fn=slow_result)
    stopper.join()
    assert stopped.value.exit_code == 143
    statuses = {(r[0], r[1]): r[2] for r in rows(out / "results.sqlite")}
    assert statuses[("plain", 0)] == "done" or statuses[("wide", 0)] == "done"
    assert "running" not in statuses.values() and "pending" in statuses.values()
    assert ray.is_initialized()  # the module's Ray, not started by the lab, is left running


def test_killing_the_driver_loses_no_finished_run(tmp_path, capsys):
    """A ``tricklab lab --executor ray`` process SIGKILLed with the Ray instance it started, after a run; the rerun
    goes to this module's Ray, in this process (what is on disk is all a rerun reads)."""
    study = write_study(tmp_path, epochs=4)
    out = tmp_path / "lab"
    cmd = [sys.executable, "-m", "tricklab", "lab", "--config", str(study), "--out", str(out)]
    cmd += ["--executor", "ray", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "results.sqlite"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if db.exists() and any(r[2] == "done" for r in rows(db)):
                    break
            except sqlite3.OperationalError:  # the lab is still creating its tables
                pass
            time.sleep(0.05)
        else:
            pytest.fail(f"the lab finished no run in 120 s: {proc.stderr.read().decode()[-2000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        proc.wait()
    before = {(r[0], r[1]): r for r in rows(db) if r[2] == "done"}
    assert 1 <= len(before) < 4, "kill it mid-study"
    capsys.readouterr()
    assert main(cmd[3:]) == 0, capsys.readouterr().err
    after = rows(db)
    assert len(after) == 4 and all(r[2] == "done" for r in after)
    for r in after:
        if (r[0], r[1]) in before:
            assert r == before[(r[0], r[1])], "a finished run was recomputed"
    assert f"{4 - len(before)} runs done, {len(before)} already done, 0 failed" in capsys.readouterr().out


def test_ray_options_are_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    study, _, _ = custom_study(FAKE)
    with pytest.raises(TrickLabError, match="executor = 'dask': must be one of process, ray"):
        run_lab([study], LabOptions(executor="dask"), tmp_path / "lab", fn=fake_result)
    with pytest.raises(TrickLabError, match="max_retries = -1: must be an integer from 0 to 100"):
        run_lab([study], LabOptions(executor="ray", max_retries=-1), tmp_path / "lab", fn=fake_result)
    with pytest.raises(TrickLabError, match=r"address = '127.0.0.1:1': nothing answers there \(Connection refused"):
        run_lab([study], LabOptions(executor="ray", address="127.0.0.1:1"), tmp_path / "lab", fn=fake_result)
    with pytest.raises(TrickLabError, match="address = 'head': expected host:port, ray://host:port or auto"):
        run_lab([study], LabOptions(executor="ray", address="head"), tmp_path / "lab", fn=fake_result)
    assert not (tmp_path / "lab").exists()  # refused before the lab folder is made, in seconds
    assert main(["lab", "dropout", "--address", "auto"]) == 2
    assert "--address = auto: only with --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["lab", "--config", str(write_study(tmp_path)), "--executor", "ray", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray: pip install 'tricklab[ray]'" in err and len(err.strip().splitlines()) == 1


def test_runs_no_node_can_hold_are_refused_not_left_waiting():
    from tricklab.lab.ray_executor import RayPool
    from tricklab.lab.runner import Task

    cpu_run = Task(("s", "v", 0, "d"), {"train": {"device": "cpu"}})
    with RayPool(threads=4, fn=fake_result) as pool:  # the module's Ray has 2 CPUs
        with pytest.raises(TrickLabError, match="a run has 4 threads but the largest node has 2 CPUs; use --workers"):
            pool.run([cpu_run], lambda *event: pytest.fail(f"nothing should start: {event}"))
    gpu_run = Task(("s", "v", 0, "d"), {"train": {"device": "cuda"}})
    with RayPool(threads=1, fn=fake_result) as pool:
        with pytest.raises(TrickLabError, match="run s/v/0/d has train.device = 'cuda' but the cluster has no GPU"):
            pool.run([gpu_run], lambda *event: pytest.fail(f"nothing should start: {event}"))
