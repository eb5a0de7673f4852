"""Plugins by import path, by Python registration and by entry point, through train, doctor, lr-find and lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tricklab_testplugin as plug
from torch import nn

import tricklab
from tricklab.catalog import family
from tricklab.cli.main import main
from tricklab.config import Config, load_config

SMALL = "tricklab_testplugin:small_mlp"
BLOBS = "tricklab_testplugin:blobs"
TINY = ["train.epochs=3", "train.threads=1", "data.batch_size=16", "optim.lr=0.02"]


@pytest.fixture
def registry_cleanup():
    """Remove the plugins a test registers (registries are process-wide)."""
    before = {f: set(family(f).names()) for f in ("models", "datasets", "callbacks")}
    yield
    for f, names in before.items():
        for name in set(family(f).names()) - names:
            family(f).unregister(name)


def test_import_paths_for_model_and_dataset_train_and_write_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICKLAB_ALLOW_MODULES", "tricklab_testplugin")  # to read the run's config.yaml back
    cfg = load_config(overrides=[f"model.name={SMALL}", f"data.name={BLOBS}", "model.kwargs={hidden: 8}", *TINY])
    result = tricklab.run(cfg, out=tmp_path / "run")
    assert result.metrics["test_acc"] > 0.8  # well separated blobs
    assert result.model[1].out_features == 8  # model.kwargs reached the factory
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert load_config(tmp_path / "run" / "config.yaml").model.name == SMALL


def test_plugin_models_keep_their_own_init_and_builtins_get_he_normal():
    assert load_config(overrides=[f"model.name={SMALL}"]).init.scheme == "default"
    assert load_config().init.scheme == "he_normal"
    assert load_config(overrides=[f"model.name={SMALL}", "init.scheme=lecun_normal"]).init.scheme == "lecun_normal"


def test_shape_keys_a_plugin_takes_are_passed_and_the_others_refused():
    cfg = load_config(overrides=[f"model.name={SMALL}", "model.dropout=0.3"])
    assert cfg.model.factory_kwargs() == {"dropout": 0.3}
    assert cfg.model.depth is None and cfg.model.width is None


def test_each_model_gets_its_own_defaults():
    widths = {n: load_config(overrides=[f"model.name={n}"]).model.width for n in ("mlp", "cnn", "resnet", "inception")}
    assert widths == {"mlp": 512, "cnn": 32, "resnet": 16, "inception": 16}
    resnet = load_config(overrides=["model.name=resnet"]).model
    assert (resnet.depth, resnet.norm, resnet.residual) == (3, "batch", True)
    # a config switched to another model takes that model's defaults, not the MLP's 512 units
    assert Config().with_overrides({"model.name": "cnn"}).model.width == 32
    assert Config().with_overrides({"model.name": "cnn", "model.width": 8}).model.width == 8
    assert Config().with_overrides({"model.width": 64}).with_overrides({"model.name": "cnn"}).model.width == 64


def test_register_model_dataset_and_callback_by_name(registry_cleanup):
    @tricklab.register_model("tiny_net", help="a two-layer test net")
    def tiny_net(input_shape, num_classes, hidden=4):
        return plug.small_mlp(input_shape, num_classes, hidden)

    tricklab.register_dataset("my_blobs", plug.blobs)
    tricklab.register_callback("count_steps", plug.CountSteps)
    plug.CountSteps.seen.clear()
    result = tricklab.run(
        {
            "model": {"name": "tiny_net"},
            "data": {"name": "my_blobs", "kwargs": {"classes": 4}},
            "callbacks": [{"name": "count_steps", "kwargs": {"label": "x"}}],
            "train.epochs": 1,
            "train.threads": 1,
        },
        write=False,
    )
    assert result.model[1].out_features == 4
    assert plug.CountSteps.seen == list(range(1, result.metrics["steps"] + 1))
    assert "tiny_net" in tricklab.list_names("models")["models"]
    assert family("models").entry("tiny_net").source == "registered in Python"
    # a notebook cell run twice registers again; tricklab's own names are never replaced
    tricklab.register_model("tiny_net", tiny_net)
    with pytest.raises(tricklab.TrickLabError, match="cannot be replaced"):
        tricklab.register_model("mlp", tiny_net)


def test_tensor_pairs_from_a_loader_infer_shape_and_classes():
    from tricklab.assembly import load_data

    splits = load_data(load_config(overrides=["data.name=tricklab_testplugin:tensor_data"]))
    assert splits.info.input_shape == (6,) and splits.info.num_classes == 2
    assert len(splits.train) + len(splits.val) == 64 and len(splits.test) == 64


def cli(*args: str) -> int:
    return main(list(args))


def test_cli_train_doctor_lr_find_on_a_plugin_model(tmp_path, capsys):
    common = ["--set", f"model.name={SMALL}", "--set", f"data.name={BLOBS}", "--set", "train.threads=1"]
    assert cli("train", *common, "--set", "train.epochs=1", "--out", str(tmp_path / "t")) == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and 0 <= metrics["test_acc"] <= 1
    code = cli("doctor", *common, "--steps", "20", "--no-recheck", "--out", str(tmp_path / "d"))
    assert code in (0, 4) and (tmp_path / "d" / "index.html").is_file()
    assert cli("lr-find", *common, "--steps", "10", "--out", str(tmp_path / "l")) == 0
    assert (tmp_path / "l" / "lr_find.json").is_file()
    assert "suggested lr" in capsys.readouterr().out


def lab_study(name: str, model: str) -> dict:
    return {
        "name": name,
        "dataset": BLOBS,
        "base": {"model": {"name": model}, "train": {"epochs": 2, "threads": 1}, "data": {"batch_size": 16}},
        "baseline": "plain",
        "variants": {"plain": {}, "dropout": {"model.dropout": 0.5}},
    }


def test_lab_runs_an_importable_plugin_in_worker_processes(tmp_path, capsys):
    lab = tricklab.run_lab(lab_study("plug", SMALL), seeds=2, workers=2, out=tmp_path / "lab")
    assert lab.done == 4 and lab.failed == 0
    assert "worker processes" in lab.executor
    assert "worker processes" in capsys.readouterr().out
    assert {r["variant"] for r in lab.records} == {"plain", "dropout"}
    assert lab.to_csv().splitlines()[0].startswith("study,dataset,variant")


def test_lab_runs_a_model_defined_in_main_in_process(tmp_path, capsys, registry_cleanup):
    def local_net(input_shape, num_classes, dropout=0.0):  # defined in a function: no worker can import it
        return plug.small_mlp(input_shape, num_classes, 8, dropout)

    tricklab.register_model("local_net", local_net)
    lab = tricklab.run_lab(lab_study("local", "local_net"), seeds=2, out=tmp_path / "lab")
    assert lab.done == 4 and lab.failed == 0
    assert lab.executor.startswith("in-process") and "local_net" in lab.executor
    assert "in-process" in capsys.readouterr().out


def test_lab_cli_with_a_custom_study_naming_a_plugin(tmp_path):
    import yaml

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(lab_study("cli-plug", SMALL)))
    lab = ["lab", "--config", str(study), "--seeds", "2", "--workers", "1", "--out", str(tmp_path / "lab")]
    assert cli(*lab, "--allow-module", "tricklab_testplugin") == 0  # a study file names it: the user allows it
    assert (tmp_path / "lab" / "report.html").is_file()


def test_entry_point_plugins_are_listed_and_usable(tmp_path):
    """An installed package's entry points (a dist-info on sys.path) appear in `tricklab list` and configs."""
    dist = tmp_path / "tricklab_testplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tricklab-testplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[tricklab.models]\nep_mlp = {SMALL}\n\n[tricklab.datasets]\nep_blobs = {BLOBS}\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(plug.__file__).parent)]))
    listed = subprocess.run(
        [sys.executable, "-m", "tricklab", "list", "models"], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "ep_mlp" in listed.stdout and "plugin tricklab-testplugin" in listed.stdout
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "tricklab",
            "train",
            "--set",
            "model.name=ep_mlp",
            "--set",
            "data.name=ep_blobs",
            "--set",
            "train.epochs=1",
            "--set",
            "train.threads=1",
            "--out",
            str(tmp_path / "run"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    assert "test_acc" in trained.stdout


def test_importable_path_of_plugins():
    from tricklab.plugins import importable_path

    assert importable_path(plug.small_mlp) == SMALL
    assert importable_path(lambda: None) is None
    assert importable_path(nn.Linear) == "torch.nn.modules.linear:Linear"


def test_python_doctor_and_lr_finder_on_a_plugin_model_config():
    import torch.nn.functional as F

    from tricklab.assembly import assemble, optimizer_factory
    from tricklab.data import TensorBatches
    from tricklab.diagnostics.doctor import run_doctor
    from tricklab.tricks.lr_finder import lr_range_test

    cfg = load_config(overrides=[f"model.name={SMALL}", f"data.name={BLOBS}", "diagnostics.steps=20", *TINY])
    result = run_doctor(cfg, recheck=False)
    assert result.findings.steps == 20 and result.settings["model.norm"] is None
    parts = assemble(cfg)
    batches = TensorBatches(parts.splits.train.x, parts.splits.train.y, 16, shuffle=True, generator=parts.generator)
    found = lr_range_test(parts.model, batches, F.cross_entropy, optimizer_factory(cfg), num_steps=20)
    assert found.suggestion > 0 and len(found.lrs) == 20


@pytest.mark.parametrize("name", ["cnn", "resnet", "inception", "mlp"])
def test_builtin_models_take_cifar_shaped_inputs(name):
    from tricklab.assembly import check_output
    from tricklab.config import model_factory

    cfg = load_config(overrides=[f"model.name={name}"])
    model = model_factory(name)((3, 32, 32), 10, **cfg.model.factory_kwargs())
    check_output(model, torch.randn(2, 3, 32, 32), 10, name)
