"""A checkpoint forged with a recomputed manifest passes its sha256 and its schema; what it claims is then checked
against the run it is loaded into (position, history, every tensor), and one that does not fit is skipped like a
corrupt one, or refused in one line naming the file and the first mismatch. Nothing is loaded from it."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tricklab.assembly import assemble
from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.engine.checkpoint import Checkpointer, CheckpointError, list_checkpoints, read_checkpoint
from tricklab.events import FitState
from tricklab.runner import run

BASE = [
    "data.name=synthetic",
    "model.width=16",
    "model.depth=1",
    "data.batch_size=32",
    "train.threads=1",
    "train.device=cpu",
    "train.epochs=2",
]


def forge(path, edit) -> None:
    """Rewrite checkpoint folder ``path`` with ``edit(meta, tensors)`` applied and a manifest that matches again
    (what a forger does)."""
    meta = json.loads((path / "meta.json").read_text())
    tensors = load_tensors((path / "tensors.safetensors").read_bytes())
    edit(meta, tensors)
    blobs = {"meta.json": json.dumps(meta).encode(), "tensors.safetensors": save_tensors(tensors)}
    manifest = json.loads((path / "MANIFEST.json").read_text())
    for name, blob in blobs.items():
        (path / name).unlink()  # break the hard link a best-* checkpoint may share
        (path / name).write_bytes(blob)
        manifest["files"][name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (path / "MANIFEST.json").unlink()
    (path / "MANIFEST.json").write_text(json.dumps(manifest))


def position(**values):
    def edit(meta, tensors):
        meta["position"].update(values)

    return edit


def shorter_history(meta, tensors):
    meta["fit"]["history"] = meta["fit"]["history"][:-1]  # the last epoch lost


def renumbered_history(meta, tensors):
    meta["fit"]["history"][0]["epoch"] = 7


def model_tensor(change):
    def edit(meta, tensors):
        name = next(iter(meta["model"].values()))["$tensor"]  # the first layer's weight
        tensors[name] = change(tensors[name])

    return edit


def optimizer_moment(meta, tensors):
    state = meta["optimizer"]["state"]["$items"][0][1]  # the first parameter's Adam state
    name = state["exp_avg"]["$tensor"]
    tensors[name] = torch.zeros(3, 3)


def optimizer_one_number(meta, tensors):
    state = meta["optimizer"]["state"]["$items"][0][1]
    tensors[state["exp_avg_sq"]["$tensor"]] = torch.zeros(1)  # would broadcast against its parameter's gradient


def optimizer_lr(meta, tensors):
    meta["optimizer"]["param_groups"][0]["lr"] = "fast"


def mid_epoch_without_totals(meta, tensors):
    meta["position"].update(epoch=2, batches_done=1, step=meta["position"]["step"] - 1)
    meta["fit"]["history"] = meta["fit"]["history"][:1]
    meta["fit"]["totals"] = None


def best_epoch(meta, tensors):
    meta["checkpointer"]["best_epoch"] = 40


FORGED = {
    "epoch_99": (position(epoch=99), "position.epoch = 99, but this run trains 2 epochs"),
    "batches_1e9": (position(batches_done=10**9), "position.batches_done = 1000000000, but an epoch of this run has"),
    "steps_1e9": (position(step=10**9), "position.step = 1000000000, more than the"),
    "shorter_history": (shorter_history, "fit.history holds epochs 1, but position.epoch = 2 says 2 finished"),
    "renumbered_history": (renumbered_history, "fit.history holds epochs 7, 2"),
    "model_shape": (model_tensor(lambda t: torch.zeros(3, 5)), "model: the weights of a different model (shape: "),
    "model_dtype": (model_tensor(lambda t: t.double()), "float64 != float32)"),
    "optimizer_shape": (optimizer_moment, "optimizer.state.0.exp_avg has shape (3, 3), its parameter"),
    "optimizer_one_number": (optimizer_one_number, "optimizer.state.0.exp_avg_sq has shape (1,), its parameter"),
    "optimizer_lr": (optimizer_lr, "optimizer.param_groups.0.lr = 'fast', where this optimizer has 0.001"),
    "mid_epoch_no_totals": (mid_epoch_without_totals, "fit.totals = None"),
    "best_epoch": (best_epoch, "checkpointer.best_epoch = 40, but 2 epochs finished"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return run(load_config(overrides=BASE), tmp_path_factory.mktemp("forged") / "run").run_dir


@pytest.fixture
def run_dir(trained, tmp_path, monkeypatch):
    shutil.copytree(trained, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


@pytest.mark.parametrize("case", list(FORGED))
def test_resume_refuses_a_forged_checkpoint_in_one_line_naming_the_file_and_the_mismatch(case, run_dir, capsys):
    edit, says = FORGED[case]
    for path in list_checkpoints(run_dir / "checkpoints"):
        forge(path, edit)

    rc = main(["train", "--resume", "run"])

    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err and err.count("\n") == 1, err
    assert "error: no valid checkpoint" in err and "checkpoints/epoch0002' does not fit this run" in err, err
    assert says in err, err


@pytest.mark.parametrize("case", ["epoch_99", "shorter_history", "optimizer_shape"])
def test_a_forged_newest_checkpoint_is_skipped_for_the_previous_one(case, run_dir, capsys):
    edit, says = FORGED[case]
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    forge(newest, edit)

    rc = main(["train", "--resume", "run"])

    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"{newest.name}' does not fit this run" in err and says in err and "skipped it" in err, err
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2


def fresh_run(trained):
    """A fresh model, optimizer and tricks of the trained run's config, in a state and a checkpointer to resume."""
    parts = assemble(load_config(overrides=BASE))
    state = FitState(model=parts.model, optimizer=parts.optimizer, epochs=2, device=torch.device("cpu"))
    return state, Checkpointer(trained / "x", callbacks=parts.callbacks, steps_per_epoch=100)


