"""Gradient clipping: cap the gradient before the step so one bad batch cannot throw the weights away.

Every mode is a name in :data:`CLIP_MODES`, with threshold θ (the lesson uses θ = 1 or 10):

- ``norm``: if the global L2 norm ‖g‖ over all parameters exceeds θ, scale every gradient by θ/‖g‖;
  the direction is kept (Pascanu et al. 2013; as :func:`torch.nn.utils.clip_grad_norm_`).
- ``value``: clamp each element to [−θ, θ]; the direction changes (Mikolov 2012).
- ``agc``: adaptive, unit-wise: a unit's gradient is scaled down when ‖g_i‖ / max(‖w_i‖, ε) > λ = θ
  (Brock et al. 2021). Not applied to the final classifier layer, as in the paper.
- ``none``: change nothing; :class:`GradClip` still records the gradient norm.

The pure functions act in place on the ``.grad`` of the parameters given::

    norm = clip_by_norm_(model.parameters(), max_norm=1.0)    # returns the norm before clipping
    adaptive_clip_(agc_parameters(model), clipping=0.01)

and :class:`GradClip` runs one of them in the loop and records the epoch's ``grad_norm``,
``grad_norm_max`` and ``clip_fraction``.

The family owns the config's ``clip`` section (:class:`ClipConfig`), builds :class:`GradClip` from it and says
each mode in plain PyTorch for the doctor (:func:`clip_mode_in_pytorch`): a new mode is a registered function
here, a sentence in :func:`clip_mode_in_pytorch`, and its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from tricklab.errors import ConfigError
from tricklab.events import ORDER_CLIP, Callback, FitState
from tricklab.metrics import CLIP_FRACTION, GRAD_NORM, GRAD_NORM_MAX  # the keys GradClip puts in epoch_extras
from tricklab.registry import Registry
from tricklab.sections import Section, name_in
from tricklab.tricks.family import TRICKS, BuildContext, Prescription, TrickFamily

#: A mode: clips the given parameters' gradients in place with threshold θ; True if any gradient changed.
ClipFn = Callable[[list[Tensor], float], bool]

CLIP_MODES: Registry[ClipFn] = Registry("clip mode")
#: Where the PyTorch translations put the clipping call.
WHERE_IN_A_LOOP = "between `loss.backward()` and `optimizer.step()`"


def _grads(params: Iterable[Tensor]) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def global_grad_norm(params: Iterable[Tensor]) -> float:
    """‖g‖ = sqrt(Σ_p ‖g_p‖²) over every gradient, as one vector; inf or nan are returned as they are.

    Example: gradients [3] and [4] → 5.0. Pascanu et al. 2013.
    """
    grads = _grads(params)
    if not grads:
        return 0.0
    device = grads[0].device
    norms = torch.stack([torch.linalg.vector_norm(g).to(device) for g in grads])
    return float(torch.linalg.vector_norm(norms))


@torch.no_grad()
def clip_by_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients by θ / (‖g‖ + 1e-6) when the global norm ‖g‖ > θ; return ‖g‖ before clipping.

    Matches :func:`torch.nn.utils.clip_grad_norm_`, except that a norm ≤ θ leaves the gradients bit for
    bit, and a non-finite norm leaves them alone (the loop's divergence check sees it).

    Example: ``clip_by_norm_(model.parameters(), 1.0)``. Pascanu et al. 2013.
    """
    params = list(params) if not isinstance(params, Tensor) else [params]
    norm = global_grad_norm(params)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in _grads(params):
            g.mul_(scale)
    return norm


