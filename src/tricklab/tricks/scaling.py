"""Input scaling, the lesson's first trick: keep values in range.

Statistics are fitted on the training split only and applied to every split as ``x' = (x − shift) / scale``
(one scalar shift and scale for the whole input, as is usual for images: per-pixel statistics would divide
MNIST's constant border pixels by zero).

=============== ==================================== ============================
name            shift, scale                         result on the training split
=============== ==================================== ============================
none            0, 1                                 raw values (MNIST pixels 0..255)
minmax01        min, max − min                       values in [0, 1]
minmax11        (max + min)/2, (max − min)/2         values in [−1, 1]
standardize     mean, std                            zero mean, unit std (LeCun et al. 1998, "Efficient BackProp")
=============== ==================================== ============================

Example::

    s = fit_scaler(x_train, "standardize")   # Scaler(kind='standardize', shift=33.3, scale=78.6) on MNIST
    x_train, x_val = s.apply(x_train), s.apply(x_val)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tricklab.registry import Registry

SCALINGS: Registry = Registry("scaling")


def _none(x: torch.Tensor) -> tuple[float, float]:
    return 0.0, 1.0


def _minmax01(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = float(x.min()), float(x.max())
    return lo, (hi - lo) or 1.0


def _minmax11(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = float(x.min()), float(x.max())
    return (hi + lo) / 2, ((hi - lo) / 2) or 1.0


def _standardize(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std()) or 1.0


SCALINGS.register("none", _none, help="x (raw values)")
SCALINGS.register("minmax01", _minmax01, help="(x − min)/(max − min) ∈ [0, 1]")
SCALINGS.register("minmax11", _minmax11, help="2(x − min)/(max − min) − 1 ∈ [−1, 1]")
SCALINGS.register("standardize", _standardize, help="(x − mean)/std: zero mean, unit std; LeCun et al. 1998")


@dataclass(frozen=True)
class Scaler:
    """A fitted affine input scaling ``x' = (x − shift)/scale``; saved with every run."""

    kind: str
    shift: float
    scale: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float32) - self.shift) / self.scale).to(torch.float32)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_scaler(x: torch.Tensor, kind: str) -> Scaler:
    """Fit the ``kind`` scaling on training inputs ``x`` (any shape)."""
    shift, scale = SCALINGS.get(kind)(x)
    return Scaler(kind, shift, scale)
