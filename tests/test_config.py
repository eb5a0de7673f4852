"""The run config: defaults, file ← --set precedence, one-line errors, safe YAML, stable hash, frozen."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from tricklab.config import Config, load_config
from tricklab.engine.seed import set_threads
from tricklab.errors import ConfigError, TrickLabError


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and precedence ----------------------------------------------------------------------------


def test_defaults_are_the_lessons_baseline():
    c = Config()
    assert (c.data.name, c.data.batch_size, c.data.scale, c.data.val_fraction) == ("mnist", 128, "standardize", 0.1)
    assert (c.model.name, c.model.depth, c.model.width, c.model.activation) == ("mlp", 2, 512, "relu")
    assert (c.model.norm, c.model.dropout) == ("none", 0.0)
    assert (c.optim.name, c.optim.lr) == ("adam", 1e-3)
    assert (c.train.seed, c.train.threads, c.train.device) == (0, 0, "auto")
    assert load_config() == c


def test_threads_zero_means_all_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert set_threads(Config().train.threads) == cores  # the cores this process may run on


def test_file_overrides_defaults_and_set_overrides_file(tmp_path):
    path = write(tmp_path, "model:\n  width: 64\n  depth: 3\noptim:\n  lr: 0.01\n")

    c = load_config(path, ["model.width=32", "train.epochs=7"])

    assert c.model.width == 32  # --set beats the file
    assert c.model.depth == 3 and c.optim.lr == 0.01  # the file beats the defaults
    assert c.train.epochs == 7 and c.model.activation == "relu"  # untouched keys keep their defaults


def test_later_set_wins_and_values_are_parsed_as_yaml():
    c = load_config(overrides=["model.width=8", "model.width=16", "model.residual=true", "data.subset=null"])
    assert (c.model.width, c.model.residual, c.data.subset) == (16, True, None)


def test_with_overrides_returns_a_new_validated_config():
    base = Config()
    c = base.with_overrides(["optim.lr=0.1"])
    assert c.optim.lr == 0.1 and base.optim.lr == 1e-3
    with pytest.raises(ConfigError, match=r"^optim\.lr = 0: "):
        base.with_overrides({"optim.lr": 0})


def test_empty_config_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


# --- every bad value: one line naming the full key, the bad value and what is allowed --------------------

BAD = [
    # (override, key, value as shown, what the message must say is allowed)
    ("model.dropout=1.0", "model.dropout", "1.0", "must be < 1"),
    ("model.dropout=-0.1", "model.dropout", "-0.1", "must be >= 0"),
    ("optim.lr=0", "optim.lr", "0", "must be > 0"),
    ("optim.lr=-1", "optim.lr", "-1", "must be > 0"),
    ("optim.lr=.nan", "optim.lr", "nan", "finite"),
    ("optim.lr=nan", "optim.lr", "'nan'", "finite"),
    ("optim.lr=.inf", "optim.lr", "inf", "finite"),
    ("optim.lr=inf", "optim.lr", "'inf'", "finite"),
    ("data.batch_size=0", "data.batch_size", "0", "must be > 0"),
    ("data.val_fraction=0", "data.val_fraction", "0", "must be > 0"),
    ("data.val_fraction=1", "data.val_fraction", "1", "must be < 1"),
    ("model.name=mpl", "model.name", "'mpl'", "did you mean 'mlp'?"),
    ("data.name=mnsit", "data.name", "'mnsit'", "did you mean 'mnist'?"),
    ("model.activation=rleu", "model.activation", "'rleu'", "did you mean 'relu'?"),
    ("model.norm=batchnorm", "model.norm", "'batchnorm'", "did you mean 'batch'?"),
    ("data.scale=standardise", "data.scale", "'standardise'", "did you mean 'standardize'?"),
    ("model.widht=32", "model.widht", "32", "did you mean 'model.width'?"),
    ("foo.bar=1", "foo", "{'bar': 1}", "unknown key"),
    ("modle.width=32", "modle", "{'width': 32}", "did you mean 'model'?"),
    ("model.width=abc", "model.width", "'abc'", "must be an integer"),
    ("model.width=1.5", "model.width", "1.5", "must be an integer"),
    ("model.residual=maybe", "model.residual", "'maybe'", "must be true or false"),
    ("data.name=[mnist]", "data.name", "['mnist']", "must be a string"),
    ("model=3", "model", "3", "must be a mapping"),
    ("train.seed=-1", "train.seed", "-1", "must be >= 0"),
    ("train.device=gpu", "train.device", "'gpu'", "'auto', 'cpu' or 'cuda'"),
    ("train.epochs=0", "train.epochs", "0", "must be >= 1"),
]


@pytest.mark.parametrize(("override", "key", "shown", "allowed"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(override, key, shown, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{key} = {shown}: "), msg
    assert allowed in msg, msg
    assert err.value.exit_code == 2


@pytest.mark.parametrize("override", ["model.name=mpl", "model.activation=rleu", "data.scale=standardise"])
def test_unknown_names_list_the_valid_ones(override):
    with pytest.raises(ConfigError, match=r"valid: .*, "):
        load_config(overrides=[override])


def test_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError, match="valid keys here: name, depth, width"):
        load_config(overrides=["model.widht=3"])


def test_bad_value_in_a_file_is_reported_with_its_full_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.widht = 3: unknown key; did you mean 'model\.width'\?"):
        load_config(write(tmp_path, "model:\n  widht: 3\n"))


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.width=true", "model.width"), ("optim.lr=true", "optim.lr"), ("model.dropout=true", "model.dropout")],
)
def test_a_boolean_where_a_number_belongs_is_rejected(override, key):
    with pytest.raises(ConfigError, match=rf"^{key} = True: must be (an integer|a number)"):
        load_config(overrides=[override])


def test_a_duplicated_key_in_a_file_is_rejected(tmp_path):
    with pytest.raises(TrickLabError, match="width"):
        load_config(write(tmp_path, "model:\n  width: 64\n  width: 32\n"))


# --- files: not found, not a mapping, unsafe YAML, syntax errors ---------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TrickLabError, match="does not exist") as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


def test_a_list_is_not_a_config(tmp_path):
    with pytest.raises(TrickLabError, match="mapping of sections, got list"):
        load_config(write(tmp_path, "- model\n- data\n"))


def test_python_tags_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    path = write(tmp_path, f'model: !!python/object/apply:os.system ["touch {marker}"]\n')

    with pytest.raises(TrickLabError) as err:
        load_config(path)

    assert not marker.exists(), "the YAML tag ran a shell command"
    msg = str(err.value)
    assert str(path) in msg and "line 1" in msg and "python/object/apply" in msg
    assert "\n" not in msg


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  name: mnist\nmodel:\n  width: [1, 2\n  depth: 3\n")
    with pytest.raises(TrickLabError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "line 5" in msg and "invalid YAML" in msg
    assert "\n" not in msg


def test_bad_set_syntax_shows_the_expected_form():
    with pytest.raises(TrickLabError, match=r"--set 'foo': expected key\.sub=value"):
        load_config(overrides=["foo"])


def test_setting_inside_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"^model\.width = "):
        load_config(overrides=["model.width.x=1"])


# --- hash and immutability ------------------------------------------------------------------------------


def test_hash_is_stable_and_changes_with_any_value(tmp_path):
    a = Config()
    assert a.hash() == Config().hash() == load_config().hash()
    assert load_config(write(tmp_path, a.to_yaml())).hash() == a.hash()  # survives a YAML round trip
    assert len({a.hash(), a.with_overrides(["optim.lr=0.002"]).hash(), a.with_overrides(["train.seed=1"]).hash()}) == 3


def test_hash_ignores_how_the_value_was_written(tmp_path):
    assert load_config(overrides=["optim.lr=0.001"]).hash() == Config().hash()
    assert load_config(write(tmp_path, "model:\n  width: 512\n")).hash() == Config().hash()


def test_config_is_frozen():
    c = Config()
    with pytest.raises(ValidationError, match="frozen"):
        c.model.width = 3
    with pytest.raises(ValidationError, match="frozen"):
        c.optim = c.optim
    assert c.model.width == 512
