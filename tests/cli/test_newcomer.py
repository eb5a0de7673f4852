"""What a newcomer meets first: examples in every ``--help``, ``tricklab config``, did-you-mean for keys, the
shared ``--epochs/--seed/--device`` flags, ``FitState``'s documented example and the README's quickstart.

Everything runs in-process through ``tricklab.cli.main.main`` on the offline synthetic data.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import shlex
import sqlite3
import typing
from pathlib import Path

import pytest
import torch
import yaml

import tricklab
from tricklab.catalog import family
from tricklab.cli.common import with_training_flags
from tricklab.cli.main import COMMANDS, build_parser, main
from tricklab.config import Config, ConfigError, load_config
from tricklab.config_reference import FREE_TEXT, NAMED
from tricklab.events import FitState

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "data.name=synthetic", "--set", "model.width=16", "--set", "model.depth=1", "--set", "train.threads=1"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh folder; the data cache is never the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    return tmp_path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- examples in every command's --help ---------------------------------------------------------------------


def help_examples(capsys, command: str) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "\nexamples:\n" in text, f"tricklab {command} --help has no examples"
    block = text.split("\nexamples:\n", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("tricklab ")]


def resolve(line: str, capsys) -> None:
    """Check the command ``line`` as far as can be done without training: it parses, the config it gives (file,
    --set, shorthands) resolves, every run config of the studies it names resolves; ``list`` and ``config`` run."""
    argv = shlex.split(line.split(" > ")[0])[1:]
    args = build_parser().parse_args(argv)
    if hasattr(args, "overrides"):
        load_config(args.config, with_training_flags(args))
    if argv[0] == "lab":
        from tricklab.lab.lab import LabOptions, study_overrides
        from tricklab.lab.studies import STUDIES

        names = STUDIES.names() if args.studies == ["all"] else args.studies
        opts = LabOptions(epochs=args.epochs, device=args.device, quick=args.quick)
        for study in map(STUDIES.get, names):
            for dataset in args.dataset.split(",") if args.dataset else [study.dataset]:  # --dataset a,b: each
                for variant in study.variants:
                    load_config(overrides=study_overrides(study, variant.name, dataset, opts, 0))
    if argv[0] in ("list", "config"):
        assert main(argv) == 0, line
        capsys.readouterr()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_ends_with_two_to_four_examples_that_parse_and_resolve(command, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the examples name configs/quickstart.yaml
    lines = help_examples(capsys, command)
    assert 2 <= len(lines) <= 4, lines
    for line in lines:
        assert line.split()[1] == command, line
        resolve(line, capsys)


def test_tricklab_help_ends_with_examples_that_resolve(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    block = text.split("\nexamples:\n", 1)[1].split("\n\n")[0]
    lines = [x.strip() for x in block.splitlines() if x.strip().startswith("tricklab ")]
    assert len(lines) >= 3 and "tricklab COMMAND --help" in text
    for line in lines:
        resolve(line, capsys)


def test_every_subcommand_is_listed_in_commands():
    """The help test above covers each command: none is registered outside ``COMMANDS``."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


# --- tricklab config --defaults -----------------------------------------------------------------------------


def printed_config(capsys, *argv: str) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def test_config_defaults_loads_back_as_the_default_config(workdir, capsys):
    text = printed_config(capsys, "--defaults")
    assert yaml.safe_load(text) == Config().to_dict()
    (workdir / "defaults.yaml").write_text(text)
    assert load_config(workdir / "defaults.yaml") == Config() == load_config()


def comment_of(text: str, key: str) -> str:
    """The comment printed after ``section.key`` (or a top-level key)."""
    section, _, name = key.rpartition(".")
    lines = text.splitlines()
    start = lines.index(f"{section}:") + 1 if section else 0
    line = next(x for x in lines[start:] if x.strip().startswith(f"{name}:"))
    return line.split("# ", 1)[1]


def test_config_defaults_says_what_each_key_allows_from_the_schema_and_registries(capsys):
    text = printed_config(capsys, "--defaults")
    for section, field in Config.model_fields.items():
        if section == "callbacks":
            assert "tricklab list callbacks" in comment_of(text, "callbacks")
            continue
        for name, sub in field.annotation.model_fields.items():
            key, comment = f"{section}.{name}", comment_of(text, f"{section}.{name}")
            kinds = [a for a in typing.get_args(sub.annotation) if a is not type(None)] or [sub.annotation]
            if key in NAMED:
                assert all(n in comment for n in family(NAMED[key][0]).names()), (key, comment)
            elif typing.get_origin(kinds[0]) is typing.Literal:
                assert all(str(c) in comment for c in typing.get_args(kinds[0])), (key, comment)
            elif kinds[0] is bool:
                assert "true or false" in comment, key
            if type(None) in typing.get_args(sub.annotation):
                assert comment.split("; ")[0].endswith(", or null"), (key, comment)
    assert comment_of(text, "optim.lr") == "a number > 0, <= 1e+16, finite"
    assert comment_of(text, "train.epochs") == "an integer >= 1, <= 1000000"
    assert comment_of(text, "train.threads").endswith("0 (every core) to 1024")
    assert "adamw" in comment_of(text, "optim.name") and "warmup_cosine" in comment_of(text, "schedule.name")


