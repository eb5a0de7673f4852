"""Checkpoint files: what they hold, atomic writes, rotation, corruption and wrong-model detection."""

from __future__ import annotations

import errno
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from tricklab.config import load_config
from tricklab.events import FitState
from tricklab.train import checkpoint as ck
from tricklab.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    flatten,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    unflatten,
    write_checkpoint,
)
from tricklab.train.run import run

BASE = [
    "data.name=synthetic",
    "model.width=16",
    "model.depth=1",
    "data.batch_size=32",
    "train.threads=1",
    "train.device=cpu",
]


def cfg(*extra: str):
    return load_config(overrides=BASE + list(extra))


# --- tensors + JSON --------------------------------------------------------------------------------------


def test_flatten_round_trips_every_kind_of_state_exactly():
    opt = torch.optim.Adam(nn.Linear(3, 2).parameters(), betas=(0.8, 0.9))
    tree = {
        "optimizer": opt.state_dict(),  # int keys, a tuple of betas
        "floats": [0.1, math.inf, -math.inf, 1e-300],
        "plain": {"a": None, "b": True, "c": "x", "d": 2**40},
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(legacy=False),
        "t": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "u8": torch.get_rng_state(),
        "$odd": 1,
    }
    skeleton, tensors = flatten(tree)
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON: no NaN/Infinity literals
    back = unflatten(json.loads(text), tensors)

    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert list(back["optimizer"]["state"]) == list(tree["optimizer"]["state"])
    assert back["floats"] == tree["floats"] and back["plain"] == tree["plain"]
    assert back["python_rng"] == tree["python_rng"]
    np.testing.assert_array_equal(back["numpy_rng"]["state"]["key"], tree["numpy_rng"]["state"]["key"])
    assert torch.equal(back["t"], tree["t"]) and back["t"].dtype == torch.float64
    assert torch.equal(back["u8"], tree["u8"]) and back["$odd"] == 1
    assert math.isnan(unflatten(*flatten(float("nan"))))


def test_flatten_refuses_objects_it_would_have_to_pickle():
    with pytest.raises(CheckpointError, match=r"'/callbacks/fn'.*function"):
        flatten({"callbacks": {"fn": lambda: 0}})


# --- writing and reading ---------------------------------------------------------------------------------


def test_write_then_read_and_the_manifest(tmp_path):
    path = write_checkpoint(tmp_path / "epoch0001", {"format": ck.FORMAT, "w": torch.ones(3)})

    assert sorted(p.name for p in path.iterdir()) == ["MANIFEST.json", "meta.json", "tensors.safetensors"]
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"meta.json", "tensors.safetensors"}
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["epoch0001"]  # no temporary left


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-7]),  # truncated
        lambda p: p.write_bytes(p.read_bytes()[:20] + b"X" + p.read_bytes()[21:]),  # one byte changed
        lambda p: p.unlink(),  # missing
    ],
    ids=["truncated", "flipped_byte", "missing"],
)
@pytest.mark.parametrize("name", ["tensors.safetensors", "meta.json"])
def test_damage_is_detected_by_checksum_before_anything_is_parsed(name, damage, tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "epoch0001", {"format": ck.FORMAT, "w": torch.ones(3)})
    damage(path / name)

    def must_not_parse(*a, **k):
        raise AssertionError("parsed a checkpoint that failed its checksum")

    monkeypatch.setattr(ck, "load_safetensors_bytes", must_not_parse)
    with pytest.raises(CheckpointError, match=r"epoch0001.*(corrupt|incomplete)"):
        read_checkpoint(path)


