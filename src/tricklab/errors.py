"""Errors a user can act on. Anything raised as :class:`TrickLabError` is shown as one line, exit code 2."""

from __future__ import annotations


class TrickLabError(Exception):
    """An error caused by the user's input (config, CLI arguments, data files).

    The CLI prints ``error: <message>`` on one line and exits with :attr:`exit_code` (2), without a
    traceback unless ``--debug`` is given.
    """

    exit_code = 2


class ConfigError(TrickLabError):
    """A config value is wrong: the message names the full key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


class UnknownNameError(TrickLabError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __init__(self, kind: str, name: object, choices: list[str], suggestion: str | None):
        self.kind, self.name, self.choices, self.suggestion = kind, name, choices, suggestion
        hint = f"did you mean {suggestion!r}? " if suggestion else ""
        super().__init__(f"unknown {kind} {name!r}; {hint}valid: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DataError(TrickLabError):
    """A dataset could not be found, downloaded or verified."""
