"""The name → object registry behind every family: lookup, help, and errors that say what is valid."""

from __future__ import annotations

import pytest

from tricklab.catalog import FAMILIES
from tricklab.errors import TrickLabError, UnknownNameError
from tricklab.registry import Registry


@pytest.fixture
def acts() -> Registry:
    reg: Registry = Registry("activation")

    @reg.register("relu", help="max(0, x)")
    def relu():
        return "relu!"

    def tanh():
        """Hyperbolic tangent; LeCun et al. 1998.

        More text that is not the summary.
        """

    reg.register("tanh", tanh)
    reg.register("leaky_relu", lambda: "leaky", help="max(0.01x, x)")
    return reg


def test_register_and_get(acts):
    assert acts.get("relu")() == "relu!"
    assert acts.get("leaky_relu")() == "leaky"
    assert acts.get("tanh").__name__ == "tanh"


def test_register_as_decorator_returns_the_object_unchanged():
    reg: Registry = Registry("thing")

    @reg.register("f")
    def f():
        return 1

    assert f() == 1 and reg.get("f") is f


def test_names_keep_registration_order(acts):
    assert acts.names() == ["relu", "tanh", "leaky_relu"]
    assert list(acts) == acts.names() and len(acts) == 3
    assert [e.name for e in acts.entries()] == acts.names()


def test_help_is_the_given_text_or_the_docstring_summary(acts):
    assert acts.help("relu") == "max(0, x)"
    assert acts.help("tanh") == "Hyperbolic tangent; LeCun et al. 1998."
    nodoc: Registry = Registry("x")
    nodoc.register("bare", lambda: None)
    assert nodoc.help("bare") == ""


def test_contains(acts):
    assert "relu" in acts and "tanh" in acts
    assert "sigmoid" not in acts and None not in acts


def test_contains_an_unhashable_name_is_false(acts):
    assert ["relu"] not in acts


def test_duplicate_registration_raises_and_keeps_the_first(acts):
    with pytest.raises(ValueError, match="activation 'relu' is already registered"):
        acts.register("relu", lambda: "other")
    assert acts.get("relu")() == "relu!"


def test_unknown_name_lists_valid_names_and_suggests_the_closest(acts):
    with pytest.raises(UnknownNameError) as err:
        acts.get("rleu")
    msg = str(err.value)
    assert msg == "unknown activation 'rleu'; did you mean 'relu'? valid: relu, tanh, leaky_relu"
    assert (err.value.name, err.value.suggestion, err.value.choices) == ("rleu", "relu", acts.names())


def test_unknown_name_without_a_close_match_has_no_suggestion(acts):
    with pytest.raises(UnknownNameError) as err:
        acts.get("softplus_with_temperature")
    assert "did you mean" not in str(err.value)
    assert "valid: relu, tanh, leaky_relu" in str(err.value)


def test_unknown_name_error_is_a_user_error_and_a_key_error(acts):
    """The CLI prints TrickLabError as one line; KeyError keeps `except KeyError` callers working."""
    with pytest.raises(TrickLabError):
        acts.get("nope")
    with pytest.raises(KeyError):
        acts.get("nope")


def test_unhashable_name_is_an_unknown_name_not_a_type_error(acts):
    with pytest.raises(UnknownNameError, match="valid: relu"):
        acts.get(["relu"])


def test_help_of_an_unknown_name_raises(acts):
    with pytest.raises(UnknownNameError, match="did you mean 'tanh'"):
        acts.help("tahn")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_registered_name_is_snake_case_with_one_line_help(family):
    reg = FAMILIES[family]
    assert len(reg) > 0 or family == "callbacks"  # callbacks: a family for plugins only, empty until one registers
    for entry in reg.entries():
        assert entry.help.strip(), f"{family}: {entry.name} has no help"
        assert "\n" not in entry.help, f"{family}: {entry.name} help spans lines"
        assert entry.name == entry.name.lower() and " " not in entry.name
