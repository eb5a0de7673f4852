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
from tricklab.engine import checkpoint as ck
from tricklab.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    flatten,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    unflatten,
    write_checkpoint,
)
from tricklab.events import FitState
from tricklab.runner import run

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
    state = FitState(model=model, optimizer=opt, epochs=3, device=torch.device("cpu"), epoch=1, history=[{"epoch": 1}])
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


# --- forged manifests and meta: validated like a config, one line naming the file ------------------------


DEEP = "@deep@"  # stands for JSON nested 50,000 deep (Python's json cannot even write it)


def forge(folder, edit_meta=None, edit_manifest=None) -> None:
    """Rewrite every checkpoint in ``folder`` with ``edit_meta(meta)`` applied and a manifest whose sizes and
    sha256 match again (what a forger would do), then ``edit_manifest(manifest)``."""
    for path in list_checkpoints(folder):
        meta = json.loads((path / "meta.json").read_text())
        if edit_meta is not None:
            edit_meta(meta)
        blob = json.dumps(meta).replace(f'"{DEEP}"', "[" * 50_000 + "]" * 50_000).encode()
        (path / "meta.json").unlink()  # break the hard link a best-* checkpoint may share
        (path / "meta.json").write_bytes(blob)
        manifest = json.loads((path / "MANIFEST.json").read_text())
        manifest["files"]["meta.json"] = {"bytes": len(blob), "sha256": ck._sha256(blob)}
        if edit_manifest is not None:
            edit_manifest(manifest)
        (path / "MANIFEST.json").unlink()
        (path / "MANIFEST.json").write_text(json.dumps(manifest))


def setter(*keys, value):
    def edit(tree):
        for k in keys[:-1]:
            tree = tree[k]
        tree[keys[-1]] = value

    return edit


def dropper(*keys):
    def edit(tree):
        for k in keys[:-1]:
            tree = tree[k]
        del tree[keys[-1]]

    return edit


FORGED_META = {
    "epoch_1e30": (setter("position", "epoch", value=1e30), "position.epoch = 1e+30"),
    "epoch_negative": (setter("position", "epoch", value=-3), "position.epoch = -3"),
    "null_position": (setter("position", value=None), "position = None"),
    "missing_rng": (dropper("rng"), "rng: Field required"),
    "int_for_string": (setter("config_hash", value=12), "config_hash = 12"),
    "string_for_int": (setter("position", "step", value="30"), "position.step = '30'"),
    "extra_key": (setter("position", "extra", value=1), "position.extra = 1"),
    "bad_python_rng": (
        setter("rng", "python", value={"$tuple": [3, [1, 2], None]}),
        "rng: python: not a random.getstate() state",
    ),
    "bad_numpy_rng": (
        setter(
            "rng", "numpy", "state", "key", value={"$ndarray": {"dtype": "uint32", "shape": [3], "data": [1, 2, 3]}}
        ),
        "rng: numpy: not a numpy.random.get_state() state",
    ),
    "bad_torch_rng": (setter("rng", "torch", value=[1, 2]), "rng.torch = [1, 2]"),
    "history_not_rows": (setter("fit", "history", value=[1, 2]), "fit.history.0 = 1"),
    "object_array": (
        setter("rng", "numpy", "state", "key", value={"$ndarray": {"dtype": "O", "shape": [1], "data": [1]}}),
        "an array of dtype 'O': only numbers are read",
    ),
    "huge_reshape": (
        setter("rng", "numpy", "state", "key", value={"$ndarray": {"dtype": "u4", "shape": [10**12], "data": []}}),
        "cannot be parsed (ValueError",
    ),
    "unhashable_items_key": (
        setter("optimizer", "state", value={"$items": [[[1], {}]]}),
        "cannot be parsed (TypeError",
    ),
    "deep_nesting": (setter("fit", "stop_reason", value=DEEP), "cannot be parsed"),
    "optimizer_state_of_strings": (
        setter("optimizer", "param_groups", 0, "params", value=["a"]),
        "optimizer.param_groups",
    ),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return run(cfg("train.epochs=2"), tmp_path_factory.mktemp("forged") / "run").run_dir


@pytest.fixture
def forged_run(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("case", list(FORGED_META))
def test_forged_meta_is_refused_on_resume_in_one_line_naming_the_file(case, forged_run, capsys, monkeypatch):
    from tricklab.cli.main import main

    edit, says = FORGED_META[case]
    forge(forged_run / "checkpoints", edit_meta=edit)
    monkeypatch.chdir(forged_run.parent)

    rc = main(["train", "--resume", "run"])

    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err and err.count("\n") == 1, err
    assert "error: " in err and "checkpoints/epoch0002" in err and says in err, err


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (setter("files", "meta.json", "bytes", value="12"), "files.meta.json.bytes = '12'"),
        (dropper("files", "meta.json", "sha256"), "files.meta.json.sha256: Field required"),
        (setter("files", "meta.json", "sha256", value="x" * 64), "files.meta.json.sha256 = 'xxx"),
        (setter("files", "extra.bin", value={"bytes": 1, "sha256": "0" * 64}), "files.extra.bin"),
        (setter("files", value=[]), "files = []"),
        (setter("format", value=1), "format = 1"),
        (setter("files", "meta.json", "bytes", value=-1), "files.meta.json.bytes = -1"),
    ],
    ids=["string_size", "missing_sha", "bad_sha", "extra_file", "files_a_list", "format_int", "negative_size"],
)
def test_forged_manifest_is_refused_in_one_line_naming_the_file(edit, says, trained_run):
    path = list_checkpoints(trained_run / "checkpoints")[-1]
    manifest = json.loads((path / "MANIFEST.json").read_text())
    edit(manifest)
    forged = path.parent.parent.parent / f"forged-{path.name}"
    import shutil

    shutil.rmtree(forged, ignore_errors=True)
    shutil.copytree(path, forged)
    (forged / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(forged)
    msg = str(err.value)
    assert str(forged) in msg and "MANIFEST.json" in msg and says in msg and "\n" not in msg, msg


def test_a_forged_newest_checkpoint_is_skipped_for_the_previous_valid_one(forged_run):
    newest = list_checkpoints(forged_run / "checkpoints")[-1]
    forge(forged_run / "checkpoints", edit_meta=setter("position", "epoch", value=1e30))
    path, _, notes = latest_checkpoint(forged_run / "checkpoints")  # no schema: it parses
    assert path == newest
    with pytest.raises(CheckpointError, match=r"no valid checkpoint .*position\.epoch = 1e\+30"):
        latest_checkpoint(forged_run / "checkpoints", check=ck.check_state)


def test_a_real_checkpoint_passes_the_schema(trained_run):
    for path in list_checkpoints(trained_run / "checkpoints"):
        ck.check_state(read_checkpoint(path), path)
