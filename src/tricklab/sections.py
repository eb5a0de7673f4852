"""The base of every config section, and the checks sections share: names in a registry, float32 bounds, names
resolved once per validation.

A trick module defines its own section on this base (``ClipConfig`` in :mod:`tricklab.tricks.clipping`), and
:class:`tricklab.config.Config` composes the sections. Example::

    class ClipConfig(Section):
        mode: str = "none"
        _mode = field_validator("mode")(lambda v: name_in(CLIP_MODES, v))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from tricklab import plugins
from tricklab.registry import Registry

#: The largest finite float32: no number in a config may exceed it (the optimizers compute in float32).
FLOAT32_MAX = 3.4028234663852886e38
#: The largest learning rate, weight decay or L1 factor: the optimizers multiply them with each other and with
#: Adam's 1/(1 − β₁) = 10, and every such product must stay finite in float32 (≈ 3.4e38).
MAX_RATE = 1e16


def name_in(registry: Registry, value: str) -> str:
    """``value`` if ``registry`` holds it, else a ValueError with a did-you-mean and the valid names."""
    if value not in registry:
        hint = registry.suggest(value)
        mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(f"unknown {registry.kind}{mean} (valid: {', '.join(registry.names())})")
    return value


#: The names resolved so far in the validation under way, ``(family, name) → object`` (None: no validation).
_RESOLVED: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("tricklab_resolved", default=None)


@contextmanager
def one_resolution(known: dict[tuple[str, str], Any] | None = None) -> Iterator[None]:
    """Within the ``with`` block (one validation), each name resolves once: the section validators that read the
    same ``model.name`` (its defaults, its signature, ``init.scheme``'s default) share one lookup. ``known``: the
    objects a config already resolved, so that a copy of it with other overrides does not resolve them again."""
    if _RESOLVED.get() is not None:
        yield
        return
    token = _RESOLVED.set(dict(known or {}))
    try:
        yield
    finally:
        _RESOLVED.reset(token)


def resolve_once(registry: Registry, family: str, name: str, key: str) -> Callable:
    """The callable called ``name`` (see :func:`tricklab.plugins.resolve`), looked up once per validation."""
    memo = _RESOLVED.get()
    if memo is not None and (family, name) in memo:
        return memo[(family, name)]
    found = plugins.check_callable(plugins.resolve(registry, family, name, key), key, name)
    if memo is not None:
        memo[(family, name)] = found
    return found


class Section(BaseModel):
    """A frozen config section: unknown keys refused, no boolean where a number belongs, numbers within float32."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        with one_resolution():  # a section built directly (``ModelConfig(name=...)``) resolves its name once too
            super().__init__(**data)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false must not pass as 1/0 where a number belongs."""
        annotation = cls.model_fields[info.field_name].annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(value, bool) and annotation is not bool and bool not in args and "Any" not in str(annotation):
            kind = "an integer" if int in (annotation, *args) else "a number"
            if str in (annotation, *args) or "Literal" in str(annotation):
                kind = "a name"
            raise ValueError(f"must be {kind}, not a boolean")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _within_float32(cls, value: Any) -> Any:
        """Training computes in float32: a number beyond its range (``optim.lr=1e300``) would overflow there."""
        if isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"must be at most {FLOAT32_MAX:.4g} in size (the largest float32; training uses float32)")
        return value