@torch.no_grad()
def clip_by_value_(params: Iterable[Tensor], threshold: float) -> float:
    """Clamp every gradient element to [−θ, θ]; return max |g| before clipping (clipped iff > θ).

    Example: ``clip_by_value_(model.parameters(), 10.0)``. Mikolov 2012.
    """
    grads = _grads(params)
    if not grads:
        return 0.0
    device = grads[0].device
    maxima = [g.abs().max().to(device) for g in grads if g.numel()]
    largest = float(torch.stack(maxima).max()) if maxima else 0.0
    for g in grads:
        g.clamp_(-threshold, threshold)
    return largest


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit: over all dims but the first (rows of a Linear, filters of a Conv);
    the whole tensor's norm for biases and gains (``ndim <= 1``). Shaped to broadcast against ``x``."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: Iterable[Tensor], clipping: float, eps: float = 1e-3) -> int:
    """Adaptive gradient clipping, unit-wise; return how many units were clipped.

    For each unit i (see :func:`unitwise_norm`), with ``max_i = λ · max(‖w_i‖, ε)``::

        g_i ← g_i · max_i / ‖g_i‖   if ‖g_i‖ > max_i,   else unchanged

    so after clipping ‖g_i‖ / max(‖w_i‖, ε) ≤ λ. Use :func:`agc_parameters` to leave out the final
    classifier layer, as the paper does.

    Example: ``adaptive_clip_(agc_parameters(model), clipping=0.01)``. Brock et al. 2021 (NFNets).
    """
    params = [params] if isinstance(params, Tensor) else params
    clipped = 0
    for p in params:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        trigger = grad_norm > max_norm
        scaled = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(trigger, scaled, p.grad))
        clipped += int(trigger.sum())
    return clipped


def agc_parameters(model: nn.Module, skip: Iterable[str] | None = None) -> list[Tensor]:
    """The parameters AGC clips: all but those of the modules named in ``skip``.

    ``skip=None`` leaves out the last :class:`~torch.nn.Linear` (the final classifier layer, which Brock
    et al. 2021 do not clip); ``skip=()`` clips everything. Names are those of ``model.named_modules()``.

    Example: ``agc_parameters(model, skip=["head.fc"])``.
    """
    modules = dict(model.named_modules())
    if skip is None:
        linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
        skip = linears[-1:]
    skipped: set[int] = set()
    for name in skip:
        if name not in modules:
            valid = ", ".join(n for n in modules if n) or "(no submodules)"
            raise ConfigError("clip.agc_skip", name, f"names of the model's modules: {valid}")
        skipped.update(id(p) for p in modules[name].parameters())
    return [p for p in model.parameters() if id(p) not in skipped]


@CLIP_MODES.register("none", help="g unchanged (still records ‖g‖)")
def _none(params: list[Tensor], threshold: float) -> bool:
    return False


@CLIP_MODES.register("norm", help="g ← g · θ/‖g‖ if ‖g‖ > θ, global L2 norm; Pascanu et al. 2013")
def _norm(params: list[Tensor], threshold: float) -> bool:
    norm = clip_by_norm_(params, threshold)
    return math.isfinite(norm) and norm > threshold


@CLIP_MODES.register("value", help="g ← clamp(g, −θ, θ) element-wise; Mikolov 2012")
def _value(params: list[Tensor], threshold: float) -> bool:
    return clip_by_value_(params, threshold) > threshold


@CLIP_MODES.register("agc", help="g_i ← g_i · λ max(‖w_i‖, 1e-3)/‖g_i‖ per unit if larger; Brock et al. 2021")
def _agc(params: list[Tensor], threshold: float) -> bool:
    return adaptive_clip_(params, threshold) > 0