def test_every_name_key_is_paired_with_its_registry():
    """A new key that takes a registered name must say which registry, or its allowed values would go unlisted."""
    for section, field in Config.model_fields.items():
        if section == "callbacks":
            continue
        for name, sub in field.annotation.model_fields.items():
            if sub.annotation in (str, str | None):
                key = f"{section}.{name}"
                assert key in NAMED or key in FREE_TEXT, f"{key} takes a string: add it to NAMED or FREE_TEXT"
    assert all(fam in tricklab.catalog.FAMILIES for fam, _ in NAMED.values())


def test_config_prints_the_resolved_config_of_a_file_and_sets(workdir, capsys):
    (workdir / "my.yaml").write_text("model: {name: cnn}\ntrain: {epochs: 3}\n")
    text = printed_config(capsys, "--config", "my.yaml", "--set", "optim.lr=0.01", "--seed", "7")
    assert text.startswith("# the resolved config")
    expected = load_config("my.yaml", ["optim.lr=0.01", "train.seed=7"])
    assert yaml.safe_load(text) == expected.to_dict() and expected.model.width == 32  # the cnn's own width


def test_config_defaults_with_a_file_or_set_is_refused(capsys):
    assert main(["config", "--defaults", "--set", "optim.lr=0.1"]) == 2
    assert "--defaults prints the default config" in error_line(capsys)


# --- did-you-mean for keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "hint"),
    [
        ("lr=0.1", "did you mean 'optim.lr'?"),  # a key without its section
        ("optim.lrr=0.1", "did you mean 'optim.lr'?"),  # misspelled in its section
        ("train.lr=0.1", "did you mean 'optim.lr'?"),  # in the wrong section
        ("epoch=3", "did you mean 'train.epochs'?"),  # no section and misspelled
        ("model.epoch=3", "did you mean 'train.epochs'?"),  # closer to train.epochs than to model.depth
        ("optim.patience=3", "did you mean one of 'schedule.patience', 'early_stopping.patience'?"),
        ("optimm.lr=0.1", "did you mean 'optim'?"),  # a misspelled section
        ("callbacks=[{name: x, kwags: 1}]", "did you mean 'callbacks.0.kwargs'?"),  # in an item of a list
    ],
)
def test_unknown_key_suggests_the_key_meant_in_one_line(setting, hint, workdir, capsys):
    assert main(["train", "--set", setting]) == 2
    line = error_line(capsys)
    assert hint in line and "unknown key" in line, line
    assert not (workdir / "runs").exists()


def test_unknown_key_in_a_file_suggests_the_key_meant(workdir):
    (workdir / "wrong.yaml").write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lr = 0\.1: unknown key; did you mean 'optim\.lr'\? valid keys"):
        load_config("wrong.yaml")


def test_unknown_key_far_from_every_key_gets_no_guess(capsys):
    assert main(["train", "--set", "train.zzzzqq=1"]) == 2
    line = error_line(capsys)
    assert "did you mean" not in line and "valid keys here: epochs, seed, device" in line


# --- --epochs, --seed, --device -----------------------------------------------------------------------------


def test_train_takes_epochs_seed_and_device_as_shorthands_for_set(workdir, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--device", "cpu", "--out", "run"]) == 0
    saved = load_config(workdir / "run" / "config.yaml")
    assert (saved.train.epochs, saved.train.seed, saved.train.device) == (1, 3, "cpu")
    assert [json.loads(r)["epoch"] for r in (workdir / "run" / "history.jsonl").read_text().splitlines()] == [1]
    assert "(1 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "doctor", "lr-find", "config"])
def test_a_flag_and_a_set_of_its_key_together_are_refused(command, workdir, capsys):
    assert main([command, "--seed", "1", "--set", "train.seed=2"]) == 2
    assert error_line(capsys) == "error: --seed 1 and --set train.seed=2 both set train.seed: give one of them"
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "--epochs", "0"], ["--epochs (train.epochs) = 0", "must be >= 1"]),
        (["train", "--seed", "-1"], ["--seed (train.seed) = -1", "must be >= 0"]),
        (["train", "--epochs", "two"], ["--epochs", "invalid int value: 'two'"]),
        (["train", "--device", "gpu"], ["--device", "invalid choice: 'gpu'", "'cuda'"]),
        (["doctor", "--epochs", "3"], ["doctor: --epochs is not taken here", "use --steps N"]),
        (["lr-find", "--epochs", "3"], ["lr-find: --epochs is not taken here", "use --steps N"]),
        (["lab", "dropout", "--seed", "3"], ["lab: --seed is not taken here", "--seeds N"]),
    ],
)
def test_bad_or_misplaced_flags_give_one_line(argv, fragments, workdir, capsys):
    assert main(argv) == 2
    line = error_line(capsys)
    assert all(f in line for f in fragments), line
    assert not (workdir / "runs").exists() and not (workdir / "labs").exists()


