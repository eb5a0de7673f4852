"""SIGKILL, then ``--resume``: real ``tricklab train`` processes, killed at several points.

Each run is killed by itself at a precise point through a hook of ``tricklab_child.py`` (mid-epoch, at an
epoch boundary before and after its checkpoint, inside a checkpoint write, while the final weights are
written), resumed with ``tricklab train --resume`` (in the test's process: what is on disk is all a resume
reads), and must end with weights bit-identical to an uninterrupted run and a history without duplicate epochs.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from tricklab_child import BASE, STEPS_PER_EPOCH, Cut, CutAt, child, here, history, same_weights

ARGS = ["train", *BASE, "--set", "train.epochs=4"]


def finish(proc, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out or "", err or ""


def _reference(cwd: Path) -> None:
    rc, err = here([*ARGS, "--out", "run"], cwd)
    assert rc == 0, err


@pytest.fixture(scope="module")
def reference(built_once):
    """The uninterrupted run, once per session (the tests only read it)."""
    return built_once("kill-resume-reference", _reference) / "run"


KILL_POINTS = {
    "mid_epoch": f"step:{STEPS_PER_EPOCH + 7}",  # 7 steps into epoch 2
    "epoch_boundary_before_checkpoint": "epoch-end:2",  # history.jsonl already has epoch 2
    "epoch_boundary_after_checkpoint": "saved:2",
    "during_checkpoint_write": "save:3",  # tensors + meta.json written, MANIFEST not
    "during_final_weights": "final",
}


@pytest.mark.parametrize("point", list(KILL_POINTS.values()), ids=list(KILL_POINTS))
def test_sigkill_then_resume_is_bit_identical(point, reference, tmp_path):
    rc, _, err = finish(child(point, [*ARGS, "--out", "run"], tmp_path, stdout=-1, stderr=-1))
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    if point.startswith("save:"):  # the torn write is a hidden temporary; epoch 3's checkpoint never appeared
        names = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
        assert any(n.startswith(".tmp-epoch0003-") for n in names) and "epoch0003" not in names

    rc, err = here(["train", "--resume", "run"], tmp_path)

    assert rc == 0, err
    assert "resuming from" in err and "Traceback" not in err
    same_weights(reference, tmp_path / "run")
    epochs = [r["epoch"] for r in history(tmp_path / "run")]
    assert epochs == [1, 2, 3, 4]
    assert history(tmp_path / "run") == history(reference)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(p.name for p in (reference / "checkpoints").iterdir())


def test_resume_auto_picks_the_newest_run(reference, tmp_path, monkeypatch):
    """Two interrupted runs under runs/ (cut in-process, as abruptly as a kill): auto resumes the newer."""
    from tricklab.config import load_config
    from tricklab.runner import run

    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides=[*BASE[1::2], "train.epochs=4"])
    for name, cut in (("old", CutAt(epoch=1, order=2000)), ("new", CutAt(step=20))):
        with pytest.raises(Cut):
            run(cfg, Path("runs") / name, callbacks=[cut])

    rc, out, err = finish(child("none", ["train", "--resume", "auto"], tmp_path, stdout=-1, stderr=-1))

    assert rc == 0, err
    assert "runs/new" in out
    same_weights(reference, tmp_path / "runs" / "new")
    assert not (tmp_path / "runs" / "old" / "model.safetensors").exists()
    assert json.loads((tmp_path / "runs" / "new" / "metrics.json").read_text())["epochs_run"] == 4
