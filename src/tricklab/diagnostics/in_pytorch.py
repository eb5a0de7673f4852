"""The doctor's prescriptions in plain PyTorch: one sentence per tricklab override, for a loop of your own.

A verdict prescribes config overrides (``{"init.scheme": "glorot_normal", "model.norm": "batch"}``), which a
tricklab run applies with ``--set``; someone with a model and loop of their own needs the PyTorch lines that
do the same. :data:`TRANSLATIONS` holds one translator per override key (a test enumerates every key the
verdicts can prescribe and every registered value of it): a trick family's keys come from its own module
(:attr:`tricklab.tricks.family.TrickFamily.translations`), the model's and the init's are here. :func:`in_pytorch`
applies them::

    in_pytorch({"clip.mode": "norm", "clip.threshold": 1.0, "optim.lr": 0.01}, settings={"optim.lr": 0.1})
    # {"clip.mode": "clip the gradient norm: `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1)` ...",
    #  "optim.lr": "lower the learning rate from 0.1 to 0.01: `for g in optimizer.param_groups: g[\"lr\"] = 0.01`"}

Given the model and the names of its Linear/Conv layers in forward order (as the probes saw them), the
sentences name the layers and the sizes, e.g. ``nn.BatchNorm1d(64) after 0, 2, 4 (+9 more)``. Each init
scheme's call (:data:`tricklab.tricks.init.INIT_CALLS`) draws the weights as tricklab's scheme of that name does
(a test compares their statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tricklab.diagnostics.probes import ACTIVATION_KINDS
from tricklab.registry import Registry
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.family import TRICKS
from tricklab.tricks.family import cite as _cite
from tricklab.tricks.init import INIT_CALLS as INIT_CALLS  # the init family's PyTorch calls, read by tests
from tricklab.tricks.init import INIT_LAYERS


@dataclass(frozen=True)
class Context:
    """What a translator may read: all the overrides, the model (None: generic sentences), its Linear/Conv layer
    names in forward order, and the settings the verdicts read (the current LR, norm, clipping)."""

    overrides: Mapping[str, Any]
    model: nn.Module | None = None
    layers: Sequence[str] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the model's Linear/Conv layers, in forward order when the probes saw them."""
        if self.model is None:
            return []
        modules = dict(self.model.named_modules())
        named = [(n, modules[n]) for n in self.layers if isinstance(modules.get(n), INIT_LAYERS)]
        return named or [(n, m) for n, m in modules.items() if isinstance(m, INIT_LAYERS)]


#: A translator: (the override's value, the context) → a sentence, or None when another key's sentence says it.
Translate = Callable[[Any, Context], "str | None"]
TRANSLATIONS: Registry[Translate] = Registry("prescription key")


def in_pytorch(
    overrides: Mapping[str, Any],
    *,
    model: nn.Module | None = None,
    layers: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """One PyTorch sentence per override key, in the overrides' order (a key that another key's sentence covers,
    like ``clip.threshold`` beside ``clip.mode``, is left out). An unknown key raises with the known ones."""
    ctx = Context(overrides, model, tuple(layers), dict(settings or {}))
    out = {}
    for key, value in overrides.items():
        sentence = TRANSLATIONS.get(key)(value, ctx)
        if sentence is not None:
            out[key] = sentence
    return out


# --- the translators -------------------------------------------------------------------------------------------
# Each trick family says its own keys (tricklab.tricks.family.TrickFamily.translations); the rest are here.

for _entry in TRICKS.entries():
    for _key, _translate in _entry.obj.translations.items():
        TRANSLATIONS.register(_key, _translate)


@TRANSLATIONS.register("model.residual", help="skip connections x + block(x)")
def model_residual(value: bool, ctx: Context) -> str:
    if not value:
        return "remove the skip connections (`x + block(x)` → `block(x)`)"
    return (
        "add skip connections around the hidden blocks whose input and output sizes match: "
        "`x = x + block(x)`, where a block is Linear (norm) activation (He et al. 2016)"
    )


@TRANSLATIONS.register("model.activation", help="replace the activation modules")
def model_activation(value: str, ctx: Context) -> str:
    new = f"`nn.{ACTIVATIONS.get(value).__name__}()`"
    found: dict[str, int] = {}
    for m in ctx.model.modules() if ctx.model is not None else ():
        if type(m) in ACTIVATION_KINDS:
            found[type(m).__name__] = found.get(type(m).__name__, 0) + 1
    old = ", ".join(f"{n} × nn.{cls}" for cls, n in found.items())
    cite = _cite(ACTIVATIONS.help(value))
    if not old:
        return f"use {new} as the activation (`torch.nn.functional.{value}` in a forward of your own){cite}"
    return f"replace the activations ({old}) with {new}{cite}"

