"""The Python API speaks the CLI's verbs: train, doctor, lab, report, lr_find, with create_model, load_weights and
load_run for models; the earlier names still work; the errors a run raises are importable from ``tricklab``; and
where a config names a model, your own nn.Module, its class or a factory is taken instead."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import tricklab

OWN = {"data.name": "synthetic", "train.epochs": 1, "train.threads": 1}  # for models of your own
TINY = {**OWN, "model.width": 16, "model.depth": 1}  # the built-in MLP, small


class TinyNet(nn.Module):
    """A net of the user's own, built with no arguments (synthetic data: 1×8×8 inputs, 4 classes)."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, x):
        return self.body(x)


def contract_factory(input_shape, num_classes, hidden=8):
    """A factory of the plugin contract: it is told the input shape and the classes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(torch.tensor(input_shape).prod()), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@pytest.fixture(autouse=True)
def _forget_the_models_passed():
    """A model passed as model= is registered for the session; later test modules list the registry."""
    from tricklab.catalog import family

    before = set(family("models").names())
    yield
    for name in set(family("models").names()) - before:
        family("models").unregister(name)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- names -----------------------------------------------------------------------------------------------------


def test_the_verbs_are_the_api_functions_and_the_old_names_their_aliases():
    from tricklab import api

    for verb in ("train", "doctor", "lr_find", "create_model", "load_weights", "load_run"):
        assert getattr(tricklab, verb) is getattr(api, verb), verb
    assert tricklab.run is tricklab.train and tricklab.run_lab is api.lab
    assert callable(tricklab.diagnose) and tricklab.diagnose is api.diagnose


def test_lab_and_report_are_the_verbs_before_and_after_their_subpackages_are_imported():
    """``tricklab.lab`` and ``tricklab.report`` are subpackages too: importing one sets it on ``tricklab``, so the
    name must be the verb whichever comes first. In a fresh interpreter, to see the first access."""
    code = """
