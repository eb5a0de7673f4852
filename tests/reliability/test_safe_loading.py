"""No load path runs code from a file: a malicious pickle put where a checkpoint, model or data file is
expected is refused, and the command it carries (touch a marker file) never runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.data import load_splits
from tricklab.engine.checkpoint import CheckpointError, list_checkpoints, load_model_weights, read_checkpoint
from tricklab.errors import DataError
from tricklab.models import build_model
from tricklab.runner import run


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def payloads(marker):
    """A plain pickle and a torch.save() file, both running ``touch marker`` when unpickled."""
    buf = io.BytesIO()
    torch.save({"weight": Evil(marker)}, buf)
    return {"pickle": pickle.dumps({"weight": Evil(marker)}), "torch_save": buf.getvalue()}


def test_the_payloads_are_live(payloads, marker):
    """Control: unpickling them does run the command, so the tests below would notice if anything did."""
    pickle.loads(payloads["pickle"])  # noqa: S301 - on purpose
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(payloads["torch_save"]), weights_only=False)  # noqa: S614 - on purpose
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    overrides = ["data.name=synthetic", "model.width=8", "model.depth=1", "train.epochs=1", "train.threads=1"]
    return run(load_config(overrides=overrides), base / "run").run_dir


@pytest.fixture
def run_dir(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    shutil.copytree(trained, tmp_path / "runs" / "run")
    return tmp_path / "runs" / "run"


def poison(run_dir, file: str, payload: bytes, *, fix_manifest: bool) -> None:
    """Put ``payload`` in place of ``file`` in every checkpoint; with ``fix_manifest`` its checksum matches."""
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        (ckpt / file).unlink()  # break hard links between checkpoints
        (ckpt / file).write_bytes(payload)
        if fix_manifest and file != "MANIFEST.json":
            manifest = json.loads((ckpt / "MANIFEST.json").read_text())
            manifest["files"][file] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
            (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
@pytest.mark.parametrize(
    "file, fix_manifest, says",
    [
        ("tensors.safetensors", False, "corrupt"),  # checksum: refused before it is read
        ("tensors.safetensors", True, "cannot be parsed"),  # checksum forged: safetensors refuses it
        ("meta.json", True, "cannot be parsed"),
        ("MANIFEST.json", False, "unreadable MANIFEST.json"),
    ],
    ids=["tensors", "tensors_forged_manifest", "meta_forged_manifest", "manifest"],
)
def test_resume_refuses_a_malicious_checkpoint(kind, file, fix_manifest, says, payloads, run_dir, marker, capsys):
    poison(run_dir, file, payloads[kind], fix_manifest=fix_manifest)

    code = main(["train", "--resume", str(run_dir)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no valid checkpoint" in err[0] and says in err[0]
    assert not marker.exists()
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        with pytest.raises(CheckpointError):
            read_checkpoint(ckpt)
    assert not marker.exists()


def test_resume_auto_skips_a_malicious_run(payloads, run_dir, marker, capsys):
    poison(run_dir, "tensors.safetensors", payloads["pickle"], fix_manifest=True)

    assert main(["train", "--resume", "auto"]) == 2
    assert "no run directory under 'runs' holds a valid checkpoint" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
def test_model_weights_loader_refuses_a_pickle(kind, payloads, run_dir, marker):
    (run_dir / "model.safetensors").write_bytes(payloads[kind])
    model = build_model("mlp", (1, 8, 8), 4, depth=1, width=8)
    before = [p.clone() for p in model.parameters()]

    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_model_weights(model, run_dir / "model.safetensors")

    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_model_weights_loader_reads_the_real_file(trained):
    model = build_model("mlp", (1, 8, 8), 4, depth=1, width=8)
    load_model_weights(model, trained / "model.safetensors")
    ckpt = read_checkpoint(trained / "checkpoints" / "epoch0001")
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


def test_resume_refuses_a_config_yaml_with_a_python_tag(run_dir, marker, capsys):
    (run_dir / "config.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")

    code = main(["train", "--resume", str(run_dir)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "config.yaml" in err[0] and "invalid YAML" in err[0] and "python/object/apply" in err[0]
    assert not marker.exists()


def test_config_file_with_a_python_tag_is_refused(tmp_path, marker, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "--config", "evil.yaml"]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_cached_mnist1d_with_a_pickled_object_array_is_refused(tmp_path, marker):
    (tmp_path / "mnist1d").mkdir()
    evil = np.array([Evil(marker)], dtype=object)
    with open(tmp_path / "mnist1d" / "mnist1d_default.npz", "wb") as f:
        np.savez(f, x=evil, y=evil, x_test=evil, y_test=evil)

    with pytest.raises(DataError, match="corrupt"):
        load_splits("mnist1d", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("replace", "says"),
    [
        (lambda p: p.symlink_to("/dev/zero"), "config.yaml"),  # refused before it is read
        (
            lambda p: p.write_text(
                "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                + "".join(f"{c}: &{c} [{', '.join([f'*{p_}'] * 10)}]\n" for p_, c in zip("abcde", "bcdef", strict=True))
            ),
            "more than 100000 values once its aliases are expanded",
        ),
        (lambda p: p.write_text("model: " + "[" * 3000 + "]" * 3000 + "\n"), "nested deeper than 50 levels"),
    ],
    ids=["dev_zero", "alias_bomb", "deep"],
)
def test_resume_refuses_a_hostile_config_yaml_in_one_line(run_dir, capsys, replace, says):
    (run_dir / "config.yaml").unlink()
    replace(run_dir / "config.yaml")

    code = main(["train", "--resume", str(run_dir)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "config.yaml" in err[0] and says in err[0], err
