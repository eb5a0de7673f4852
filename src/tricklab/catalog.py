"""Every registry, by family name: what ``tricklab list`` prints and what the docs are generated from."""

from __future__ import annotations

import difflib

from tricklab.data import DATASETS
from tricklab.errors import UnknownNameError
from tricklab.lab.studies import STUDIES
from tricklab.models import MODELS
from tricklab.plugins import CALLBACKS, ENTRY_POINT_GROUPS, load_entry_points
from tricklab.registry import Registry
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.clipping import CLIP_MODES
from tricklab.tricks.init import INITIALIZERS
from tricklab.tricks.norms import NORMS
from tricklab.tricks.optimizers import OPTIMIZERS
from tricklab.tricks.scaling import SCALINGS
from tricklab.tricks.schedules import SCHEDULES

FAMILIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "scalings": SCALINGS,
    "models": MODELS,
    "activations": ACTIVATIONS,
    "norms": NORMS,
    "inits": INITIALIZERS,
    "optimizers": OPTIMIZERS,
    "clip_modes": CLIP_MODES,
    "schedules": SCHEDULES,
    "studies": STUDIES,
    "callbacks": CALLBACKS,
}


def family(name: str) -> Registry:
    """The registry called ``name`` (e.g. ``"optimizers"``); unknown names fail with a did-you-mean."""
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        raise UnknownNameError("registry", name, list(FAMILIES), close[0] if close else None)
    if name in ENTRY_POINT_GROUPS:
        load_entry_points(name, FAMILIES[name])
    return FAMILIES[name]


def list_names(name: str | None = None) -> dict[str, list[str]]:
    """Every registered name by family (installed plugins included), or one family's: ``tricklab list`` as data."""
    return {f: family(f).names() for f in ([name] if name else FAMILIES)}
