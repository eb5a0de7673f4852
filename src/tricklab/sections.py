"""The base of every config section, and the checks sections share: names in a registry, float32 bounds.

A trick module defines its own section on this base (``ClipConfig`` in :mod:`tricklab.tricks.clipping`), and
:class:`tricklab.config.Config` composes the sections. Example::

    class ClipConfig(Section):
        mode: str = "none"
        _mode = field_validator("mode")(lambda v: name_in(CLIP_MODES, v))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

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


class Section(BaseModel):
    """A frozen config section: unknown keys refused, no boolean where a number belongs, numbers within float32."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: The scope a section built directly (``ModelConfig(name=...)``) is validated in: the config sets one in
    #: which each name it resolves is looked up once (:func:`tricklab.config.one_resolution`).
    _validation_scope: ClassVar[Callable[[], AbstractContextManager[Any]]] = nullcontext

    def __init__(self, **data: Any) -> None:
        with type(self)._validation_scope():
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
