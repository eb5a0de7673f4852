"""Records: what the probes measure, as names and plain numbers, with no hooks and no torch.

The metric names here are shared by the probes that write them (:mod:`tricklab.diagnostics.probes`), the
verdicts that read them (:mod:`tricklab.diagnostics.verdicts`) and the report that draws them
(:mod:`tricklab.report.doctor`). ``records.data[metric][layer][step] = value``, where ``layer`` is a name as in
``model.named_modules()``, or :data:`MODEL` / :data:`INPUT` for the whole-model and input records:

=======================  =====================================================================================
metric                   what
=======================  =====================================================================================
``act_mean``, ``act_std``  mean and std of each weight, norm and activation layer's output
``dead_fraction``        ReLU layers: fraction of units (features; channels of a conv) that output 0 for the
                         whole batch
``saturated_fraction``   tanh: fraction of outputs with |y| > 0.99; sigmoid: y < 0.01 or y > 0.99
                         (:data:`SATURATION_LEVEL`)
``act_hist``             activation layers: fraction of outputs in each bin over the layer's ``hist_range``
                         (:data:`HIST_RANGES`; values outside are counted in the edge bins)
``grad_std``             std of the loss gradient w.r.t. each Linear/Conv layer's output (the backward signal)
``weight_grad_norm``     ‖∂L/∂W‖ of each Linear/Conv layer (its parameters but the bias), before clipping
``weight_fan_in``        each Linear/Conv layer's fan-in (weights per output unit: in_features, in_channels·k·k),
                         (recorded once, at step 0)
``update_ratio``         ‖ΔW‖ / ‖W‖ of each Linear/Conv layer across the optimizer step
``global_grad_norm``     ‖g‖ over every parameter, layer ``(model)``
``loss``                 the batch loss, layer ``(model)``
``label_prior_loss``     cross-entropy on class labels: the entropy −Σ p_c ln p_c of the labels seen in training,
                         the loss of predicting the class frequencies without looking at the input (layer
                         ``(model)``, once, at the last step)
``input_mean`` ...       ``input_mean``, ``input_rms``, ``input_abs_max`` of the model's input, layer ``(input)``
=======================  =====================================================================================

A probed layer's kind is :data:`WEIGHT` (Linear/Conv), :data:`NORM`, an activation name
(:data:`ACTIVATIONS`) or :data:`OTHER`; the first non-finite value is a :class:`NonFinite` whose ``where`` is
one of the ``WHERE_*`` names. :class:`Findings` bundles it all as plain data (after fastai's
``ActivationStats``: diagnostics record, reports draw)::

    findings.records.series(WEIGHT_GRAD_NORM, "0")   # ([0, 10, 20, ...], [0.31, 0.27, ...])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- metric names, shared by probes, verdicts and tricklab.report.doctor -----------------------------------------
ACT_MEAN = "act_mean"
ACT_STD = "act_std"
DEAD_FRACTION = "dead_fraction"
SATURATED_FRACTION = "saturated_fraction"
ACT_HIST = "act_hist"
GRAD_STD = "grad_std"
WEIGHT_GRAD_NORM = "weight_grad_norm"
WEIGHT_FAN_IN = "weight_fan_in"
UPDATE_RATIO = "update_ratio"
GLOBAL_GRAD_NORM = "global_grad_norm"
LOSS = "loss"
PRIOR_LOSS = "label_prior_loss"
INPUT_MEAN = "input_mean"
INPUT_RMS = "input_rms"
INPUT_ABS_MAX = "input_abs_max"

#: Layer names of the whole-model and input records.
MODEL = "(model)"
INPUT = "(input)"

# --- layer kinds ------------------------------------------------------------------------------------------------
WEIGHT = "weight"  # Linear / Conv1d / Conv2d: the layers initializers set
NORM = "norm"
OTHER = "other"  # any other leaf module: checked for non-finite values only
RELU, SIGMOID, TANH, GELU = "relu", "sigmoid", "tanh", "gelu"
#: The activation kinds the probes recognize (each also a layer kind).
ACTIVATIONS = (RELU, SIGMOID, TANH, GELU)

#: |y| beyond which tanh, and y below 1 − this or above this for sigmoid, count as saturated: there the
#: derivative is < 0.02 (tanh, 1 − y²) or < 0.01 (sigmoid, y(1 − y)), so the unit passes back almost nothing.
SATURATION_LEVEL = 0.99

#: Histogram range per activation kind; values outside are counted in the edge bins.
HIST_RANGES: dict[str, tuple[float, float]] = {
    RELU: (0.0, 10.0),
    GELU: (-1.0, 10.0),
    SIGMOID: (0.0, 1.0),
    TANH: (-1.0, 1.0),
}
DEFAULT_HIST_RANGE = (-10.0, 10.0)

# --- where a non-finite value first appeared -------------------------------------------------------------------
WHERE_INPUT, WHERE_FORWARD, WHERE_LOSS, WHERE_BACKWARD, WHERE_WEIGHTS = (
    "input",
    "forward",
    "loss",
    "backward",
    "weights",
)


@dataclass(frozen=True)
class LayerInfo:
    """A probed module: its name, kind (``weight``, ``norm``, an activation name, ``other``) and forward order."""

    name: str
    kind: str
    index: int
    hist_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class NonFinite:
    """The first NaN or ±inf seen: at which step, in which layer (None if unknown), where and what."""

    step: int
    layer: str | None
    where: str
    detail: str

    def __str__(self) -> str:
        return f"step {self.step}, {self.where}: {self.detail}"


class Records:
    """Plain numbers keyed by metric, layer and step: ``records.data[metric][layer][step] = value``.

    Layers appear in the order they were first recorded (forward order for forward metrics).
    """

    def __init__(self, data: dict[str, dict[str, dict[int, Any]]] | None = None):
        self.data: dict[str, dict[str, dict[int, Any]]] = data or {}

    def add(self, metric: str, layer: str, step: int, value: Any) -> None:
        self.data.setdefault(metric, {}).setdefault(layer, {})[step] = value

    def layers(self, metric: str) -> list[str]:
        return list(self.data.get(metric, {}))

    def series(self, metric: str, layer: str = MODEL) -> tuple[list[int], list[Any]]:
        """(steps, values) of one metric in one layer, by step."""
        points = sorted(self.data.get(metric, {}).get(layer, {}).items())
        return [s for s, _ in points], [v for _, v in points]

    def get(self, metric: str, layer: str, step: int, default: Any = None) -> Any:
        return self.data.get(metric, {}).get(layer, {}).get(step, default)

    def steps(self, metric: str) -> list[int]:
        """Every step at which ``metric`` was recorded in some layer."""
        return sorted({s for per_step in self.data.get(metric, {}).values() for s in per_step})

    def to_dict(self) -> dict[str, dict[str, list[list[Any]]]]:
        """JSON-ready: ``{metric: {layer: [[step, value], ...]}}``."""
        return {
            m: {layer: [[s, v] for s, v in sorted(ps.items())] for layer, ps in by.items()}
            for m, by in self.data.items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, list[list[Any]]]]) -> Records:
        return cls({m: {layer: {int(s): v for s, v in pts} for layer, pts in by.items()} for m, by in d.items()})


@dataclass
class Findings:
    """What a probe saw, as plain data: the records, the layers in forward order, the first non-finite value."""

    records: Records
    layers: list[LayerInfo]
    every: int
    steps: int  # training steps seen
    first_nonfinite: NonFinite | None = None
    notes: list[str] = field(default_factory=list)

    def layers_of(self, *kinds: str) -> list[LayerInfo]:
        return [info for info in self.layers if info.kind in kinds]

    def to_dict(self) -> dict[str, Any]:
        nf = self.first_nonfinite
        return {
            "every": self.every,
            "steps": self.steps,
            "layers": [[i.name, i.kind, i.index] for i in self.layers],
            "first_nonfinite": None if nf is None else nf.__dict__,
            "records": self.records.to_dict(),
        }


def hist_range(kind: str) -> tuple[float, float] | None:
    """The ``act_hist`` range of an activation kind; None for a layer that has no histogram."""
    return HIST_RANGES.get(kind, DEFAULT_HIST_RANGE) if kind in ACTIVATIONS else None
