"""Exact resume: a run stopped anywhere and resumed ends with weights bit-identical to an uninterrupted run.

In-process: a run is cut short by an exception raised at a chosen point (as abrupt as a kill for what is
on disk: nothing after that point runs), then ``run(..., resume=True)`` continues it; over many trick
combinations. The real thing -- ``python -m tricklab train`` killed with SIGKILL -- is in
``test_kill_resume.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from tricklab_child import Cut, CutAt, history, same_weights

from tricklab.config import load_config
from tricklab.engine import checkpoint as ckpt_mod
from tricklab.engine.checkpoint import Interrupted
from tricklab.engine.rundir import run_checkpoints
from tricklab.events import Callback
from tricklab.runner import run

BASE = [
    "data.name=synthetic",
    "model.width=16",
    "model.depth=1",
    "data.batch_size=32",
    "train.epochs=4",
    "train.threads=1",
    "train.device=cpu",
]

# trick combinations whose state must all come back: optimizer moments, schedules (per step and per
# epoch, momentum cycling), EMA/SWA averages, early-stopping memory, dropout RNG, BatchNorm buffers
CONFIGS = {
    "adam_cosine_dropout": ["model.dropout=0.3"],
    "momentum_onecycle_clip_l1_ema": [
        "optim.name=momentum",
        "optim.lr=0.05",
        "schedule.name=onecycle",
        "clip.mode=norm",
        "optim.l1=0.0001",
        "averaging.ema=0.9",
    ],
    "sgd_step_swa_batchnorm": [
        "optim.name=sgd",
        "optim.lr=0.1",
        "schedule.name=step",
        "model.norm=batch",
        "averaging.swa_start=2",
        "averaging.swa_lr=0.05",
    ],
    "adamw_warmup_early_stopping": [
        "optim.name=adamw",
        "optim.weight_decay=0.01",
        "optim.decoupled=true",
        "schedule.name=warmup_cosine",
        "early_stopping.enabled=true",
        "early_stopping.patience=1",
        "early_stopping.monitor=val_acc",
        "model.dropout=0.2",
    ],
    "rmsprop_plateau_ensemble": ["optim.name=rmsprop", "schedule.name=plateau", "averaging.ensemble=2"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per config."""
    base = tmp_path_factory.mktemp("reference")
    return {name: run(load_config(overrides=BASE + extra), base / name).run_dir for name, extra in CONFIGS.items()}


def cut_and_resume(cfg, run_dir: Path, cutter: Callback) -> None:
    with pytest.raises(Cut):
        run(cfg, run_dir, callbacks=[cutter])
    run(cfg, run_dir, resume=True)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    "cutter",
    [
        lambda: CutAt(step=22),  # mid-epoch 2: resume from the end of epoch 1
        lambda: CutAt(epoch=2, order=1050),  # epoch 2 is in history.jsonl but not yet checkpointed
        lambda: CutAt(epoch=2, order=2000),  # just after the epoch-2 checkpoint
        lambda: CutAt(epoch=4, order=2000),  # after the last checkpoint, before metrics and weights
    ],
    ids=["mid_epoch", "epoch_end_before_save", "epoch_end_after_save", "after_training"],
)
def test_cut_anywhere_and_resume_is_bit_identical(name, cutter, reference, tmp_path):
    cfg = load_config(overrides=BASE + CONFIGS[name])
    cut_and_resume(cfg, tmp_path / "run", cutter())

    same_weights(reference[name], tmp_path / "run")
    assert history(tmp_path / "run") == history(reference[name])  # no epoch twice, same numbers
    ref_metrics = json.loads((reference[name] / "metrics.json").read_text())
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert got["test_acc"] == ref_metrics["test_acc"] and got["test_loss"] == ref_metrics["test_loss"]


def test_cut_during_a_save_resumes_from_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    cfg = load_config(overrides=BASE + CONFIGS["adam_cosine_dropout"])
    calls = {"n": 0}
    real = ckpt_mod._write_synced

    def dies_in_third_save(path, data):
        calls["n"] += 1
        if calls["n"] == 8:  # 3 files per save (best copies are hard links): meta.json of epoch 3
            raise Cut
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_synced", dies_in_third_save)
    with pytest.raises(Cut):
        run(cfg, tmp_path / "run")
    monkeypatch.setattr(ckpt_mod, "_write_synced", real)
    assert [p.name for p in run_checkpoints(tmp_path / "run")][-1] == "epoch0002"  # epoch 3's never appeared

    run(cfg, tmp_path / "run", resume=True)

    same_weights(reference["adam_cosine_dropout"], tmp_path / "run")
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_sigint_mid_epoch_checkpoint_resumes_within_the_epoch(reference, tmp_path):
    """SIGINT between two steps writes a mid-epoch checkpoint; resuming replays the rest of that epoch."""
    name = "momentum_onecycle_clip_l1_ema"
    cfg = load_config(overrides=BASE + CONFIGS[name])

    class SignalAt(Callback):
        def on_step_end(self, state):
            if state.step == 20:  # 5 batches into epoch 2
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stop:
        run(cfg, tmp_path / "run", callbacks=[SignalAt()])
    assert stop.value.exit_code == 130
    assert "epoch0001-batch00005" in str(stop.value) and "--resume" in str(stop.value)

    run(cfg, tmp_path / "run", resume=True)

    same_weights(reference[name], tmp_path / "run")
    clip_stats = ("grad_norm", "grad_norm_max", "clip_fraction")  # GradClip's epoch sums are not checkpointed

    def without_clip_stats(rows):
        return [{k: v for k, v in r.items() if k not in clip_stats} for r in rows]

    assert without_clip_stats(history(tmp_path / "run")) == without_clip_stats(history(reference[name]))


def test_resume_falls_back_when_the_newest_checkpoint_is_corrupt(reference, tmp_path, capsys):
    cfg = load_config(overrides=BASE + CONFIGS["adam_cosine_dropout"])
    with pytest.raises(Cut):
        run(cfg, tmp_path / "run", callbacks=[CutAt(epoch=3, order=2000)])
    newest = tmp_path / "run" / "checkpoints" / "epoch0003" / "tensors.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))

    run(cfg, tmp_path / "run", resume=True)

    err = capsys.readouterr().err
    assert "epoch0003" in err and "corrupt" in err and "resuming from" in err and "epoch0002" in err
    same_weights(reference["adam_cosine_dropout"], tmp_path / "run")
    assert history(tmp_path / "run") == history(reference["adam_cosine_dropout"])
