"""Unbounded resources: nothing from outside may make tricklab use memory, stack or time without bound.

Config and study files: read at most 1 MiB of a regular file, nest at most ``MAX_DEPTH`` deep, hold at most
``MAX_NODES`` values with aliases expanded; values echoed in errors are cut short. Numbers: upper bounds where
a value means nothing beyond one (threads, seed, epochs, steps, learning rates) and a memory estimate that
refuses a model that cannot fit, before it is built. Every refusal is one line, exit code 2, within a second.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

from tricklab import host, memory
from tricklab.assembly import assemble
from tricklab.cli.main import main
from tricklab.config import MAX_DEPTH, MAX_NODES, load_config, parse_value
from tricklab.errors import MAX_MESSAGE, MAX_VALUE, ConfigError, TrickLabError, echo, one_line
from tricklab.lab.studies import load_custom_study
from tricklab.models import build_model

SYNTH = ["data.name=synthetic", "train.threads=1", "train.epochs=1"]

#: The "billion laughs": 273 bytes that expand to 9⁹ strings once its aliases are followed.
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
model: {kwargs: {x: *g}}
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("TRICKLAB_MIRRORS", "http://127.0.0.1:9/")
    return tmp_path


def one_line_error(capsys, argv: list[str]) -> str:
    start = time.perf_counter()
    rc = main(argv)
    took = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}: {err}"
    assert "Traceback" not in out + err and err.count("\n") == 1 and err.startswith("error: "), err
    assert len(err) <= MAX_MESSAGE + len("error: \n"), f"{len(err)} characters"
    assert took < 30, f"took {took:.1f}s"
    return err.strip()


# --- config and study files --------------------------------------------------------------------------------


def test_alias_bomb_is_refused_while_composed_in_one_short_line(workdir, capsys):
    (workdir / "bomb.yaml").write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 400
    line = one_line_error(capsys, ["train", "--config", "bomb.yaml"])
    assert "bomb.yaml" in line and f"more than {MAX_NODES} values" in line and "aliases" in line, line
    assert len(line) < 200
    assert not (workdir / "runs").exists()


def test_a_large_value_that_passes_the_bound_is_echoed_short(workdir, capsys):
    """A smaller bomb (9⁴ = 6561 strings) is composed, then refused by validation; the value shown is cut."""
    small = "\n".join(ALIAS_BOMB.splitlines()[:4]) + "\nmodel: {width: *d}\n"
    (workdir / "small.yaml").write_text(small)
    line = one_line_error(capsys, ["train", "--config", "small.yaml"])
    assert line.startswith("error: model.width = [") and "..." in line, line
    assert len(line) < 300


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: " + "[" * 5000 + "]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
        ("model:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1000)), "nested deeper"),
        ("a: " + "{a: " * 3000 + "1" + "}" * 3000, "nested deeper"),
        ("a: &a [*a]\n", "contains itself"),
        ("? [a, b]\n: 1\n", "a key must be a plain value"),
        ("? {a: 1}\n: 1\n", "a key must be a plain value"),
        ("train: {seed: 2024-13-45}\n", "month must be in 1..12"),
        ("train: {seed: " + "9" * 5000 + "}\n", "line 1: invalid YAML (cannot read the value '99999"),
    ],
    ids=[
        "deep_flow",
        "deep_block",
        "deep_mapping",
        "recursive_alias",
        "list_key",
        "mapping_key",
        "bad_date",
        "huge_integer",
    ],
)
def test_hostile_yaml_is_one_line_naming_the_file(workdir, capsys, text, says):
    (workdir / "bad.yaml").write_text(text)
    line = one_line_error(capsys, ["train", "--config", "bad.yaml"])
    assert "bad.yaml" in line and says in line, line


def test_dev_zero_a_pipe_and_a_folder_are_refused_without_reading(workdir, capsys):
    line = one_line_error(capsys, ["train", "--config", "/dev/zero"])
    assert "'/dev/zero' cannot be read: it is not a regular file" in line
    os.mkfifo(workdir / "pipe.yaml")  # nobody writes to it: reading it would wait forever
    assert "not a regular file" in one_line_error(capsys, ["train", "--config", "pipe.yaml"])
    (workdir / "folder.yaml").mkdir()
    assert "is a folder" in one_line_error(capsys, ["train", "--config", "folder.yaml"])


def test_a_config_file_over_one_mib_is_refused(workdir, capsys):
    (workdir / "big.yaml").write_text("# padding\n" * 120_000)
    line = one_line_error(capsys, ["train", "--config", "big.yaml"])
    assert "big.yaml" in line and "too large: 1.1 MiB, at most 1 MiB is read" in line, line


@pytest.mark.parametrize("text", [ALIAS_BOMB, "a: " + "[" * 5000 + "]" * 5000, "? [a]\n: 1\n"])
def test_study_files_have_the_same_bounds(workdir, text):
    (workdir / "study.yaml").write_text(text)
    with pytest.raises(TrickLabError) as err:
        load_custom_study("study.yaml")
    assert "study.yaml" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TrickLabError, match="not a regular file"):
        load_custom_study("/dev/zero")


def test_set_values_have_the_same_bounds():
    assert parse_value("[1, 2]") == [1, 2] and parse_value("{a: [b]}") == {"a": ["b"]}
    assert parse_value("not: [valid") == "not: [valid"  # text that is not YAML stays text
    with pytest.raises(TrickLabError, match=f"--set value .*nested deeper than {MAX_DEPTH}"):
        parse_value("[" * 5000 + "]" * 5000)
    with pytest.raises(TrickLabError, match="more than .* values"):
        parse_value(ALIAS_BOMB.replace("model: {kwargs: {x: *g}}", "h: *g"))


# --- messages ------------------------------------------------------------------------------------------------


def test_error_messages_are_one_line_and_bounded():
    assert str(ConfigError("model.dropout", 1.5, "must be < 1.0")) == "model.dropout = 1.5: must be < 1.0"
    huge = ConfigError("model.kwargs.x", list(range(10**6)), "must be a number")
    assert str(huge) == "model.kwargs.x = [0, 1, 2, 3, 4, 5, ...]: must be a number"
    assert len(echo("x" * 10**6)) == MAX_VALUE and len(echo(10**1000)) < MAX_VALUE
    long = str(TrickLabError("start\n" + "y" * 10**6 + "\nend"))
    assert len(long) == MAX_MESSAGE and "\n" not in long and long.startswith("start y") and long.endswith("y end")
    assert one_line("a\r\nb\n") == "a b" and one_line("a  b") == "a  b"


# --- numbers with an upper bound -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--set", "train.threads=100000"], "train.threads = 100000: must be 0 (every core) to 1024 threads"),
        (["--set", "train.seed=100000000000000000000"], "train.seed = 100000000000000000000: must be <= 4294967295"),
        (["--set", "train.epochs=1000000000"], "train.epochs = 1000000000: must be <= 1000000"),
        (
            ["--set", f"model.width={10**100}"],
            "model.width = 100000000000000000...0000000000000000000: must be <= 2147483647",
        ),
        (["--set", "optim.lr=1.0e+300"], "optim.lr = 1e+300: must be <= 1e+16"),
        (["--set", "optim.lr=1.0e+17"], "optim.lr = 1e+17: must be <= 1e+16"),
        (["--set", "optim.weight_decay=1.0e+300"], "optim.weight_decay = 1e+300: must be <= 1e+16"),
        (["--set", "clip.threshold=1.0e+300"], "clip.threshold = 1e+300: must be at most 3.403e+38"),
        (["--set", "early_stopping.min_delta=1.0e+39"], "early_stopping.min_delta = 1e+39: must be at most 3.403e+38"),
        (["--set", "diagnostics.steps=1000000000"], "diagnostics.steps = 1000000000: must be <= 100000"),
    ],
    ids=lambda v: v[1] if isinstance(v, list) else None,
)
def test_values_beyond_their_bound_are_refused_with_the_range(workdir, capsys, argv, says):
    line = one_line_error(capsys, ["train", "--set", "data.name=synthetic", *argv])
    assert says in line, line


def test_doctor_and_lr_find_bound_their_steps(workdir, capsys):
    line = one_line_error(capsys, ["doctor", "--set", "data.name=synthetic", "--steps", "1000000000"])
    assert "--steps = 1000000000: an integer from 1 to 100000 (training steps to probe: diagnostics.steps)" in line
    line = one_line_error(capsys, ["lr-find", "--set", "data.name=synthetic", "--steps", "1000000000"])
    assert "--steps = 1000000000: an integer from 2 to 10000" in line, line
    assert not (workdir / "runs").exists()


def test_the_largest_learning_rate_still_ends_in_the_nonfinite_guard_not_a_crash(workdir, capsys):
    rc = main(["train", "--set", "data.name=synthetic", "--set", "train.threads=1", "--set", "optim.lr=1.0e+16"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and rc != 0 and err.count("\n") == 1, err


# --- memory ------------------------------------------------------------------------------------------------


def test_a_model_that_cannot_fit_is_refused_before_it_is_built_with_the_figures(workdir):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        assemble(load_config(overrides=[*SYNTH, "model.width=1000000000"]))
    msg = str(err.value)
    assert msg.startswith("model.width = 1000000000: the model needs ~1e+18 parameters"), msg
    assert "PiB to train with adam); this machine has " in msg and "GiB" in msg, msg
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024, "it allocated the model"


def test_memory_refusal_names_the_batch_size_when_activations_dominate(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)  # a machine with 1 MiB available
    cfg = load_config(overrides=[*SYNTH, "model.name=cnn", "data.batch_size=512"])
    with pytest.raises(ConfigError, match=r"^data\.batch_size = 512: the model needs .* activation values"):
        assemble(cfg)


def test_the_estimate_counts_what_training_holds():
    est = memory.Estimate(parameters=1000, activations_per_example=50, batch_size=8, optimizer_slots=2, weight_copies=1)
    assert est.weight_bytes == 4 * 1000 * (2 + 2 + 1) and est.activation_bytes == 4 * 50 * 8
    assert est.total_bytes == 20_000 + 1_600
    assert memory.human_bytes(23.4 * 2**30) == "23.4 GiB" and memory.human_bytes(512) == "512 B"
    memory.check_fits(est, est.total_bytes, "model.width", 8, "adam")  # exactly fits
    with pytest.raises(ConfigError, match=r"~1e\+03 parameters and ~4e\+02 activation values for a batch of 8"):
        memory.check_fits(est, est.total_bytes - 1, "model.width", 8, "adam")


def test_meta_measurement_matches_the_real_model():
    build = lambda: build_model("mlp", (1, 8, 8), 4, depth=2, width=32)  # noqa: E731
    params, acts = memory.measure_on_meta(build, (1, 8, 8))
    assert params == sum(p.numel() for p in build().parameters())
    assert acts > 0
    assert memory.measure_on_meta(lambda: 1 / 0, (1, 8, 8)) is None  # a factory that fails: left to the real build
    assert host.physical_memory() is None or host.physical_memory() > 2**20