def test_missing_manifest_is_incomplete(tmp_path):
    path = write_checkpoint(tmp_path / "epoch0001", {"format": ck.FORMAT})
    (path / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete: no MANIFEST.json"):
        read_checkpoint(path)


def test_full_disk_during_a_save_names_the_path_and_keeps_the_previous(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "epoch0001", {"format": ck.FORMAT, "w": torch.ones(2)})
    real = ck._write_synced

    def full(path, data):
        if path.name == "meta.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ck, "_write_synced", full)
    with pytest.raises(CheckpointError) as err:
        write_checkpoint(tmp_path / "epoch0002", {"format": ck.FORMAT, "w": torch.zeros(2)})

    assert str(tmp_path / "epoch0002") in str(err.value) and "No space left" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch0001"]  # temporary removed
    path, tree, notes = latest_checkpoint(tmp_path)
    assert path.name == "epoch0001" and torch.equal(tree["w"], torch.ones(2)) and notes == []


def test_full_disk_in_a_run_fails_with_one_line_and_a_loadable_checkpoint(tmp_path, monkeypatch):
    real = ck._write_synced
    calls = {"n": 0}

    def full_on_second_save(path, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ck, "_write_synced", full_on_second_save)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint '.*epoch0002': No space left"):
        run(cfg("train.epochs=3"), tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["best-epoch0001", "epoch0001"]
    read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch0001")


# --- what a run writes -----------------------------------------------------------------------------------


def test_run_keeps_the_last_k_every_n_epochs_plus_the_end_and_the_best(tmp_path):
    result = run(cfg("train.epochs=7", "checkpoint.every=2", "checkpoint.keep_last=2"), tmp_path / "run")
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]

    best_epoch = max(result.history, key=lambda r: r["val_acc"])["epoch"]  # first epoch with the best val_acc
    assert [n for n in names if not n.startswith("best-")] == ["epoch0006", "epoch0007"]  # every 2nd + the end
    assert [n for n in names if n.startswith("best-")] == [f"best-epoch{best_epoch:04d}"]


def test_best_follows_the_early_stopping_monitor(tmp_path):
    result = run(cfg("train.epochs=5", "early_stopping.enabled=true", "early_stopping.patience=10"), tmp_path / "run")
    best = min(result.history, key=lambda r: r["val_loss"])["epoch"]
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert f"best-epoch{best:04d}" in names


def test_checkpoint_holds_the_complete_state(tmp_path):
    run(
        cfg("train.epochs=2", "averaging.ema=0.9", "early_stopping.enabled=true", "schedule.name=onecycle"),
        tmp_path / "run",
    )
    c = read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch0002")

    assert c["position"] == {"epoch": 2, "batches_done": 0, "step": 30}
    assert (
        c["config_hash"]
        == cfg("train.epochs=2", "averaging.ema=0.9", "early_stopping.enabled=true", "schedule.name=onecycle").hash()
    )
    assert c["versions"]["torch"] == torch.__version__ and "tricklab" in c["versions"]
    assert set(c["rng"]) == {"python", "numpy", "torch", "cuda", "data_order"}
    assert [k.split(":")[1] for k in c["callbacks"]] == ["LRSchedule", "EarlyStopping", "EMA"]
    assert c["callbacks"]["2:EMA"]["average"].keys() == c["model"].keys()
    assert c["callbacks"]["1:EarlyStopping"]["stopper"]["best_epoch"] in (1, 2)
    assert c["callbacks"]["0:LRSchedule"]["scheduler"]["last_epoch"] == 30
    assert len(c["optimizer"]["state"]) == len(c["model"]) and [r["epoch"] for r in c["fit"]["history"]] == [1, 2]


def test_restoring_sets_every_rng_back(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    saver = Checkpointer(tmp_path, generator=gen)
    state = FitState(model=model, optimizer=opt, epochs=3, device=torch.device("cpu"), epoch=1)
    path = saver.save(state)
    draws = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))

    random.seed(99), np.random.seed(99), torch.manual_seed(99), gen.manual_seed(99)
    saver.restore(read_checkpoint(path), FitState(model=model, optimizer=opt, epochs=3, device=torch.device("cpu")))

    assert (random.random(), np.random.rand()) == draws[:2]
    assert torch.equal(torch.rand(1), draws[2]) and torch.equal(torch.rand(1, generator=gen), draws[3])


def test_checkpoint_of_another_model_is_refused_listing_keys_and_model_untouched(tmp_path):
    run(cfg("train.epochs=1"), tmp_path / "run")
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch0001")
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(other.parameters())
    before = {k: v.clone() for k, v in other.state_dict().items()}

    with pytest.raises(CheckpointError, match=r"different model \(missing: 1\.bias, 1\.weight.*unexpected: "):
        Checkpointer(tmp_path / "x").restore(ckpt, FitState(other, opt, 1, torch.device("cpu")))

    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_checkpoint_with_other_shapes_is_refused_naming_them(tmp_path):
    from tricklab.models import build_model

    run(cfg("train.epochs=1"), tmp_path / "run")
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch0001")
    wider = build_model("mlp", (1, 8, 8), 4, depth=1, width=32)
    before = [p.clone() for p in wider.parameters()]

    with pytest.raises(CheckpointError, match=r"shape: .*\(16, 64\) != \(32, 64\)"):
        Checkpointer(tmp_path / "x").restore(ckpt, FitState(wider, torch.optim.Adam(wider.parameters()), 1, "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(before, wider.parameters(), strict=True))


def test_no_valid_checkpoint_lists_each_problem(tmp_path):
    for name in ("epoch0001", "epoch0002"):
        path = write_checkpoint(tmp_path / name, {"format": ck.FORMAT, "w": torch.ones(1)})
        (path / "tensors.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint .*epoch0002.*corrupt.*\|.*epoch0001.*corrupt"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "nothing") is None
