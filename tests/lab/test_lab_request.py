"""``tricklab.run_lab`` and ``tricklab lab`` check a request the same way: same bounds, same refusals, same folder.

Each case is run through both faces up to the point where the lab would start (``tricklab.lab.lab.run_lab`` is
replaced by a stand-in that records what it was given), so a refusal or an accepted option is the face's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tricklab
from tricklab.cli.main import main
from tricklab.lab.request import BOUNDS, LabOptions
from tricklab.lab.sequential import CAP, FIRST


class _Reached(BaseException):
    """The lab would have started now, with these options and this folder."""

    def __init__(self, opts: LabOptions, out: Path):
        super().__init__()
        self.opts, self.out = opts, Path(out)


@pytest.fixture
def faces(monkeypatch, tmp_path, capsys):
    """``(python, shell)``: each runs a request (Python keyword arguments) through its face and returns
    ``("refused", message)`` or ``("ran", LabOptions, folder)``."""

    def reached(studies, opts, out, **kwargs):
        raise _Reached(opts, out)

    monkeypatch.setattr("tricklab.lab.lab.run_lab", reached)
    monkeypatch.chdir(tmp_path)

    def python(study="dropout", **kw):
        try:
            tricklab.run_lab(study, progress=False, **kw)
        except tricklab.TrickLabError as e:
            return ("refused", str(e))
        except _Reached as r:
            return ("ran", r.opts, r.out)
        raise AssertionError("run_lab neither refused nor started the lab")

    def shell(study="dropout", **kw):
        argv = ["lab", *(["--config", study] if study.endswith(".yaml") else [study])]
        for k, v in kw.items():
            flag = "--" + k.replace("_", "-")
            argv += [flag] if v is True else [flag, str(v)]
        try:
            code = main(argv)
        except _Reached as r:
            return ("ran", r.opts, r.out)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return ("refused", err.removeprefix("error: ").strip())

    return python, shell


def _cases():
    """(request, refused) for each bound of :data:`BOUNDS`: the bounds themselves pass, one beyond is refused."""
    extra = {"max_seeds": {"seeds": "auto"}, "max_retries": {"executor": "ray"}}
    for option, b in BOUNDS.items():
        for value, refused in ((b.low, False), (b.high, False), (b.low - 1, True), (b.high + 1, True)):
            yield pytest.param({option: value, **extra.get(option, {})}, refused, id=f"{option}={value}")


@pytest.mark.parametrize("request_, refused", list(_cases()))
def test_both_faces_take_and_refuse_the_same_bounds(faces, request_, refused):
    python, shell = faces
    got = python(**request_), shell(**request_)
    assert [g[0] for g in got] == ["refused" if refused else "ran"] * 2, got
    if refused:
        option = next(iter(request_))
        for message, name in zip((got[0][1], got[1][1]), (option, "--" + option.replace("_", "-")), strict=True):
            assert message.startswith(f"{name} = {request_[option]}: must be ")
            assert str(BOUNDS[option].low) in message
    else:
        assert got[0][1] == got[1][1]  # the same LabOptions
        assert got[0][2] == got[1][2] == Path("labs/mnist")


@pytest.mark.parametrize(
    "request_, words",
    [
        ({"max_seeds": 5}, "only with"),  # without seeds auto
        ({"seeds": 3, "max_seeds": 5}, "only with"),
        ({"address": "auto"}, "only with"),  # without the Ray executor
        ({"max_retries": 2}, "only with"),
        ({"dataset": "mnits"}, "unknown dataset 'mnits'"),
    ],
)
def test_both_faces_refuse_the_same_combinations(faces, request_, words):
    python, shell = faces
    for kind, message in (python(**request_), shell(**request_)):
        assert kind == "refused" and words in message


def test_both_faces_build_the_same_options(faces):
    python, shell = faces
    auto = python(seeds="auto"), shell(seeds="auto")
    assert auto[0][1] == auto[1][1] == LabOptions(seeds=FIRST, max_seeds=CAP)
    quick = python(quick=True, epochs=2, workers=1), shell(quick=True, epochs=2, workers=1)
    assert quick[0][1] == quick[1][1] == LabOptions(seeds=2, epochs=2, quick=True, workers=1)


PLUGIN = """
import tricklab

@tricklab.dataset
def loader(**kwargs):
    raise AssertionError("the lab never starts in these tests")
"""


def test_a_plugin_dataset_gets_the_same_filesystem_safe_folder_from_both_faces(faces, tmp_path, monkeypatch):
    (tmp_path / "labpath_ds.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    python, shell = faces
    want = Path("labs/labpath_ds_loader")
    for got in (python(dataset="labpath_ds:loader"), shell(dataset="labpath_ds:loader")):
        assert got[0] == "ran" and got[2] == want
    study = tmp_path / "study.yaml"  # a custom study whose own dataset is the plugin
    study.write_text("name: tiny\ndataset: labpath_ds:loader\nvariants:\n  a: {}\n  b: {model.width: 8}\n")
    monkeypatch.setenv("TRICKLAB_ALLOW_MODULES", "labpath_ds")  # a file may name it
    for got in (python(str(study)), shell(str(study))):
        assert got[0] == "ran" and got[2] == want, got