class GradClip(Callback):
    """Clip the gradients after each backward and record their global norm.

    ``mode`` is a name in :data:`CLIP_MODES`, ``threshold`` is θ (λ for ``agc``). ``agc_skip``: module
    names that ``agc`` leaves unclipped (default: the last Linear, see :func:`agc_parameters`).

    Events: ``on_epoch_start`` resets the counts; ``on_after_backward`` takes the global norm before
    clipping, then clips; ``on_epoch_end`` puts into ``state.epoch_extras`` the epoch's mean pre-clip
    norm ``grad_norm``, its max ``grad_norm_max`` and ``clip_fraction``, the fraction of steps where
    clipping changed a gradient. ``order = ORDER_CLIP`` (0): after :class:`~tricklab.tricks.regularization.L1Penalty`.

    Example: ``GradClip("norm", 1.0)``. Pascanu et al. 2013; Brock et al. 2021.
    """

    order = ORDER_CLIP

    def __init__(self, mode: str = "norm", threshold: float = 1.0, agc_skip: Iterable[str] | None = None):
        self.clip = CLIP_MODES.get(mode)
        ok = isinstance(threshold, int | float) and not isinstance(threshold, bool)
        if not (ok and math.isfinite(threshold) and threshold > 0):
            raise ConfigError("clip.threshold", threshold, "a finite number > 0")
        self.mode, self.threshold = mode, float(threshold)
        self.agc_skip = None if agc_skip is None else list(agc_skip)
        self._agc_for: tuple[nn.Module, list[Tensor]] | None = None  # (model, its agc_parameters)
        self._reset()

    def _reset(self) -> None:
        self.steps, self.clipped, self.norm_sum, self.norm_max = 0, 0, 0.0, 0.0

    def on_epoch_start(self, state: FitState) -> None:
        self._reset()

    def on_after_backward(self, state: FitState) -> None:
        params = list(state.model.parameters())
        norm = global_grad_norm(params)
        if self.mode == "agc":
            if self._agc_for is None or self._agc_for[0] is not state.model:
                self._agc_for = (state.model, agc_parameters(state.model, self.agc_skip))
            params = self._agc_for[1]
        self.steps += 1
        self.clipped += bool(self.clip(params, self.threshold))
        self.norm_sum += norm
        if math.isnan(norm) or norm > self.norm_max:
            self.norm_max = norm

    def on_epoch_end(self, state: FitState) -> None:
        if self.steps == 0:
            return
        state.epoch_extras[GRAD_NORM] = self.norm_sum / self.steps
        state.epoch_extras[GRAD_NORM_MAX] = self.norm_max
        state.epoch_extras[CLIP_FRACTION] = self.clipped / self.steps


# --- the family: config section, builder, PyTorch translation ------------------------------------------------


class ClipConfig(Section):
    """Gradient clipping: θ = 1 or 10 by global norm (the lesson), by value, or adaptive (AGC)."""

    mode: str = "none"
    threshold: float = Field(1.0, gt=0, allow_inf_nan=False)

    _mode = field_validator("mode")(lambda v: name_in(CLIP_MODES, v))


def clip_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    """:class:`GradClip` for ``clip.mode`` and ``clip.threshold``; nothing for ``none``."""
    c: ClipConfig = cfg.clip
    return [] if c.mode == "none" else [GradClip(c.mode, c.threshold)]


def clip_mode_in_pytorch(value: str, p: Prescription) -> str:
    """``clip.mode`` in plain PyTorch: clip_grad_norm_ / clip_grad_value_ before optimizer.step()."""
    CLIP_MODES.get(value)
    t = float(p.overrides.get("clip.threshold", p.settings.get("clip.threshold", 1.0)))
    if value == "none":
        return "remove the gradient clipping (the `clip_grad_norm_` / `clip_grad_value_` call before the step)"
    if value == "norm":
        return (
            f"clip the gradient norm: `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={t:g})` "
            f"{WHERE_IN_A_LOOP} (Pascanu et al. 2013)"
        )
    if value == "value":
        return (
            f"clip each gradient element: `torch.nn.utils.clip_grad_value_(model.parameters(), clip_value={t:g})` "
            f"{WHERE_IN_A_LOOP} (Mikolov 2012)"
        )
    return (
        "clip unit-wise, adaptively (PyTorch has no built-in): `from tricklab.tricks.clipping import "
        f"adaptive_clip_, agc_parameters`, then `adaptive_clip_(agc_parameters(model), clipping={t:g})` "
        f"{WHERE_IN_A_LOOP} (Brock et al. 2021)"
    )


def clip_threshold_in_pytorch(value: float, p: Prescription) -> str | None:
    """``clip.threshold`` in plain PyTorch: the threshold of the clipping call."""
    if "clip.mode" in p.overrides:
        return None  # the clip.mode sentence has it
    arg = "clip_value" if p.settings.get("clip.mode") == "value" else "max_norm"
    return f"clip at {value:g}: `{arg}={value:g}` in your `torch.nn.utils.clip_grad_*_` call"


TRICKS.register(
    "clip",
    TrickFamily(
        ClipConfig,
        callbacks=clip_callbacks,
        every_step=True,
        translations={"clip.mode": clip_mode_in_pytorch, "clip.threshold": clip_threshold_in_pytorch},
    ),
    help="gradient clipping by global norm, by value or adaptive (AGC)",
)
