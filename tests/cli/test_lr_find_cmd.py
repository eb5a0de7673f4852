"""``tricklab lr-find``: the LR range test from the command line, on the offline synthetic data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tricklab.cli.main import main

#: A small MLP on the offline synthetic data, as ``--set`` pairs.
SETTINGS = ("data.name=synthetic", "model.width=32", "model.depth=1", "train.threads=1")
SMALL = [arg for setting in SETTINGS for arg in ("--set", setting)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh folder (so the default runs/ lands there); the data cache is never the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    return tmp_path


def lr_find(*argv: str) -> int:
    return main(["lr-find", *SMALL, *argv])


def test_prints_suggestion_and_saves_plot_curve_and_config(workdir, capsys):
    assert lr_find("--steps", "60", "--out", "lf") == 0
    out = capsys.readouterr().out
    record = json.loads((workdir / "lf" / "lr_find.json").read_text())
    lrs, smoothed = record["lrs"], record["smoothed"]
    # the curve: geometric LRs from 1e-7 up to 10 over the 60 planned steps (fewer if it diverged)
    assert 2 <= len(lrs) <= 60 and len(record["losses"]) == len(smoothed) == len(lrs)
    assert lrs[0] == pytest.approx(1e-7)
    assert all(b / a == pytest.approx((10 / 1e-7) ** (1 / 59)) for a, b in zip(lrs, lrs[1:], strict=False))
    assert all(math.isfinite(v) for v in record["losses"])
    # a learnable problem: the loss falls clearly, and the suggestion lies well inside the sweep
    assert min(smoothed) < 0.8 * smoothed[0]
    assert record["suggestion"] in lrs and 1e-4 < record["suggestion"] < 1.0
    assert 0.0 <= record["clarity"] <= 1.0 and record["verdict"] in ("clear", "weak", "unclear")
    # the printed lines say what the json holds
    assert f"suggested lr {record['suggestion']:.3g}" in out
    assert f"clarity: {record['verdict']} ({record['clarity']:.2f}): {record['reason']}" in out
    assert f"plot: {Path('lf', 'lr_find.png')}" in out
    assert (workdir / "lf" / "lr_find.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "name: synthetic" in (workdir / "lf" / "config.yaml").read_text()


def test_default_folders_same_seed_same_curve_and_the_config_optimizer_is_used(workdir):
    assert lr_find("--steps", "20") == 0
    assert lr_find("--steps", "20") == 0
    assert lr_find("--steps", "20", "--out", "sgd", "--set", "optim.name=sgd") == 0
    folders = sorted((workdir / "runs").iterdir())
    assert len(folders) == 2 and all("-lr-find" in f.name for f in folders)
    a, b, c = (json.loads((d / "lr_find.json").read_text()) for d in [*folders, workdir / "sgd"])
    assert a["losses"] == b["losses"] and a["suggestion"] == b["suggestion"]
    assert a["optimizer"] == "adam" and c["optimizer"] == "sgd" and c["losses"] != a["losses"]
    assert a["losses"][0] == c["losses"][0]  # same model and first batch; only the updates differ


BAD = [
    (["--steps", "1"], "--steps = 1"),
    (["--steps", "many"], "invalid int value: 'many'"),
    (["--set", "model.name=mpl"], "did you mean 'mlp'"),
    (["--set", "optim.name=adamm"], "optim.name = 'adamm'"),
    (["--set", "optim.name=nesterov", "--set", "optim.momentum=0"], "optim.momentum = 0"),
    (["--set", "data.val_fraction=1e-9"], "data.val_fraction"),
    (["--set", "data.subset=0"], "data.subset = 0"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_creates_no_folder(workdir, capsys, argv, fragment):
    assert lr_find(*argv, "--out", "lf") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err
    assert not (workdir / "lf").exists()
    assert lr_find(*argv) == 2
    assert not (workdir / "runs").exists()


def test_refuses_a_non_empty_out_folder(workdir, capsys):
    (workdir / "full").mkdir()
    (workdir / "full" / "keep.txt").write_text("mine")
    assert lr_find("--steps", "10", "--out", "full") == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in (workdir / "full").iterdir()] == ["keep.txt"]
    (workdir / "afile").write_text("not a folder")
    assert lr_find("--steps", "10", "--out", "afile") == 2
    assert (workdir / "afile").read_text() == "not a folder"


def test_listed_in_the_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "lr-find" in capsys.readouterr().out


def test_lr_find_shows_progress_in_steps(tmp_path, capsys):
    from tricklab.cli.main import main

    assert main(["lr-find", "--set", "data.name=synthetic", "--steps", "20", "--out", str(tmp_path / "lf")]) == 0
    err = capsys.readouterr().err
    assert "lr-find: step 2/20 (10%)" in err  # (the sweep may stop early once the loss diverges)
