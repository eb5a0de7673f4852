"""Messages that mislead, and tracebacks where one line was promised: each refusal names the true cause.

- ``--resume`` after ``config.yaml`` was edited names the file, not "the config stored in the run directory";
- ``doctor`` and ``lr-find`` refusing an existing ``--out`` suggest what they can do (never ``--resume``);
- a non-string key in a config (``1: 2``) is reported with its value as written;
- a study variant that sets one key in two spellings is refused, naming both;
- an unwritable ``--out`` (under a file, an immutable folder, an unwritable working folder) in ``train``,
  ``doctor`` and ``lr-find`` is one line naming the folder and the OS's reason, exit 2, nothing created.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.config import load_config, validate
from tricklab.errors import TrickLabError
from tricklab.lab.studies import custom_study
from tricklab.runner import run

TINY = ["data.name=synthetic", "model.depth=1", "model.width=8", "train.epochs=1", "train.threads=1"]
COMMANDS = {  # each command's arguments for a tiny job, and what it offers instead of a non-empty --out
    "train": (["train"], "choose a new run directory (or continue that run with --resume"),
    "doctor": (["doctor", "--steps", "2", "--no-recheck"], "choose a new report folder, or leave out --out"),
    "lr-find": (["lr-find", "--steps", "2"], "choose a new folder, or leave out --out"),
}


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def one_line_error(capsys, code: int, argv: list[str]) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# --- --resume after config.yaml was edited -----------------------------------------------------------------------


def test_resume_after_editing_config_yaml_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(TINY + ["train.epochs=2"]), "--out", "run"]) == 0
    capsys.readouterr()
    config = Path("run/config.yaml")
    config.write_text(config.read_text().replace("epochs: 2", "epochs: 3"))
    err = one_line_error(capsys, 2, ["train", "--resume", "run"])
    assert "'run/config.yaml' differs from the config the checkpoint was written with" in err
    assert "changed after the run started" in err and "--out" in err


def test_resume_from_python_with_another_config_blames_that_config(tmp_path):
    run(load_config(overrides=TINY), tmp_path / "run")
    with pytest.raises(TrickLabError, match="this config differs from the one the checkpoint was written with"):
        run(load_config(overrides=[*TINY, "optim.lr=0.5"]), tmp_path / "run", resume=True)


# --- each command's refusal of an existing --out suggests what that command can do ------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_existing_out_is_refused_with_what_the_command_offers(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("taken").mkdir()
    Path("taken/result.txt").write_text("earlier work")
    argv, instead = COMMANDS[command]
    err = one_line_error(capsys, 2, [*argv, *sets(TINY), "--out", "taken"])
    assert "--out 'taken' already exists and is not empty" in err and instead in err
    assert ("--resume" in err) == (command == "train")  # only train can resume
    assert [p.name for p in Path("taken").iterdir()] == ["result.txt"]


# --- a key that is not a name -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1: 2\n", "1 = 2: a key must be a name, but YAML read 1 as a number (quote it); valid keys here: data,"),
        ("model:\n  true: 3\n", "model.true = 3: a key must be a name, but YAML read true as a boolean"),
        ("model:\n  depth: 2\n  1.5: [4]\n", "model.1.5 = [4]: a key must be a name"),
        ("null: x\n", "null = 'x': a key must be a name, but YAML read null as null"),
        ("model:\n  kwargs: {7: 8}\n", "model.kwargs.7 = 8: a key must be a name"),
    ],
)
def test_a_non_string_key_is_reported_with_its_value_as_written(text, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text)
    err = one_line_error(capsys, 2, ["train", "--config", "bad.yaml"])
    assert message in err
    assert not Path("runs").exists()


def test_validate_names_a_non_string_key_from_python():
    with pytest.raises(TrickLabError, match=r"^train\.2 = 'x': a key must be a name"):
        validate({"train": {"epochs": 1, 2: "x"}})


# --- one key in two spellings in a study ---------------------------------------------------------------------------


def test_a_variant_setting_one_key_in_two_spellings_is_refused_naming_both():
    raw = {"variants": {"a": {}, "b": {"model": {"depth": 1}, "model.depth": 2}}}
    with pytest.raises(TrickLabError) as err:
        custom_study(raw)
    assert str(err.value) == (
        "study.variants.b: model.depth is set twice, as 'model: {depth: 1}' and as 'model.depth: 2'; keep one of them"
    )
    with pytest.raises(TrickLabError, match=r"^study\.base: train\.epochs is set twice"):
        custom_study({"base": {"train.epochs": 2, "train": {"epochs": 3}}, "variants": {"a": {}}})
    study = custom_study({"base": {"model": {"depth": 1}}, "variants": {"a": {"model.depth": 2}}})[0]
    assert study.overrides(study.variant("a"), "synthetic")["model.depth"] == 2  # a variant overriding base is fine


def test_the_lab_refuses_the_clash_in_a_study_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("study.yaml").write_text(
        "name: clash\ndataset: synthetic\nvariants:\n  a: {}\n  b:\n    model: {depth: 1}\n    model.depth: 2\n"
    )
    err = one_line_error(capsys, 2, ["lab", "--config", "study.yaml", "--out", "lab"])
    assert "model.depth is set twice, as 'model: {depth: 1}' and as 'model.depth: 2'" in err


# --- an unwritable --out ----------------------------------------------------------------------------------------


def _chattr_works(folder: Path) -> bool:
    """Whether ``chattr +i`` makes ``folder`` immutable here (root ignores permission bits, not this flag)."""
    if shutil.which("chattr") is None:
        return False
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        return False
    try:
        (folder / "probe").mkdir()
    except OSError:
        return True
    (folder / "probe").rmdir()
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    return False


@contextmanager
def unwritable(folder: Path, monkeypatch):
    """``folder`` made immutable with ``chattr +i``; where that does not work, creating anything in it fails as
    it would (the write test of the out folder is where the OS says no)."""
    folder.mkdir(exist_ok=True)
    if _chattr_works(folder):
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        return
    real = tempfile.mkdtemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    yield


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_out_under_a_regular_file_is_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("a file")
    err = one_line_error(capsys, 2, [*COMMANDS[command][0], *sets(TINY), "--out", "notes.txt/run"])
    assert "--out 'notes.txt/run': cannot create it: 'notes.txt' is a file, not a folder" in err
    assert Path("notes.txt").read_text() == "a file" and not Path("runs").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_out_in_an_immutable_folder_is_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with unwritable(tmp_path / "locked", monkeypatch):
        err = one_line_error(capsys, 2, [*COMMANDS[command][0], *sets(TINY), "--out", "locked/run"])
    assert "--out 'locked/run': cannot write into 'locked' (Operation not permitted)" in err
    assert list((tmp_path / "locked").iterdir()) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_working_folder_is_one_line(command, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    with unwritable(work, monkeypatch):
        monkeypatch.chdir(work)
        err = one_line_error(capsys, 2, [*COMMANDS[command][0], *sets(TINY)])
        monkeypatch.chdir(tmp_path)
    assert f"cannot write into the working folder {str(work)!r} (Operation not permitted)" in err
    assert "'runs/" in err and list(work.iterdir()) == []
