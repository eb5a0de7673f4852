"""A trick as one unit: the config section it owns, what it adds to a run, its checks and its PyTorch translation.

Each trick module registers its family in :data:`TRICKS`, next to the code of the trick itself::

    TRICKS.register("clip", TrickFamily(ClipConfig, callbacks=_callbacks, every_step=True,
                                        translations={"clip.mode": _in_pytorch}))

:class:`tricklab.config.Config` holds the section under the family's name, :mod:`tricklab.assembly` calls
every family's ``callbacks`` builder, the config's cross-section checks call every family's ``check``, and
:mod:`tricklab.diagnostics.in_pytorch` says a family's overrides in plain PyTorch with its ``translations``;
changing or adding a mode of a trick touches its own module only. Families are registered in the order
:mod:`tricklab.tricks` imports their modules, which is the order their callbacks are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from tricklab.events import Callback
from tricklab.registry import Registry
from tricklab.sections import Section


class Prescription(Protocol):
    """What a translation reads: every override prescribed, the settings of the run it is prescribed for, and the
    model (None: generic sentences) with its Linear/Conv layers (:class:`tricklab.diagnostics.in_pytorch.Context`)."""

    overrides: Mapping[str, Any]
    settings: Mapping[str, Any]
    model: nn.Module | None

    def weight_layers(self) -> list[tuple[str, nn.Module]]: ...


#: A translation: (the override's value, the prescription) → a sentence of PyTorch, or None when another key's
#: sentence says it.
Translate = Callable[[Any, Prescription], "str | None"]


@dataclass(frozen=True)
class BuildContext:
    """What a family's builder may use besides the config: the training data, as the assembly holds it.

    ``train_batches()``: the training set in batches of ``data.batch_size``, a final batch of one merged into
    the one before (SWA's batch-norm pass cannot take a batch of one).
    """

    train_batches: Callable[[], Iterable[Any]]


def _no_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    return []


@dataclass(frozen=True)
class TrickFamily:
    """One family of tricks, as :mod:`tricklab.config`, :mod:`tricklab.assembly` and the doctor use it.

    ``section``: its config section (a :class:`~tricklab.sections.Section`), held under the family's registered
    name (None: its keys live in another section, as ``model.norm`` does); ``callbacks(cfg, ctx)``: the callbacks
    a validated config asks for (the loop orders them by their ``order``); ``every_step``: they act on every
    step's gradients, so the doctor's short probed run needs them too; ``check(cfg)``: checks across sections,
    raising :class:`~tricklab.errors.ConfigError`; ``translations``: override key → its sentence in plain PyTorch
    (:mod:`tricklab.diagnostics.in_pytorch`).
    """

    section: type[Section] | None
    callbacks: Callable[[Any, BuildContext], list[Callback]] = _no_callbacks
    every_step: bool = False
    check: Callable[[Any], None] | None = None
    translations: Mapping[str, Translate] = field(default_factory=dict)


#: Every trick family, by the name of the config section it owns.
TRICKS: Registry[TrickFamily] = Registry("trick family")

# --- what the translations share ----------------------------------------------------------------------------------

#: Shown in place of the rest when a list of layers is longer.
MOST_LAYERS = 4


def cite(help_text: str) -> str:
    """A registry's help line (formula; reference) in parentheses."""
    return f" ({help_text})" if help_text else ""


def names_phrase(names: Sequence[str]) -> str:
    """``a, b, c, d and 3 more``: at most :data:`MOST_LAYERS` names."""
    shown = ", ".join(names[:MOST_LAYERS])
    return f"{shown} and {len(names) - MOST_LAYERS} more" if len(names) > MOST_LAYERS else shown


def layers_phrase(layers: list[tuple[str, nn.Module]], kind: str = "") -> str:
    """``the Linear/Conv layers 0, 2`` (``kind``: e.g. ``"hidden "``); every such layer when none is known."""
    if not layers:
        return f"every {kind}nn.Linear/nn.Conv1d/nn.Conv2d layer"
    return f"the {kind}Linear/Conv layers {names_phrase([n for n, _ in layers])}"
