"""Every registry, by family name: what ``tricklab list`` prints and what the docs are generated from."""

from __future__ import annotations

from tricklab.data import DATASETS
from tricklab.errors import UnknownNameError
from tricklab.models import MODELS
from tricklab.registry import Registry
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.norms import NORMS
from tricklab.tricks.scaling import SCALINGS

FAMILIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "scalings": SCALINGS,
    "models": MODELS,
    "activations": ACTIVATIONS,
    "norms": NORMS,
}


def family(name: str) -> Registry:
    if name not in FAMILIES:
        import difflib

        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        raise UnknownNameError("registry", name, list(FAMILIES), close[0] if close else None)
    return FAMILIES[name]
