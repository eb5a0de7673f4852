"""SIGINT/SIGTERM: stop at the next step boundary with a checkpoint, exit 130/143; a second signal exits at once.

Real processes (``tricklab_child.py`` with a 20 ms sleep per step so that the signal lands mid-training),
signalled from here with ``os.kill``; the run is then resumed (in this process: what is on disk is all a resume
reads) and compared with an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from tricklab_child import BASE, child, here, history, same_weights

from tricklab.engine.checkpoint import list_checkpoints, read_checkpoint

ARGS = ["train", *BASE, "--set", "train.epochs=12"]


def _reference(cwd: Path) -> None:
    rc, err = here([*ARGS, "--out", "run"], cwd)
    assert rc == 0, err


@pytest.fixture(scope="module")
def reference(built_once):
    """The uninterrupted run, once per session (the tests only read it)."""
    return built_once("signals-reference", _reference) / "run"


def start_and_wait_for_epoch(point, tmp_path, line: str = "epoch 2 "):
    proc = child(point, [*ARGS, "--out", "run"], tmp_path, stdout=-1, stderr=-1)
    for text in proc.stdout:  # one line per epoch (not a terminal)
        if text.startswith(line):
            return proc
    raise AssertionError(f"the run ended before {line!r}: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_at_a_step_with_a_checkpoint_and_resume_is_exact(sig, reference, tmp_path):
    proc = start_and_wait_for_epoch("slow", tmp_path)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + sig
    lines = [e for e in err.splitlines() if e.strip()]
    assert "Traceback" not in err and lines[-1].startswith("error: stopped by " + signal.Signals(sig).name)
    assert "--resume run" in lines[-1]
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert newest.name in lines[-1]
    assert not (tmp_path / "run" / "model.safetensors").exists()

    rc, err = here(["train", "--resume", "run"], tmp_path)

    assert rc == 0, err
    assert f"resuming from {newest}".replace(str(tmp_path) + "/", "") in err
    same_weights(reference, tmp_path / "run")
    assert [r["epoch"] for r in history(tmp_path / "run")] == list(range(1, 13))


def test_second_signal_exits_at_once_and_corrupts_nothing(reference, tmp_path):
    proc = start_and_wait_for_epoch("slow-save", tmp_path)
    before = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    os.kill(proc.pid, signal.SIGTERM)
    for text in proc.stderr:  # the stop checkpoint's write now blocks (60 s) inside the save
        if "checkpoint write blocked" in text:
            break
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)

    assert time.monotonic() - t0 < 10  # at once, not after the blocked write
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM again: exiting now" in err and "Traceback" not in err
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert any(n.startswith(".tmp-") for n in left)  # the interrupted write: a hidden temporary only
    for path in list_checkpoints(tmp_path / "run" / "checkpoints"):
        read_checkpoint(path)  # every visible checkpoint verifies and loads
    assert before

    rc, err = here(["train", "--resume", "run"], tmp_path)

    assert rc == 0, err
    assert "corrupt" not in err  # the checkpoints on disk were all whole
    same_weights(reference, tmp_path / "run")
    assert [r["epoch"] for r in history(tmp_path / "run")] == list(range(1, 13))