import inspect, sys, tricklab
first = tricklab.lab, tricklab.report
import tricklab.lab.store, tricklab.lab.studies, tricklab.report.lab_report, tricklab.engine
after = tricklab.lab, tricklab.report
print(first[0] is after[0] is sys.modules['tricklab.lab'], first[1] is after[1] is sys.modules['tricklab.report'])
print(callable(tricklab.lab), callable(tricklab.report), callable(tricklab.train))
print('study' in inspect.signature(tricklab.lab).parameters, 'lab_dir' in inspect.signature(tricklab.report).parameters)
print(tricklab.lab.studies.STUDIES is not None, tricklab.train.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True"] * 8 + ["train"]


def test_the_lab_verb_runs_when_called_through_the_package(monkeypatch):
    from tricklab import api

    seen = []
    monkeypatch.setattr(api, "lab", lambda *a, **k: seen.append((a, k)) or "lab ran")
    monkeypatch.setattr(api, "report", lambda *a, **k: seen.append((a, k)) or "report ran")
    assert tricklab.lab("dropout", seeds=2) == "lab ran" and tricklab.report("labs/x") == "report ran"
    assert seen == [(("dropout",), {"seeds": 2}), (("labs/x",), {})]


ERRORS = (
    "NonFiniteError",
    "DivergedError",
    "CheckpointError",
    "Interrupted",
    "FolderInUse",
    "OutputError",
    "StoreError",
    "LabInterrupted",
    "UnknownNameError",
    "ConfigError",
    "DataError",
)


@pytest.mark.parametrize("name", ERRORS)
def test_the_errors_a_run_raises_are_exported(name):
    assert name in tricklab.__all__
    err = getattr(tricklab, name)
    assert issubclass(err, tricklab.TrickLabError)


class NaNNet(TinyNet):
    def forward(self, x):
        return self.body(x) * float("nan")


def test_the_exported_errors_are_the_ones_train_raises():
    with pytest.raises(tricklab.NonFiniteError):  # the loss is NaN at the first step
        tricklab.train(OWN, model=NaNNet, write=False)


# --- train -----------------------------------------------------------------------------------------------------


def test_train_takes_the_cli_s_shorthands_and_is_run():
    a = tricklab.train(TINY, write=False)
    b = tricklab.run({**TINY, "train.epochs": 3, "data.name": "mnist1d"}, data="synthetic", epochs=1, write=False)
    assert a.config.hash() == b.config.hash() and a.metrics["test_acc"] == b.metrics["test_acc"]
    assert len(b.history) == 1
    with pytest.raises(tricklab.TrickLabError, match=r"epochs=2 and the override train.epochs=1 both set"):
        tricklab.train(TINY, ["train.epochs=1"], epochs=2, write=False)
    with pytest.raises(tricklab.ConfigError, match=r"epochs \(train.epochs\) = 0"):
        tricklab.train(TINY, epochs=0, write=False)
    with pytest.raises(tricklab.TrickLabError, match="data = .*expected a dataset's name"):
        tricklab.train(TINY, data=(torch.zeros(4, 8), torch.zeros(4)), write=False)


def test_train_takes_a_built_model_and_leaves_it_as_it_was():
    net = TinyNet()
    before = weights(net)
    result = tricklab.train(OWN, model=net, write=False)
    assert same(weights(net), before)  # the model passed is copied
    assert isinstance(result.model, TinyNet) and result.model is not net
    assert not same(weights(result.model), before)  # the copy trained
    assert result.config.model.name == f"{__name__}.TinyNet"
    assert f"{__name__}.TinyNet" in tricklab.list_names("models")["models"]  # shown by tricklab list models
    first = tricklab.train(net, ["train.threads=1"], data="synthetic", epochs=1, write=False)  # model first
    assert isinstance(first.model, TinyNet) and first.config.hash() == result.config.hash()


def test_train_takes_a_class_a_factory_and_a_plugin_contract_factory():
    by_class = tricklab.train(OWN, model=TinyNet, write=False)
    assert isinstance(by_class.model, TinyNet) and by_class.model.body[1].out_features == 8
    wide = tricklab.train(OWN, {"model.kwargs": {"hidden": 12}}, model=TinyNet, write=False)
    assert wide.model.body[1].out_features == 12  # a keyword argument of the class is model.kwargs
    by_lambda = tricklab.train(OWN, model=lambda: TinyNet(hidden=5), write=False)
    assert by_lambda.model.body[1].out_features == 5
    contract = tricklab.train(OWN, {"model.kwargs": {"hidden": 6}}, model=contract_factory, write=False)
    assert contract.model[1].in_features == 64 and contract.model[3].out_features == 4  # told the shape
    assert contract.model[1].out_features == 6

    def told_by_name(input_shape=None, num_classes=None):  # named so: told the shape though it has defaults
        return contract_factory(input_shape, num_classes, hidden=3)

    named = tricklab.train(OWN, model=told_by_name, write=False)
    assert named.model[1].in_features == 64 and named.model[3].out_features == 4


def test_train_resume_continues_a_run_with_its_stored_config(tmp_path):
    first = tricklab.train(OWN, model=TinyNet, epochs=2, out=tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "epoch0002").rename(tmp_path / "run" / "checkpoints" / "later")  # as if cut
    again = tricklab.train(model=TinyNet, resume=tmp_path / "run")
    assert again.run_dir == tmp_path / "run" and len(again.history) == 2
    assert (tmp_path / "run" / "checkpoints" / "epoch0002").is_dir()  # epoch 2 trained again from epoch 1's
    assert again.config.hash() == first.config.hash() and again.history[0] == first.history[0]
    with pytest.raises(tricklab.TrickLabError, match="resume: .*leave out config, epochs"):
        tricklab.train(OWN, epochs=3, resume=tmp_path / "run")


def test_train_refuses_what_is_not_a_model_and_a_built_model_for_an_ensemble():
    with pytest.raises(tricklab.TrickLabError, match="model = 42: got an int"):
        tricklab.train(TINY, model=42, write=False)
    with pytest.raises(tricklab.TrickLabError, match="cannot be called|signature"):
        tricklab.train(TINY, model=lambda a, b, c: None, write=False)
    with pytest.raises(tricklab.TrickLabError, match=r"ensemble = 2 .*pass its class or a factory"):
        tricklab.train(OWN, {"averaging.ensemble": 2}, model=TinyNet(), write=False)
    with pytest.raises(tricklab.ConfigError, match="model.depth = 1: .* takes no 'depth' argument"):
        tricklab.train(TINY, model=TinyNet, write=False)


# --- doctor ----------------------------------------------------------------------------------------------------


def test_doctor_on_a_config_is_the_doctor_command(tmp_path):
    result = tricklab.doctor(TINY, steps=8, recheck=False, out=tmp_path / "doc")
    assert isinstance(result, tricklab.DoctorResult) and result.config is not None
    assert result.config.diagnostics.steps == 8 and result.findings.steps <= 8
    for name in ("index.html", "doctor.json", "records.json", "signal.json", "config.yaml"):
        assert (tmp_path / "doc" / name).is_file(), name
    assert json.loads((tmp_path / "doc" / "doctor.json").read_text())["healthy"] == result.healthy
    with pytest.raises(tricklab.TrickLabError, match="out .* already exists and is not empty"):
        tricklab.doctor(TINY, steps=8, recheck=False, out=tmp_path / "doc")


def test_doctor_on_a_config_with_a_model_class_and_preflight():
    result = tricklab.doctor(OWN, model=TinyNet, steps=6, recheck=False)
    assert result.config.model.name.endswith("TinyNet")
    checks = tricklab.doctor(OWN, model=TinyNet, preflight=True, steps=20)
    assert isinstance(checks, tricklab.PreflightResult) and checks.checks


def test_doctor_on_a_model_is_diagnose():
    torch.manual_seed(0)
    net = TinyNet()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))
    before = weights(net)
    a = tricklab.doctor(net, (x, y), steps=10, every=5, recheck=False)
    b = tricklab.diagnose(net, (x, y), steps=10, every=5, recheck=False)
    c = tricklab.doctor(model=net, data=(x, y), steps=10, every=5, recheck=False)
    assert a.config is None and [v.name for v in a.verdicts] == [v.name for v in b.verdicts] == [
        v.name for v in c.verdicts
    ]
    assert a.findings.steps == b.findings.steps == 10 and same(weights(net), before)
    with pytest.raises(tricklab.TrickLabError, match="doctor on a model of yours takes no preflight"):
        tricklab.doctor(net, (x, y), preflight=True)
    with pytest.raises(tricklab.TrickLabError, match="doctor on a config takes no every"):
        tricklab.doctor(TINY, every=5)


