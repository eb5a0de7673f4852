"""The Python API and the lab given what a hostile or careless user gives them: wrong types, models the loop cannot
train, studies whose variants read other data. Each is refused in one line naming the argument or key, never with
a traceback from deep inside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tricklab
from tricklab.catalog import family
from tricklab.cli.main import main
from tricklab.errors import TrickLabError
from tricklab.lab.lab import LabOptions, plan
from tricklab.lab.studies import custom_study

X, Y = torch.randn(64, 1, 8), torch.randint(0, 4, (64,))


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 4))


class NoParameters(nn.Module):
    """Logits from the inputs themselves: nothing to train."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1)[:, : self.num_classes]


class ReturnsATuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1)), {"aux": 0}


def on_meta() -> nn.Module:
    with torch.device("meta"):
        return linear()


def one_line(err: pytest.ExceptionInfo, *fragments: str) -> str:
    msg = str(err.value)
    assert isinstance(err.value, TrickLabError) and "\n" not in msg, msg
    assert all(f in msg for f in fragments), msg
    return msg


# --- diagnose ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "kwargs", "says"),
    [
        (NoParameters, (X, Y), {}, "model: the NoParameters has no trainable parameter"),
        (ReturnsATuple, (X, Y), {}, "model: it returned a tuple; the doctor needs a tensor of class logits"),
        (on_meta, (X, Y), {}, "model: the Sequential's tensors are on the meta device"),
        (linear, (X, Y.float()), {}, "data: labels y are a (64,) float32 tensor; cross-entropy takes"),
        (linear, (X, Y.int()), {}, "data: labels y are a (64,) int32 tensor"),
        (linear, (X, Y + 10), {}, "data: labels y range over 10..13; the model's 4 logits"),
        (linear, (X, Y), {"optimizer": 42}, "optimizer = 42: got an int; expected a torch.optim.Optimizer"),
        (linear, [(X, [0, 1])], {}, "data: the labels y of a batch = [0, 1]: got a list; expected a torch.Tensor"),
    ],
    ids=[
        "no_parameters",
        "tuple_output",
        "meta_device",
        "float_labels",
        "int32_labels",
        "labels_out_of_range",
        "optimizer_int",
        "labels_a_list",
    ],
)
def test_diagnose_refuses_what_it_cannot_train_in_one_line(model, data, kwargs, says):
    with pytest.raises(TrickLabError) as err:
        tricklab.diagnose(model(), data, steps=2, every=1, **kwargs)
    one_line(err, says)


def test_diagnose_names_a_failing_custom_loss():
    def loss_fn(out, y):
        return ((out - y) ** 2).mean()  # (64, 4) against (64,): broadcasting refuses

    with pytest.raises(TrickLabError) as err:
        tricklab.diagnose(linear(), (X, torch.randn(64, 3)), loss_fn=loss_fn, steps=2, every=1)
    one_line(err, "loss_fn(model(x), y) on the first batch raised RuntimeError")


@pytest.fixture
def no_parameter_model():
    tricklab.register_model("no_parameters_net", lambda input_shape, num_classes: NoParameters(num_classes))
    yield "no_parameters_net"
    family("models").unregister("no_parameters_net")


@pytest.mark.parametrize("command", ["train", "doctor"])
def test_a_plugin_model_with_no_parameters_is_refused_by_the_cli(command, no_parameter_model, tmp_path, capsys):
    sets = [f"model.name={no_parameter_model}", "data.name=synthetic", "train.epochs=1", "train.threads=1"]
    argv = [command, *(a for s in sets for a in ("--set", s)), "--out", str(tmp_path / "out")]

    rc = main(argv)

    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err and err.count("\n") == 1, err
    assert "model.name = 'no_parameters_net': built a model with no trainable parameter" in err, err


# --- run, load_config, evaluate, fit ----------------------------------------------------------------------------


def test_run_refuses_an_out_that_is_not_a_path(tmp_path):
    with pytest.raises(TrickLabError) as err:
        tricklab.run({"data.name": "synthetic", "train.epochs": 1}, out=42)
    one_line(err, "out = 42: got an int; expected a run directory's path")


@pytest.mark.parametrize("path", [42, ["a.yaml"], b"config.yaml"])
def test_load_config_refuses_a_path_that_is_not_one(path):
    with pytest.raises(TrickLabError) as err:
        tricklab.load_config(path)
    one_line(err, f"path = {path!r}", "expected a YAML file's path")