def test_a_flag_overrides_the_config_file_as_set_does(workdir, capsys):
    (workdir / "my.yaml").write_text("train: {epochs: 3, seed: 9}\n")
    train = yaml.safe_load(printed_config(capsys, "--config", "my.yaml", "--epochs", "2"))["train"]
    assert (train["epochs"], train["seed"]) == (2, 9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the runs could train on it")
def test_lab_device_cuda_without_a_gpu_is_refused_before_any_run(workdir, capsys):
    assert main(["lab", "dropout", "--dataset", "synthetic", "--device", "cuda"]) == 2
    line = error_line(capsys)
    assert "--device = 'cuda': no CUDA device is available here" in line and "--executor ray" in line
    assert not (workdir / "labs").exists()


def test_doctor_takes_seed_and_device(workdir, capsys):
    argv = ["doctor", *TINY, "--steps", "4", "--no-recheck", "--seed", "5", "--device", "cpu", "--out", "doc"]
    assert main(argv) in (0, 4)
    saved = load_config(workdir / "doc" / "config.yaml")
    assert (saved.train.seed, saved.train.device) == (5, "cpu")


def test_lr_find_takes_seed_and_device(workdir):
    assert main(["lr-find", *TINY, "--steps", "5", "--seed", "4", "--device", "cpu", "--out", "lf"]) == 0
    saved = load_config(workdir / "lf" / "config.yaml")
    assert (saved.train.seed, saved.train.device) == (4, "cpu")


def test_lab_device_sets_every_runs_device(workdir, capsys):
    study = workdir / "study.yaml"
    study.write_text(
        "name: tiny\ndataset: synthetic\nbaseline: plain\nseeds: 1\n"
        "base: {model: {depth: 1, width: 8}, train: {epochs: 1, threads: 1}, schedule: {name: constant}}\n"
        "variants: {plain: {}, wide: {model.width: 16}}\n"
    )
    assert main(["lab", "--config", str(study), "--device", "cpu", "--workers", "1", "--out", "lab"]) == 0
    con = sqlite3.connect(workdir / "lab" / "results.sqlite")
    try:
        configs = [json.loads(c) for (c,) in con.execute("SELECT config FROM runs")]
    finally:
        con.close()
    assert len(configs) == 2 and all(c["train"]["device"] == "cpu" for c in configs)


def test_help_documents_the_shorthands(capsys):
    for command, flags in (("train", 3), ("doctor", 2), ("lr-find", 2), ("lab", 1), ("config", 3)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert text.count(": --set train.") == flags, (command, text)
        assert ("--epochs N" in text) == (command in ("train", "lab", "config")), command


# --- FitState -----------------------------------------------------------------------------------------------


def test_fit_state_documents_every_field():
    doc = inspect.getdoc(FitState)
    for f in dataclasses.fields(FitState):
        assert f"``{f.name}``" in doc, f"FitState's docstring does not describe {f.name}"
    assert "``lr``" in doc


def test_fit_state_callback_example_runs(workdir, capsys):
    blocks = re.findall(r"Example::\n\n((?:(?: {4}.*)?\n)+)", inspect.getdoc(FitState) + "\n")
    assert len(blocks) == 1
    code = inspect.cleandoc("\n".join(line[4:] for line in blocks[0].splitlines()))
    callback = code[code.index("class ") : code.index("\nconfig =")].strip()
    assert len(callback.splitlines()) <= 12  # a short example
    exec(compile(code, "FitState example", "exec"), {"tricklab": tricklab, "torch": torch, "math": math})
    epochs, last_loss = capsys.readouterr().out.split()
    assert 1 <= int(epochs) < 20 and float(last_loss) > 0  # the callback stopped the run and added its column


# --- README -------------------------------------------------------------------------------------------------


def test_readme_quickstart_follows_the_set_up_commands_and_its_commands_resolve(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    text = (REPO / "README.md").read_text()
    sections = text.split("\n## ")
    assert sections[1].startswith("Quickstart\n"), "the first section is the quickstart"
    quick = sections[1]
    assert text.index("-c constraints.txt -e '.[dev]'") < text.index("## Quickstart")
    assert len(quick.strip().splitlines()) <= 16  # its heading and at most 15 lines
    commands = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
        for line in block.splitlines()
        if line.startswith("tricklab ")
    ]
    assert {c.split()[1] for c in commands} >= {"train", "doctor", "lab"}
    for command in commands:
        if "runs/quick/config.yaml" in command:  # the run the quickstart's train writes: its config is the file's
            command = command.replace("runs/quick/config.yaml", "configs/quickstart.yaml")
        resolve(command, capsys)
    assert "tricklab config --defaults" in text
    for flag in ("--epochs", "--seed", "--device"):
        assert f"`{flag}" in text
