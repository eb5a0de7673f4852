"""The CLI on bad input: exit code 2, exactly one ``error:`` line naming the culprit, no traceback, no files.

Most cases run ``tricklab.cli.main.main(argv)`` in-process (fast); two run ``python -m tricklab`` for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tricklab.catalog import FAMILIES
from tricklab.cli.main import main
from tricklab.config import load_config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh folder holding a few config files and a non-empty run folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))  # never the user's cache
    (tmp_path / "list.yaml").write_text("- model\n- data\n")
    (tmp_path / "typo.yaml").write_text("model:\n  widht: 64\n")
    (tmp_path / "broken.yaml").write_text("model:\n  width: [1, 2\n  depth: 3\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text("{}")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir.yaml").mkdir()
    return tmp_path


CASES = [
    # (argv, fragments the one error line must contain)
    (["train", "--set", "model.dropout=1.5"], ["model.dropout = 1.5", "must be < 1"]),
    (["train", "--set", "model.dropout=-0.1"], ["model.dropout = -0.1", "must be >= 0"]),
    (["train", "--set", "optim.lr=0"], ["optim.lr = 0", "must be > 0"]),
    (["train", "--set", "optim.lr=.nan"], ["optim.lr = nan", "finite"]),
    (["train", "--set", "optim.lr=.inf"], ["optim.lr = inf", "finite"]),
    (["train", "--set", "data.batch_size=0"], ["data.batch_size = 0", "must be > 0"]),
    (["train", "--set", "data.val_fraction=1"], ["data.val_fraction = 1", "must be < 1"]),
    (["train", "--set", "model.name=mpl"], ["model.name = 'mpl'", "did you mean 'mlp'?"]),
    (["train", "--set", "data.name=mnsit"], ["data.name = 'mnsit'", "did you mean 'mnist'?"]),
    (["train", "--set", "model.activation=rleu"], ["model.activation = 'rleu'", "did you mean 'relu'?"]),
    (["train", "--set", "model.norm=batchnorm"], ["model.norm = 'batchnorm'", "did you mean 'batch'?"]),
    (["train", "--set", "data.scale=standardise"], ["data.scale = 'standardise'", "'standardize'"]),
    (["train", "--set", "model.widht=64"], ["model.widht = 64", "did you mean 'model.width'?"]),
    (["train", "--set", "foo.bar=1"], ["foo = {'bar': 1}", "unknown key"]),
    (["train", "--set", "model.width=abc"], ["model.width = 'abc'", "must be an integer"]),
    (["train", "--set", "train.seed=-1"], ["train.seed = -1", "must be >= 0"]),
    (["train", "--set", "train.device=gpu"], ["train.device = 'gpu'", "'cpu'"]),
    (["train", "--set", "model=3"], ["model = 3", "mapping"]),
    (["train", "--set", "foo"], ["--set 'foo'", "key.sub=value"]),
    (["train", "--set"], ["--set", "expected one argument"]),
    (["train", "--config", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["train", "--config", "adir.yaml"], ["adir.yaml", "cannot be read"]),
    (["train", "--config", "list.yaml"], ["list.yaml", "mapping of sections, got list"]),
    (["train", "--config", "typo.yaml"], ["model.widht = 64", "did you mean 'model.width'?"]),
    (["train", "--config", "broken.yaml"], ["broken.yaml", "line 3", "invalid YAML"]),
    (["train", "--config", "typo.yaml", "--set", "model.widht=null"], ["model.widht = None"]),
    (["train", "--out", "full"], ["--out 'full'", "not empty"]),
    (["train", "--out", "afile"], ["--out 'afile'", "not empty"]),
    (["train", "--set", "data.name=synthetic", "--set", "data.val_fraction=0.0001"], ["data.val_fraction = 0.0001"]),
    (["trian"], ["invalid choice", "'trian'"]),
    (["train", "--bogus"], ["unrecognized arguments", "--bogus"]),
    ([], ["required", "COMMAND"]),
    (["list", "modles"], ["unknown registry 'modles'", "did you mean 'models'?"]),
    pytest.param(
        ["train", "--set", "train.device=cuda", "--set", "data.name=synthetic"],
        ["train.device = 'cuda'", "no CUDA device"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU"),
    ),
]


def case_id(case) -> str:
    argv = case.values[0] if hasattr(case, "values") else case[0]
    return " ".join(argv) or "(no arguments)"


def one_error_line(capsys, rc: int) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}, stderr: {err}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "says"), CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_gives_one_error_line_exit_2_and_writes_nothing(workdir, capsys, argv, says):
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    runs = [argv]
    if argv[:1] == ["train"] and "--out" not in argv and argv[-1] != "--set":
        runs.append(argv + ["--out", "new_run"])

    for args in runs:
        line = one_error_line(capsys, main(list(args)))
        for fragment in says:
            assert fragment in line, f"{fragment!r} not in {line!r}"

    assert not (workdir / "runs").exists(), "a run directory was created"
    assert not (workdir / "new_run").exists(), "the --out directory was created"
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_debug_after_the_subcommand_is_accepted(workdir, capsys):
    rc = main(["train", "--set", "model.dropout=1.5", "--debug"])
    _, err = capsys.readouterr()
    assert rc == 2 and "model.dropout = 1.5" in err and "unrecognized" not in err


# --- for real, in a subprocess --------------------------------------------------------------------------


def run_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRICKLAB_DATA": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "tricklab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_subprocess_bad_value_exits_2_with_one_line(tmp_path):
    p = run_cli(["train", "--set", "model.dropout=1.5"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: model.dropout = 1.5: ")
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "runs").exists()


def test_subprocess_debug_shows_the_traceback_then_the_error_line(tmp_path):
    p = run_cli(["--debug", "train", "--set", "model.dropout=1.5"], tmp_path)
    assert p.returncode == 2
    assert "Traceback (most recent call last)" in p.stderr and "ConfigError" in p.stderr
    assert p.stderr.splitlines()[-1].startswith("error: model.dropout = 1.5: ")


# --- the happy path -------------------------------------------------------------------------------------

HAPPY = ["--set", "data.name=synthetic", "--set", "train.epochs=2", "--set", "model.width=32"]
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"}


def test_train_writes_a_complete_run_directory(workdir, capsys):
    out = workdir / "run"

    assert main(["train", *HAPPY, "--out", str(out)]) == 0

    assert str(out) in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert HISTORY_KEYS <= row.keys(), HISTORY_KEYS - row.keys()
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1 and row["train_loss"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and metrics["test_loss"] > 0
    expected = load_config(overrides=HAPPY[1::2])
    assert load_config(out / "config.yaml").hash() == expected.hash()
    assert not (workdir / "runs").exists()


def test_list_prints_every_family_and_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for family, reg in FAMILIES.items():
        assert f"{family}:" in out
        for name in reg.names():
            assert f"  {name} " in out, f"{family}/{name} missing from `tricklab list`"


def test_list_one_family_prints_only_it(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("models:") and "datasets:" not in out
