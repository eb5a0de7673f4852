"""Input scaling, the lesson's first trick: keep values in range.

Statistics are fitted on the training split only and applied to every split as ``x' = (x − shift) / scale``.
What a statistic is taken over depends on the input's shape ``(N, C, ...)``:

* one channel (MNIST (N, 1, 28, 28), MNIST-1D (N, 1, 40)): one scalar shift and scale for the whole input,
  as is usual for images (per-pixel statistics would divide MNIST's constant border pixels by zero);
* C > 1 channels or features (CIFAR-10 (N, 3, 32, 32), a table (N, F)): one shift and scale per channel
  (or feature), over all examples and positions, as in Krizhevsky et al. 2012 and He et al. 2016. A channel
  that is constant on the training split gets scale 1 instead of a division by zero.

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
    fit_scaler(cifar_train, "standardize").shift   # (125.3, 123.0, 113.9): one per colour channel
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tricklab.registry import Registry
from tricklab.tricks.family import TRICKS, Prescription, TrickFamily

SCALINGS: Registry = Registry("scaling")

Stat = float | tuple[float, ...]  # one value for the whole input, or one per channel / feature


def per_channel(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, C, ...) gets statistics per channel: it has more than one channel or feature."""
    return x.ndim >= 2 and x.shape[1] > 1


def _none(x: torch.Tensor) -> tuple[Stat, Stat]:
    return 0.0, 1.0


def _min_max(x: torch.Tensor) -> list[tuple[float, float]]:
    """(min, max) of each channel of ``x`` (N, C, ...)."""
    dims = (0, *range(2, x.ndim))
    return list(zip(x.amin(dim=dims).double().tolist(), x.amax(dim=dims).double().tolist(), strict=True))


def _minmax01(x: torch.Tensor) -> tuple[Stat, Stat]:
    if per_channel(x):
        lo_hi = _min_max(x)
        return tuple(lo for lo, _ in lo_hi), tuple((hi - lo) or 1.0 for lo, hi in lo_hi)
    lo, hi = float(x.min()), float(x.max())
    return lo, (hi - lo) or 1.0


def _minmax11(x: torch.Tensor) -> tuple[Stat, Stat]:
    if per_channel(x):
        lo_hi = _min_max(x)
        return tuple((hi + lo) / 2 for lo, hi in lo_hi), tuple(((hi - lo) / 2) or 1.0 for lo, hi in lo_hi)
    lo, hi = float(x.min()), float(x.max())
    return (hi + lo) / 2, ((hi - lo) / 2) or 1.0


def _mean_std(c: torch.Tensor) -> tuple[float, float]:
    """Mean and std (unbiased) of one channel in float64; a constant channel, or a single value, gets std 1."""
    c = c.double()
    std = float(c.std()) if c.numel() > 1 else 0.0
    return float(c.mean()), std or 1.0


def _standardize(x: torch.Tensor) -> tuple[Stat, Stat]:
    if per_channel(x):  # one channel at a time: all of CIFAR-10 in float64 at once would take 1.1 GB
        stats = [_mean_std(x[:, i]) for i in range(x.shape[1])]
        return tuple(m for m, _ in stats), tuple(s for _, s in stats)
    x = x.double()
    return float(x.mean()), float(x.std()) or 1.0


SCALINGS.register("none", _none, help="x (raw values)")
SCALINGS.register("minmax01", _minmax01, help="(x − min)/(max − min) ∈ [0, 1]; per channel or feature if C > 1")
SCALINGS.register("minmax11", _minmax11, help="2(x − min)/(max − min) − 1 ∈ [−1, 1]; per channel or feature if C > 1")
SCALINGS.register(
    "standardize", _standardize, help="(x − mean)/std, per channel or feature if C > 1; LeCun et al. 1998"
)


@dataclass(frozen=True)
class Scaler:
    """A fitted affine input scaling ``x' = (x − shift)/scale``; saved with every run (``scaler.json``).

    ``shift`` and ``scale`` are floats (one for the whole input) or tuples with one value per channel of
    dimension 1 (per feature for a table (N, F)).
    """

    kind: str
    shift: Stat
    scale: Stat

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.shift, tuple) or isinstance(self.scale, tuple):
            shape = (-1,) + (1,) * (x.ndim - 2)  # broadcast over dimension 1 of (N, C, ...)
            shift = torch.as_tensor(self.shift, dtype=torch.float64).reshape(shape).to(torch.float32)
            scale = torch.as_tensor(self.scale, dtype=torch.float64).reshape(shape).to(torch.float32)
            return ((x.to(torch.float32) - shift) / scale).to(torch.float32)
        return ((x.to(torch.float32) - self.shift) / self.scale).to(torch.float32)

    def to_dict(self) -> dict:
        """``{"kind", "shift", "scale"}``, JSON-ready: per-channel values as lists."""
        return {"kind": self.kind, "shift": _to_json(self.shift), "scale": _to_json(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        """The scaler of a ``scaler.json`` (numbers, or lists of per-channel numbers)."""
        return cls(d["kind"], _from_json(d["shift"]), _from_json(d["scale"]))


def _to_json(v: Stat) -> float | list[float]:
    return list(v) if isinstance(v, tuple) else v


def _from_json(v: float | Sequence[float]) -> Stat:
    return tuple(float(e) for e in v) if isinstance(v, Sequence) else float(v)


def fit_scaler(x: torch.Tensor, kind: str) -> Scaler:
    """Fit the ``kind`` scaling on training inputs ``x`` (any shape; per channel if dimension 1 has C > 1)."""
    shift, scale = SCALINGS.get(kind)(x)
    return Scaler(kind, shift, scale)


# --- the family: its key lives in the data section; what it is in plain PyTorch ------------------------------


def scale_in_pytorch(value: str, p: Prescription) -> str:
    """``data.scale`` in plain PyTorch: scale the inputs with the training set's statistics."""
    SCALINGS.get(value)
    if value == "none":
        return "feed the raw inputs, unscaled"
    stats = "computed on the training inputs `x_train` only, applied to every split (per channel for images)"
    formula = {
        "standardize": "`x = (x - x_train.mean()) / x_train.std()`",
        "minmax01": "`x = (x - x_train.min()) / (x_train.max() - x_train.min())`",
        "minmax11": "`x = 2 * (x - x_train.min()) / (x_train.max() - x_train.min()) - 1`",
    }[value]
    return f"scale the inputs ({value}): {formula}, with statistics {stats} (LeCun et al. 1998)"


TRICKS.register(
    "scale",
    TrickFamily(None, translations={"data.scale": scale_in_pytorch}),
    help="input scaling (data.scale) with the training set's statistics",
)
