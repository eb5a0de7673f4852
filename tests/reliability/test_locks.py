"""One process per run or lab folder: a second one is refused naming the first; a killed holder never blocks.

The holder is a real second process (``flock`` locks belong to the process that took them), either a small
script that takes :func:`folder_lock` and sleeps, or a real ``tricklab train``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.engine.rundir import check_run_dir
from tricklab.locks import LOCK_NAME, FolderInUse, folder_lock

SYNTH = ["--set", "data.name=synthetic", "--set", "model.width=8", "--set", "model.depth=1", "--set", "train.threads=1"]
HOLD = "import sys, time\nfrom tricklab.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n" + (
    "    print('held', flush=True)\n    time.sleep(600)\n"
)
STUDY = """
name: tiny
dataset: synthetic
base: {model: {depth: 1, width: 8}, train: {epochs: 1}}
variants: {plain: {}}
seeds: 1
"""


@pytest.fixture
def holder():
    """Start a process holding a folder's lock: ``holder(folder) -> Popen`` (killed at the end)."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, holder):
    proc = holder(tmp_path / "run")
    info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert info["pid"] == proc.pid and {"host", "started", "command"} <= set(info)
    with pytest.raises(FolderInUse) as e:
        with folder_lock(tmp_path / "run"):
            pass
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by pid {proc.pid} (")
    assert "started " in message and message.endswith("; wait for it or stop it")


def test_a_killed_holder_does_not_block_and_its_stale_record_is_replaced(tmp_path, holder):
    proc = holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    with folder_lock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
        with folder_lock(tmp_path / "run"):  # nests within one process
            pass
        assert (tmp_path / "run" / LOCK_NAME).exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a clean release leaves nothing


def test_a_lone_stale_lock_file_is_an_empty_run_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text('{"pid": 999999999}')
    check_run_dir(folder)  # not refused
    assert main(["train", *SYNTH, "--set", "train.epochs=1", "--out", str(folder)]) == 0
    assert (folder / "model.safetensors").exists() and not (folder / LOCK_NAME).exists()


def test_a_run_failing_on_bad_input_leaves_no_folder_and_no_lock(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not an npz file")
    bad = ["--set", "data.name=npz", "--set", f"data.path={tmp_path / 'bad.npz'}"]
    assert main(["train", *SYNTH, *bad, "--out", str(tmp_path / "new" / "run")]) == 2
    assert "bad.npz" in one_error_line(capsys)
    assert not (tmp_path / "new").exists()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / LOCK_NAME).write_text('{"pid": 999999999}')
    assert main(["train", *SYNTH, *bad, "--out", str(stale)]) == 2
    assert list(stale.iterdir()) == []  # the folder it was given, empty again


@pytest.mark.parametrize("empty", [True, False], ids=["empty-folder", "run-folder"])
def test_train_refuses_a_run_folder_in_use(tmp_path, holder, capsys, empty):
    folder = tmp_path / "run"
    if not empty:
        folder.mkdir()
        (folder / "config.yaml").write_text("{}\n")
    proc = holder(folder)
    before = sorted(p.name for p in folder.iterdir())
    assert main(["train", *SYNTH, "--out", str(folder)]) == 2
    assert f"{folder} is in use by pid {proc.pid}" in one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_resume_refuses_a_run_in_use(tmp_path, holder, capsys):
    run = tmp_path / "run"
    assert main(["train", *SYNTH, "--set", "train.epochs=1", "--out", str(run)]) == 0
    capsys.readouterr()
    proc = holder(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{run} is in use by pid {proc.pid}" in one_error_line(capsys)


def test_lab_and_report_refuse_a_lab_folder_in_use(tmp_path, holder, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    proc = holder(tmp_path / "lab")
    assert main(["lab", "--config", str(study), "--out", str(tmp_path / "lab")]) == 2
    assert f"{tmp_path / 'lab'} is in use by pid {proc.pid}" in one_error_line(capsys)
    assert main(["report", str(tmp_path / "lab")]) == 2
    assert f"is in use by pid {proc.pid}" in one_error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "lab").iterdir()) == [LOCK_NAME]


def test_two_trains_into_one_folder_at_once_one_is_refused(tmp_path, capsys, monkeypatch):
    """The issue's case: a real ``tricklab train --out r`` is training; a second one into r is refused."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRICKLAB_DATA=str(tmp_path / "cache"))
    args = [*SYNTH, "--set", "train.epochs=40", "--out", "r"]
    first = subprocess.Popen(
        [sys.executable, "-m", "tricklab", "train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().startswith("epoch 1 ")  # it is training
        monkeypatch.chdir(tmp_path)
        assert main(["train", *SYNTH, "--set", "train.epochs=2", "--set", "model.width=9", "--out", "r"]) == 2
        assert f"r is in use by pid {first.pid} (tricklab train " in one_error_line(capsys)
        first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0
    assert "width: 8" in (tmp_path / "r" / "config.yaml").read_text()
    rows = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    assert not (tmp_path / "r" / LOCK_NAME).exists()