# --- lab and report ----------------------------------------------------------------------------------------------

STUDY = {
    "name": "verbs",
    "dataset": "synthetic",
    "base": {"train": {"epochs": 1, "threads": 1}},
    "variants": {"adam": {}, "sgd": {"optim.name": "sgd", "optim.lr": 0.05}},
}


def test_lab_takes_a_model_class_and_report_renders_it_elsewhere(tmp_path):
    lab = tricklab.lab(STUDY, model=TinyNet, seeds=2, workers=1, out=tmp_path / "lab", progress=False)
    assert (lab.done, lab.failed) == (4, 0) and {r["variant"] for r in lab.records} == {"adam", "sgd"}
    page = tricklab.report(tmp_path / "lab", out=tmp_path / "site", markdown=True)
    assert page == tmp_path / "site" / "report.html" and page.is_file()
    assert "verbs" in (tmp_path / "site" / "results.md").read_text()
    again = tricklab.run_lab(STUDY, model=TinyNet, seeds=2, workers=1, out=tmp_path / "lab", progress=False)
    assert (again.done, again.skipped) == (0, 4)  # the same class, the same name: its runs are found again


def test_lab_refuses_a_built_model_in_one_line_saying_what_to_pass(tmp_path):
    with pytest.raises(tricklab.TrickLabError) as e:
        tricklab.lab(STUDY, model=TinyNet(), seeds=2, out=tmp_path / "lab", progress=False)
    assert "fresh model for every seed" in str(e.value) and "model=TinyNet" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "lab").exists()


def test_report_refuses_a_folder_without_a_lab(tmp_path):
    with pytest.raises(tricklab.TrickLabError, match="holds no lab results"):
        tricklab.report(tmp_path / "nothing")


# --- lr_find -----------------------------------------------------------------------------------------------------


def test_lr_find_suggests_a_learning_rate_and_writes_its_files(tmp_path):
    found = tricklab.lr_find(TINY, steps=12, out=tmp_path / "lr")
    assert 1e-7 <= found.suggestion <= 10 and len(found.lrs) == len(found.losses) > 0
    stored = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert stored["suggestion"] == found.suggestion and stored["steps"] == 12
    assert (tmp_path / "lr" / "lr_find.png").is_file() and (tmp_path / "lr" / "config.yaml").is_file()
    with pytest.raises(tricklab.ConfigError, match="steps = 1"):
        tricklab.lr_find(TINY, steps=1)
    with pytest.raises(tricklab.TrickLabError, match="out .* already exists and is not empty"):
        tricklab.lr_find(TINY, steps=12, out=tmp_path / "lr")
    assert tricklab.lr_find(OWN, model=TinyNet, steps=5).suggestion > 0


