"""The metric names are the names on disk: history.jsonl columns and metrics.json keys never change."""

from __future__ import annotations

import subprocess
import sys

from tricklab import metrics

ON_DISK = {
    "EPOCH": "epoch",
    "TRAIN_LOSS": "train_loss",
    "TRAIN_ACC": "train_acc",
    "VAL_LOSS": "val_loss",
    "VAL_ACC": "val_acc",
    "LR": "lr",
    "EPOCH_TIME": "epoch_time_s",
    "GRAD_NORM": "grad_norm",
    "GRAD_NORM_MAX": "grad_norm_max",
    "CLIP_FRACTION": "clip_fraction",
    "NONFINITE_STEP": "nonfinite_step",
    "MEMBER": "member",
    "TEST_LOSS": "test_loss",
    "TEST_ACC": "test_acc",
    "BEST_VAL_ACC": "best_val_acc",
    "EPOCHS_RUN": "epochs_run",
    "STEPS": "steps",
    "WALL_TIME": "wall_time_s",
    "CONFIG_HASH": "config_hash",
    "BEST_EPOCH": "best_epoch",
    "STOPPED_EPOCH": "stopped_epoch",
    "RESTORED_BEST": "restored_best",
    "STOP_REASON": "stop_reason",
    "DIVERGED": "diverged",
    "ENSEMBLE": "ensemble",
    "MEMBER_TEST_ACC_MEAN": "member_test_acc_mean",
    "MEMBERS": "members",
    "DIVERGED_MEMBERS": "diverged_members",
}


def test_every_name_keeps_its_string_and_is_documented():
    names = {k: v for k, v in vars(metrics).items() if k.isupper()}
    assert names == ON_DISK
    for value in names.values():
        assert f"``{value}``" in metrics.__doc__


def test_the_metrics_module_imports_no_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('metrics', {metrics.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
