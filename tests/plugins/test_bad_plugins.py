"""Bad plugin input is bad input: one line naming the key, the path and what is wrong; exit 2 from the CLI,
ConfigError from Python; no traceback and no run directory."""

from __future__ import annotations

import pytest

import tricklab
from tricklab.cli.main import main
from tricklab.config import load_config

P = "tricklab_testplugin"
#: (overrides, the key the one-line error names, words it must contain)
CASES = {
    "module not found": (["model.name=no_such_pkg.nets:cnn"], "model.name", "cannot import 'no_such_pkg.nets'"),
    "attribute missing": ([f"model.name={P}:nothing_here"], "model.name", "has no attribute 'nothing_here'"),
    "not callable": ([f"model.name={P}:NOT_CALLABLE"], "model.name", "not a callable"),
    "unknown kwarg": ([f"model.name={P}:small_mlp", "model.kwargs={hiden: 3}"], "model.kwargs",
                      "unexpected keyword argument 'hiden'"),
    "missing argument": ([f"model.name={P}:needs_width"], "model.kwargs", "missing a required argument: 'channels'"),
    "shape key not taken": ([f"model.name={P}:small_mlp", "model.width=3"], "model.width", "takes no 'width'"),
    "not a module": ([f"model.name={P}:not_a_module"], "model.name", "not a torch.nn.Module"),
    "wrong output shape": ([f"model.name={P}:wrong_output"], "model.name", "expected logits of shape (2, 4)"),
    "raises when built": ([f"model.name={P}:raises_when_built"], "model.name", "RuntimeError: out of ideas"),
    "dataset module missing": (["data.name=nowhere:load"], "data.name", "cannot import 'nowhere'"),
    "dataset kwarg": ([f"data.name={P}:blobs", "data.kwargs={n_trian: 3}"], "data.kwargs", "n_trian"),
    "dataset returns junk": ([f"data.name={P}:NOT_CALLABLE"], "data.name", "not a callable"),
    "callback missing": (["callbacks=[{name: 'nope:cb'}]"], "callbacks.name", "cannot import 'nope'"),
    "callback kwarg": ([f"callbacks=[{{name: '{P}:CountSteps', kwargs: {{bad: 1}}}}]"], "callbacks.kwargs", "bad"),
    "unknown registered name": (["model.name=small_mlpp"], "model.name", "unknown model"),
}
BASE = ["data.name=synthetic", "train.epochs=1", "train.threads=1"]


@pytest.mark.parametrize("case", list(CASES))
def test_cli_bad_plugin_is_one_line_exit_2_and_no_run_dir(case, tmp_path, capsys):
    overrides, key, words = CASES[case]
    args = ["train", "--out", str(tmp_path / "run")]
    for o in [*BASE, *overrides]:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(f"error: {key}") and words in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_python_bad_plugin_raises_config_error(case):
    overrides, key, words = CASES[case]
    with pytest.raises(tricklab.ConfigError) as info:
        tricklab.run(load_config(overrides=[*BASE, *overrides]), write=False)
    assert info.value.key == key and words in str(info.value)


def test_kwargs_must_be_plain_data():
    with pytest.raises(tricklab.ConfigError, match="model.kwargs.hidden"):
        tricklab.as_config({"model": {"name": f"{P}:small_mlp", "kwargs": {"hidden": object()}}})


def test_a_dataset_loader_returning_junk_names_the_dataset(tmp_path):
    def junk():
        return 42

    tricklab.register_dataset("junk_data", junk)
    try:
        with pytest.raises(tricklab.DataError, match="dataset 'junk_data': the loader returned int"):
            tricklab.run({"data.name": "junk_data"}, write=False)
        assert main(["train", "--set", "data.name=junk_data", "--out", str(tmp_path / "r")]) == 2
        assert not (tmp_path / "r").exists()
    finally:
        from tricklab.catalog import family

        family("datasets").unregister("junk_data")


@pytest.mark.parametrize(
    ("returned", "words"),
    [
        (lambda: ((__import__("torch").zeros(4, 3), __import__("torch").tensor([0, 1, 2])), ([], [])), "4 examples"),
        (lambda: ((__import__("torch").full((4, 2), float("nan")), __import__("torch").arange(4)),) * 2, "NaN/Inf"),
        (lambda: ((__import__("torch").zeros(4, 2), __import__("torch").tensor([0, 1, -1, 2])),) * 2, "negative"),
        (lambda: ((__import__("torch").zeros(4, 2), __import__("torch").tensor([0.5, 1, 1, 2])),) * 2, "integers"),
    ],
)
def test_bad_tensors_from_a_loader(returned, words):
    from tricklab.data import as_raw_dataset

    with pytest.raises(tricklab.DataError, match=words):
        as_raw_dataset(returned(), "mine")