@pytest.mark.parametrize(
    ("model", "data", "says"),
    [
        (linear, 42, "data = 42: got an int; expected a TensorData, an (x, y) pair of tensors"),
        (linear, "x.npz", "data = 'x.npz': got a str"),
        (linear, X, "data = "),  # a lone tensor would be iterated row by row
        (lambda: 42, (X, Y), "model = 42: got an int; expected a torch.nn.Module"),
    ],
    ids=["int", "str", "lone_tensor", "model_int"],
)
def test_evaluate_refuses_data_or_a_model_of_another_kind(model, data, says):
    with pytest.raises(TrickLabError) as err:
        tricklab.evaluate(model(), data)
    one_line(err, says)


def test_evaluate_a_model_with_no_parameters_on_the_cpu():
    result = tricklab.evaluate(NoParameters(), (X, Y))
    assert 0 <= result["acc"] <= 1


@pytest.mark.parametrize(
    ("model", "says"),
    [(NoParameters, "model: the NoParameters has no trainable parameter"), (lambda: 42, "model = 42: got an int")],
    ids=["no_parameters", "int"],
)
def test_fit_refuses_a_model_it_cannot_train(model, says):
    with pytest.raises(TrickLabError) as err:
        tricklab.fit(model(), (X, Y), epochs=1)
    one_line(err, says)


def test_fit_refuses_validation_data_of_another_kind_before_training():
    model = linear()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(TrickLabError) as err:
        tricklab.fit(model, (X, Y), 42, epochs=1)
    one_line(err, "val = 42: got an int")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --- Doctor.save ------------------------------------------------------------------------------------------------


@pytest.fixture
def doctor():
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tricklab.Doctor(model, opt, every=1) as d:
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), Y).backward()
            opt.step()
    return d


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("/proc/nope", "save('/proc/nope'): cannot write the report there"),
        ("/dev/null/report", "save('/dev/null/report'): cannot write the report there (Not a directory)"),
        (42, "out_dir = 42: got an int; expected a folder's path"),
    ],
    ids=["proc", "under_a_device", "int"],
)
def test_doctor_save_where_it_cannot_write_is_one_line(doctor, out, says):
    with pytest.raises(TrickLabError) as err:
        doctor.save(out)
    one_line(err, says)


def test_diagnose_result_save_where_it_cannot_write_is_one_line():
    result = tricklab.diagnose(linear(), (X, Y), steps=2, every=1, recheck=False)
    with pytest.raises(TrickLabError) as err:
        result.save("/proc/nope")
    one_line(err, "save('/proc/nope'): cannot write the report there")


# --- studies whose variants read other data ---------------------------------------------------------------------


def npz_study(variants: dict) -> dict:
    return {"name": "two_files", "dataset": "npz", "base": {"data.path": "a.npz"}, "variants": variants}


@pytest.mark.parametrize(
    ("variants", "says"),
    [
        ({"a": {}, "b": {"data.path": "b.npz"}}, "variants 'a' and 'b' read different data (data.path = 'a.npz' vs "),
        (
            {"a": {}, "b": {"data.kwargs": {"num_classes": 3}}},
            "(data.kwargs = {} vs {'num_classes': 3})",
        ),
        ({"a": {}, "b": {"data.dir": "/elsewhere"}}, "(data.dir = None vs '/elsewhere')"),
    ],
    ids=["path", "kwargs", "dir"],
)
def test_study_variants_reading_other_data_are_refused(variants, says):
    study, _, _ = custom_study(npz_study(variants))
    with pytest.raises(TrickLabError) as err:
        plan([study], LabOptions(seeds=1))
    one_line(err, "study 'two_files': ", says, "must agree on data.name, data.path, data.kwargs, data.dir")


def test_study_variants_may_feed_the_same_data_differently():
    variants = {
        "a": {},
        "scaled": {"data.scale": "minmax01"},
        "batch": {"data.batch_size": 32},
        "fewer": {"data.subset": 100},
        "val": {"data.val_fraction": 0.2},
    }
    study, _, _ = custom_study(npz_study(variants))
    (planned,) = plan([study], LabOptions(seeds=1))
    assert {cfg.data.path for cfg in planned.configs.values()} == {"a.npz"}


def test_the_lab_cli_refuses_a_study_over_two_npz_files(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: two_files\ndataset: npz\nbaseline: two\nvariants:\n"
        "  two: {data.path: two.npz}\n  three: {data.path: three.npz}\n"
    )

    rc = main(["lab", "--config", str(study), "--out", str(tmp_path / "lab")])

    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err and err.count("\n") == 1, err
    assert "variants 'two' and 'three' read different data (data.path = 'two.npz' vs 'three.npz')" in err, err
    assert not (tmp_path / "lab").exists()
