"""Errors a user can act on. Anything raised as :class:`TrickLabError` is shown as one line, exit code 2.

Every message is one line of at most :data:`MAX_MESSAGE` characters, whatever it was built from: line breaks
become spaces and an overlong message keeps its start and its end around an ellipsis. A value echoed in a
message goes through :func:`echo`, a repr of bounded length that never renders a huge value in full (a YAML
alias bomb, a 10⁶-element list)::

    >>> str(ConfigError("model.kwargs.x", list(range(10**6)), "must be a number"))[:60]
    'model.kwargs.x = [0, 1, 2, 3, 4, 5, ...]: must be a number'
"""

from __future__ import annotations

import reprlib

#: The longest error message, in characters (the CLI prints ``error: <message>``).
MAX_MESSAGE = 2000
#: The longest value echoed in a message, in characters.
MAX_VALUE = 100

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 6
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = MAX_VALUE, 40, MAX_VALUE


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line of at most ``limit`` characters: line breaks as spaces, an ellipsis in the middle
    of what is too long (the start says what failed, the end often how to recover)."""
    s = str(text)
    lines = s.splitlines()
    if len(lines) > 1 or s != s.rstrip("\r\n"):
        s = " ".join(line.strip() for line in lines if line.strip())
    if len(s) <= limit:
        return s
    head = (limit - 1) * 2 // 3
    return s[:head] + "…" + s[len(s) - (limit - 1 - head) :]


def echo(value: object, limit: int = MAX_VALUE) -> str:
    """A repr of ``value`` for a message: like ``repr`` for short values, bounded for long or deep ones (the
    full repr of a huge value is never built)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a plugin's object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    return one_line(text, limit)


def a_type(value: object) -> str:
    """The type of ``value`` with its article, for messages: ``an int``, ``a tuple``."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class TrickLabError(Exception):
    """An error caused by the user's input (config, CLI arguments, data files).

    The CLI prints ``error: <message>`` on one line and exits with :attr:`exit_code` (2), without a
    traceback unless ``--debug`` is given. The message is made one line of at most :data:`MAX_MESSAGE`
    characters here, so no caller can print a multi-line or unbounded one.
    """

    exit_code = 2

    def __init__(self, *args: object):
        if args and isinstance(args[0], str):
            args = (one_line(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(TrickLabError):
    """A config value is wrong: the message names the full key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{one_line(key, MAX_VALUE)} = {echo(value)}: {allowed}")


class UnknownNameError(TrickLabError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __init__(self, kind: str, name: object, choices: list[str], suggestion: str | None):
        self.kind, self.name, self.choices, self.suggestion = kind, name, choices, suggestion
        hint = f"did you mean {suggestion!r}? " if suggestion else ""
        super().__init__(f"unknown {kind} {echo(name)}; {hint}valid: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def wrong_type(argument: str, value: object, allowed: str) -> TrickLabError:
    """The one-line error for an argument of the wrong type, naming it, the value and its type, and what is allowed::

    >>> str(wrong_type("out", 42, "a path (str or os.PathLike)"))
    'out = 42: got an int; expected a path (str or os.PathLike)'
    """
    return TrickLabError(f"{one_line(argument, MAX_VALUE)} = {echo(value)}: got {a_type(value)}; expected {allowed}")


class DataError(TrickLabError):
    """A dataset could not be found, downloaded or verified."""
