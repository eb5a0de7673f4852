"""The public API at the package root: every name in tricklab.__all__ is importable and each function works."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

import tricklab

TINY = {"data.name": "synthetic", "train.epochs": 2, "train.threads": 1, "model.width": 16}


def test_every_public_name_resolves_and_import_stays_light():
    for name in tricklab.__all__:
        assert getattr(tricklab, name) is not None, name
    code = "import sys, tricklab; print('torch' in sys.modules, 'tricklab.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]  # `import tricklab` loads nothing heavy until a name is used


def test_fit_and_evaluate_are_the_loop_s():
    from tricklab.engine.loop import evaluate, fit

    assert tricklab.fit is fit and tricklab.evaluate is evaluate


def test_run_takes_a_mapping_a_yaml_path_or_a_config(tmp_path):
    a = tricklab.run(TINY, write=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic"}, "model": {"width": 16}, "train": {"threads": 1}}))
    b = tricklab.run(path, {"train.epochs": 2}, write=False)
    c = tricklab.run(tricklab.load_config(path), ["train.epochs=2"], out=tmp_path / "run")
    assert a.metrics["test_acc"] == b.metrics["test_acc"] == c.metrics["test_acc"]  # one config, one result
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in c.history]
    assert c.run_dir == tmp_path / "run" and (c.run_dir / "metrics.json").is_file()
    html = c._repr_html_()
    assert "test_acc" in html and "data:image/png;base64" in html and str(c.run_dir) in html


def test_run_refuses_what_is_not_a_config():
    with pytest.raises(tricklab.TrickLabError, match="expected a Config"):
        tricklab.run(42)
    with pytest.raises(tricklab.ConfigError, match="model.dropout = 1.5"):
        tricklab.run({"model.dropout": 1.5})


def deep_sigmoid_net() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(12):
        layers += [nn.Linear(64 if i else 64, 64), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(64, 4))
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0)  # N(0, 1): the init the lesson shows failing
    return net


def test_diagnose_any_model_finds_vanishing_gradients_and_leaves_the_model_alone(tmp_path):
    net = deep_sigmoid_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 1, 8, 8, generator=g), torch.randint(0, 4, (512,), generator=g)
    result = tricklab.diagnose(net, (x, y), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), steps=40)
    names = [v.name for v in result.verdicts]
    assert "vanishing_gradients" in names and not result.healthy
    assert result.prescription.get("init.scheme") == "glorot_normal"
    assert result.recheck is not None and "model.norm" in result.recheck.not_applied  # needs the model changed
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    page = result.save(tmp_path / "doc")
    assert page.is_file() and "vanishing_gradients" in page.read_text()
    assert "nn.init.xavier_normal_" in result.pytorch["init.scheme"]  # a model of your own: said in PyTorch
    assert "nn.init.xavier_normal_" in page.read_text() and "In PyTorch" in page.read_text()
    assert "vanishing_gradients" in result._repr_html_()
    assert result.config is None and result.settings["optim.lr"] == 0.1


def test_diagnose_accepts_a_dataloader_and_refuses_junk():
    from torch.utils.data import DataLoader, TensorDataset

    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    ds = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    result = tricklab.diagnose(net, DataLoader(ds, batch_size=32, shuffle=True), steps=20, recheck=False)
    assert result.findings.steps == 20
    with pytest.raises(tricklab.TrickLabError, match="not a torch.nn.Module"):
        tricklab.diagnose("net", ds)
    with pytest.raises(tricklab.TrickLabError, match="steps"):
        tricklab.diagnose(net, (torch.randn(8, 8), torch.zeros(8).long()), steps=0)


def test_run_lab_returns_records_csv_and_renders(tmp_path, capsys):
    study = {
        "name": "api-bn", "dataset": "synthetic",
        "base": {"model": {"width": 16}, "train": {"epochs": 2}},
        "variants": {"plain": {}, "bn": {"model.norm": "batch"}},
    }
    lab = tricklab.run_lab(study, seeds=2, workers=1, out=tmp_path / "lab")
    assert (lab.done, lab.failed, lab.skipped) == (4, 0, 0)
    by = {r["variant"]: r for r in lab.records}
    assert by["plain"]["baseline"] == "plain" and by["plain"]["diff_mean"] is None
    assert by["bn"]["seeds"] == 2 and by["bn"]["verdict"] and by["bn"]["diff_mean"] is not None
    assert by["bn"]["outcome"] in ("better", "worse", "equivalent", "undecided", "no signal")
    assert by["plain"]["outcome"] == "baseline" and by["plain"]["prob_improvement"] is None
    assert by["bn"]["verdict"].startswith(f"bn: {by['bn']['outcome']}") and 0 <= by["bn"]["prob_improvement"] <= 1
    assert 0 <= by["bn"]["test_acc_mean"] <= 1
    csv_text = lab.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == csv_text and csv_text.count("\n") == 3
    assert "api-bn on synthetic" in lab._repr_html_() and lab.report.is_file()
    again = tricklab.run_lab(study, seeds=2, workers=1, out=tmp_path / "lab", progress=False)
    assert (again.done, again.skipped) == (0, 4) and again.records == lab.records
    assert "runs:" in capsys.readouterr().out


def test_run_lab_by_name_and_bad_study():
    with pytest.raises(tricklab.TrickLabError, match="unknown study"):
        tricklab.run_lab("dropuot")
    with pytest.raises(tricklab.TrickLabError, match="expected a study name"):
        tricklab.run_lab(3.5)
    with pytest.raises(tricklab.TrickLabError, match="seeds = 0"):
        tricklab.run_lab("dropout", seeds=0)


def test_list_names_is_tricklab_list_as_data():
    names = tricklab.list_names()
    assert {"mlp", "cnn", "resnet", "inception"} <= set(names["models"])
    assert {"cifar10", "npz", "csv", "mnist1d"} <= set(names["datasets"])
    assert tricklab.list_names("optimizers") == {"optimizers": names["optimizers"]}


def test_a_key_set_twice_nested_and_dotted_is_refused():
    with pytest.raises(tricklab.TrickLabError, match="model.depth is set twice"):
        tricklab.as_config({"model": {"depth": 1}, "model.depth": 2})
    with pytest.raises(tricklab.TrickLabError, match="set twice"):
        tricklab.as_config({"model.depth": 2, "model": {"depth": 1}})


def test_the_reproduce_line_of_a_mapping_study_runs_it_again():
    from tricklab.api import _python_command
    from tricklab.lab.lab import LabOptions

    study = {"name": "m", "dataset": "synthetic", "variants": {"a": {}, "b": {"model.norm": "batch"}}}
    line = _python_command(study, LabOptions(seeds=2))
    assert line == f"tricklab.lab({study!r}, seeds=2)"
    assert _python_command("dropout", LabOptions(seeds=3, dataset="mnist1d")) == (
        "tricklab.lab('dropout', seeds=3, dataset='mnist1d')"
    )
