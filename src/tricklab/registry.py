"""Name → object registries: every family of tricks, models, datasets and studies is looked up by name.

Example::

    ACTIVATIONS = Registry("activation")

    @ACTIVATIONS.register("relu", help="max(0, x)")
    def relu() -> nn.Module: ...

    ACTIVATIONS.get("relu")      # the factory
    ACTIVATIONS.get("rleu")      # UnknownNameError: unknown activation 'rleu'; did you mean 'relu'? valid: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from tricklab.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str
    source: str = ""  # "" for tricklab's own; else where a plugin came from ("registered in Python", "plugin pkg")


class Registry(Generic[T]):
    """An ordered mapping of snake_case names to objects, with one-line help for ``tricklab list``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, obj: T | None = None, *, help: str = "", source: str = ""
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        A plugin (``source`` set) may replace an earlier plugin of the same name (a notebook cell run twice);
        tricklab's own names can never be replaced.
        """

        def add(o: T) -> T:
            old = self._entries.get(name)
            if old is not None and not (source and old.source):
                raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = help or (getattr(o, "__doc__", None) or "").strip().splitlines()[:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, o, text, source)
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise with the valid names and a did-you-mean."""
        try:
            return self._entries[name].obj
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names(), self.suggest(name)) from None

    def suggest(self, name: object) -> str | None:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        return close[0] if close else None

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def unregister(self, name: str) -> None:
        """Remove a plugin (tricklab's own names stay)."""
        entry = self.entry(name)
        if not entry.source:
            raise ValueError(f"{self.kind} {name!r} is built in and cannot be removed")
        del self._entries[name]

    def help(self, name: str) -> str:
        self.get(name)
        return self._entries[name].help

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