def test_nothing_is_loaded_from_a_checkpoint_that_does_not_fit(trained):
    path = list_checkpoints(trained / "checkpoints")[-1]
    ckpt = read_checkpoint(path)
    ckpt["optimizer"]["state"][0]["exp_avg_sq"] = torch.zeros(7)  # the last thing checked
    state, saver = fresh_run(trained)
    model, optimizer = state.model, state.optimizer
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(CheckpointError, match=r"optimizer\.state\.0\.exp_avg_sq has shape \(7,\)"):
        saver.restore(ckpt, state, path)

    assert state.epoch == 0 and state.history == [] and optimizer.state_dict()["state"] == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        (["averaging.ema=0.9"], "average", "average: the weights of a different model (shape: "),
        (["early_stopping.enabled=true"], "best_weights", "best_weights: the weights of a different model"),
        (
            ["averaging.swa_start=1"],
            "averaged",
            "averaged: the weights of a different model (shape: n_averaged (2, 2) != ()",
        ),
    ],
    ids=["ema", "early_stopping", "swa"],
)
def test_a_callbacks_copy_of_the_weights_is_checked_too(extra, key, says, tmp_path, capsys, monkeypatch):
    run(load_config(overrides=BASE + extra), tmp_path / "run")

    def edit(meta, tensors):
        for saved in meta["callbacks"].values():
            if saved.get(key):
                first = next(iter(saved[key]))
                tensors[saved[key][first]["$tensor"]] = torch.zeros(2, 2)

    for path in list_checkpoints(tmp_path / "run" / "checkpoints"):
        forge(path, edit)
    monkeypatch.chdir(tmp_path)

    rc = main(["train", "--resume", "run"])

    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "does not fit this run: callbacks." in err and says in err, err


def test_real_checkpoints_fit(trained):
    for path in list_checkpoints(trained / "checkpoints"):
        state, saver = fresh_run(trained)
        saver.check_fit(read_checkpoint(path), state, path)