# --- models in and out -------------------------------------------------------------------------------------------


def test_create_model_builds_what_a_run_builds():
    net = tricklab.create_model("mlp", TINY, width=24)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)][0] == 24
    cfg = tricklab.as_config(TINY, {"model.width": 24})
    assert same(weights(net), weights(tricklab.assemble(cfg).model))  # seeded and initialized as the run's
    assert isinstance(tricklab.create_model(TinyNet, data="synthetic"), TinyNet)
    with pytest.raises(tricklab.ConfigError, match="unknown model"):
        tricklab.create_model("mpl", data="synthetic")


def test_a_run_folder_loads_back_with_its_trained_weights(tmp_path):
    result = tricklab.train(TINY, out=tmp_path / "run")
    x = tricklab.assemble(result.config).splits.test.x[:32]
    result.model.eval()
    with torch.no_grad():
        want = result.model(x)
        loaded = tricklab.load_run(tmp_path / "run")
        assert not loaded.training and torch.equal(loaded(x), want)
        fresh = tricklab.create_model(config=result.config)
        assert not torch.equal(fresh.eval()(x), want)
        assert torch.equal(tricklab.load_weights(fresh, tmp_path / "run")(x), want)
        assert torch.equal(tricklab.load_weights(fresh, tmp_path / "run" / "model.safetensors")(x), want)


def test_a_run_of_your_own_model_loads_back_given_the_model(tmp_path):
    from tricklab.catalog import family

    result = tricklab.train(OWN, model=TinyNet, out=tmp_path / "run")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        want = result.model.eval()(x)
        assert torch.equal(tricklab.load_run(tmp_path / "run")(x), want)  # still known in this session
        family("models").unregister(result.config.model.name)  # as in a new session
        with pytest.raises(tricklab.TrickLabError, match=r"not known here .*load_run\(run_dir, model="):
            tricklab.load_run(tmp_path / "run")
        assert torch.equal(tricklab.load_run(tmp_path / "run", model=TinyNet)(x), want)


def test_weights_that_do_not_fit_are_one_line_checkpoint_errors(tmp_path):
    tricklab.train(TINY, out=tmp_path / "run")
    with pytest.raises(tricklab.CheckpointError, match="does not fit the TinyNet"):
        tricklab.load_weights(TinyNet(), tmp_path / "run")
    with pytest.raises(tricklab.CheckpointError, match="no such weights file"):
        tricklab.load_weights(TinyNet(), tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(tricklab.CheckpointError, match="not readable as safetensors"):
        tricklab.load_weights(TinyNet(), tmp_path / "bad.safetensors")


def test_signatures_name_the_cli_s_flags():
    assert {"model", "data", "epochs", "seed", "device", "out"} <= set(inspect.signature(tricklab.train).parameters)
    assert {"model", "data", "steps", "seed", "device", "out", "recheck", "preflight"} <= set(
        inspect.signature(tricklab.doctor).parameters
    )
    assert {"model", "dataset", "seeds", "epochs", "quick", "workers", "out", "device"} <= set(
        inspect.signature(tricklab.lab).parameters
    )
    assert {"out", "markdown", "force"} <= set(inspect.signature(tricklab.report).parameters)
    assert {"steps", "out"} <= set(inspect.signature(tricklab.lr_find).parameters)


def examples(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    blocks = re.findall(r"Example::\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")
    return [inspect.cleandoc("\n".join(line[4:] for line in b.splitlines())) for b in blocks]


@pytest.mark.parametrize("verb", ["create_model", "load_run", "load_weights"])
def test_the_examples_of_the_new_verbs_run_as_written(verb, tmp_path_factory, monkeypatch, mnist1d_root):
    """``train``'s runs in test_docstring_examples (as ``run``); those of ``doctor`` and ``lr_find`` (minutes on two
    busy cores) and of ``lab`` and ``report`` (a whole lab) are left out: their calls are tested above."""
    blocks = examples(getattr(tricklab, verb))
    assert blocks, f"{verb} has no Example:: block"
    monkeypatch.chdir(tmp_path_factory.mktemp(verb))
    monkeypatch.setenv("TRICKLAB_DATA", str(mnist1d_root))
    for block in blocks:
        exec(compile(block, f"example of tricklab.{verb}", "exec"), {"tricklab": tricklab, "torch": torch})
