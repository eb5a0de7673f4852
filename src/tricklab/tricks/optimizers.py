"""Optimizers by name, with weight decay on weights only, coupled (L2) or decoupled.

Every optimizer is a name in :data:`OPTIMIZERS`, built by :func:`build_optimizer`::

    opt = build_optimizer("momentum", model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt = build_optimizer("adam", model, lr=1e-3, weight_decay=1e-2, decoupled=True)   # = AdamW

Weight decay applies to weights only, i.e. parameters with ``ndim >= 2`` (Linear and Conv kernels).
Biases and normalization parameters (``ndim <= 1``) go into a second param group with no decay:
pulling a BatchNorm gain or a bias toward zero does not limit the capacity of the net, it only fights
the scale and shift the layer has to learn.

Two kinds of decay, both with rate λ = ``weight_decay``:

- coupled (``decoupled=False``), the L2 penalty ½λ‖w‖² in the loss: ``g ← ∇L + λw``, then the
  optimizer's own update (torch's ``weight_decay`` argument). Adaptive methods divide the λw term by
  their running scale like the rest of the gradient, so Adam moves a weight with no loss gradient by
  about η per step, whatever λ is.
- decoupled (``decoupled=True``): ``w ← w − ηλw`` applied apart from the gradient, then the update of
  ∇L alone (AdamW/SGDW; Loshchilov & Hutter 2019). ``adam`` uses :class:`torch.optim.AdamW`; ``sgd``,
  ``momentum``, ``nesterov``, ``adagrad`` and ``rmsprop`` use :class:`SGDW`, :class:`AdagradW`,
  :class:`RMSpropW`, whose ``step()`` first multiplies the decayed weights by ``1 − ηλ``. For plain SGD
  one step of either kind is the same ``w − η(∇L + λw)``; they part as soon as the update is rescaled.

``adamw`` is always decoupled. ``momentum`` is the γ of ``momentum`` and ``nesterov`` only; the other
optimizers use torch's defaults (RMSprop α = 0.99, Adam β = (0.9, 0.999), ε = 1e-8).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from tricklab.errors import ConfigError
from tricklab.events import Callback
from tricklab.registry import Registry
from tricklab.sections import MAX_RATE, Section, name_in
from tricklab.tricks.family import TRICKS, BuildContext, Prescription, TrickFamily
from tricklab.tricks.regularization import L1Penalty

#: Param-group key of the decoupled decay rate λ in :class:`SGDW`, :class:`AdagradW`, :class:`RMSpropW`.
DECOUPLED_WD = "decoupled_wd"

Params = Iterable[Tensor] | nn.Module
Factory = Callable[..., torch.optim.Optimizer]

OPTIMIZERS: Registry[Factory] = Registry("optimizer")


def trainable_params(params_or_model: Params) -> list[Tensor]:
    """The parameters that require gradients, from a model or an iterable of tensors."""
    params = params_or_model.parameters() if isinstance(params_or_model, nn.Module) else params_or_model
    return [p for p in params if p.requires_grad]


def weight_decay_groups(
    params: Iterable[Tensor], weight_decay: float, key: str = "weight_decay"
) -> list[dict]:
    """Two param groups: weights (``ndim >= 2``) with ``key = weight_decay``, the rest with ``key = 0``.

    Biases and normalization gains/shifts are 1-D, so they land in the no-decay group. Empty groups are
    dropped.

    Example: ``weight_decay_groups(nn.Linear(3, 2).parameters(), 1e-4)`` →
    ``[{"params": [weight], "weight_decay": 1e-4}, {"params": [bias], "weight_decay": 0.0}]``.
    """
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], key: weight_decay},
        {"params": [p for p in params if p.ndim < 2], key: 0.0},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def decay_weights_(params: Iterable[Tensor], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay in place: ``w ← w − η·λ·w = (1 − ηλ) w`` (Loshchilov & Hutter 2019).

    Example: ``decay_weights_([w], lr=0.1, weight_decay=0.5)`` multiplies ``w`` by 0.95.
    """
    if weight_decay == 0:
        return
    for p in params:
        p.mul_(1.0 - lr * weight_decay)


class _DecoupledDecay:
    """Mixin for a torch optimizer: ``step()`` first applies :func:`decay_weights_` with each group's
    ``decoupled_wd``, to the parameters that have a gradient (as AdamW does), then the optimizer's update."""

    param_groups: list[dict[str, Any]]
    defaults: dict[str, Any]

    def __init__(self, params: Any, *, decoupled_wd: float = 0.0, **kwargs: Any):
        super().__init__(params, **kwargs)  # the wrapped optimizer keeps its coupled weight_decay = 0
        self.defaults[DECOUPLED_WD] = decoupled_wd
        for group in self.param_groups:
            group.setdefault(DECOUPLED_WD, decoupled_wd)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:  # gradients at the current weights, before the decay
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            decay_weights_(with_grad, group["lr"], group[DECOUPLED_WD])
        super().step()  # type: ignore[misc]
        return loss


class SGDW(_DecoupledDecay, torch.optim.SGD):
    """SGD (with optional momentum/Nesterov) and decoupled weight decay: ``w ← (1 − ηλ) w``, then SGD on ∇L.

    Example: ``SGDW(model.parameters(), lr=0.1, momentum=0.9, decoupled_wd=5e-4)``.
    Loshchilov & Hutter 2019 (SGDW).
    """


class AdagradW(_DecoupledDecay, torch.optim.Adagrad):
    """Adagrad with decoupled weight decay: ``w ← (1 − ηλ) w``, then Adagrad on ∇L.

    Loshchilov & Hutter 2019.
    """


class RMSpropW(_DecoupledDecay, torch.optim.RMSprop):
    """RMSprop with decoupled weight decay: ``w ← (1 − ηλ) w``, then RMSprop on ∇L.

    Loshchilov & Hutter 2019.
    """


class NormalizedGD(torch.optim.Optimizer):
    """Normalized gradient descent: a step of length exactly η along the negative gradient.

    ``w ← w − η ∇L / ‖∇L‖``, where ‖∇L‖ is the GLOBAL L2 norm over all parameters of all groups (the
    whole gradient is one vector). A zero gradient takes no step. With coupled weight decay the
    direction is ``∇L + λw`` (normalized after adding); with ``decoupled=True`` the weights are first
    multiplied by ``1 − ηλ`` and the step normalizes ∇L alone.

    Not the same thing as Adagrad/RMSProp/Adam: those divide each parameter's gradient by its own
    running statistics (a per-coordinate scale, accumulated over steps), so their steps are neither
    along −∇L nor of fixed length; here the direction is exactly −∇L and only the length is fixed.

    Example: ``NormalizedGD(model.parameters(), lr=0.01)``. Hazan, Levy & Shalev-Shwartz 2015.
    """

    def __init__(self, params: Any, lr: float, weight_decay: float = 0.0, decoupled: bool = False):
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"NormalizedGD needs a finite lr > 0, got {lr!r}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "decoupled": decoupled})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moves: list[tuple[Tensor, Tensor, float]] = []  # (parameter, direction, lr)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            with_grad = [p for p in group["params"] if p.grad is not None]
            for p in with_grad:
                direction = p.grad if group["decoupled"] or wd == 0 else p.grad.add(p, alpha=wd)
                moves.append((p, direction, lr))
            if group["decoupled"]:
                decay_weights_(with_grad, lr, wd)
        if not moves:
            return loss
        norms = torch.stack([torch.linalg.vector_norm(d) for _, d, _ in moves])
        norm = float(torch.linalg.vector_norm(norms))
        if norm == 0:
            return loss
        for p, direction, lr in moves:
            p.add_(direction, alpha=-lr / norm)
        return loss


def _build(coupled: type, decoupled_cls: type, params, lr, weight_decay, decoupled, **kwargs):
    """``coupled`` with torch's L2 ``weight_decay`` on weights, or ``decoupled_cls`` with decoupled decay."""
    if decoupled:
        return decoupled_cls(weight_decay_groups(params, weight_decay, DECOUPLED_WD), lr=lr, **kwargs)
    return coupled(weight_decay_groups(params, weight_decay), lr=lr, **kwargs)


@OPTIMIZERS.register("sgd", help="w ← w − η∇L; Robbins & Monro 1951")
def _sgd(params, *, lr, momentum, weight_decay, decoupled):
    return _build(torch.optim.SGD, SGDW, params, lr, weight_decay, decoupled)


@OPTIMIZERS.register("momentum", help="v ← γv + ∇L, w ← w − ηv (heavy ball); Polyak 1964")
def _momentum(params, *, lr, momentum, weight_decay, decoupled):
    return _build(torch.optim.SGD, SGDW, params, lr, weight_decay, decoupled, momentum=momentum)


@OPTIMIZERS.register("nesterov", help="v ← γv + ∇L, w ← w − η(∇L + γv); Nesterov 1983, Sutskever et al. 2013")
def _nesterov(params, *, lr, momentum, weight_decay, decoupled):
    if momentum == 0:
        raise ConfigError("optim.momentum", momentum, "nesterov needs a momentum in (0, 1)")
    kwargs = {"momentum": momentum, "nesterov": True}
    return _build(torch.optim.SGD, SGDW, params, lr, weight_decay, decoupled, **kwargs)


@OPTIMIZERS.register("adagrad", help="G ← G + g², w ← w − η g/(√G + ε); Duchi et al. 2011")
def _adagrad(params, *, lr, momentum, weight_decay, decoupled):
    return _build(torch.optim.Adagrad, AdagradW, params, lr, weight_decay, decoupled)


@OPTIMIZERS.register("rmsprop", help="s ← αs + (1−α)g², w ← w − η g/(√s + ε); Tieleman & Hinton 2012")
def _rmsprop(params, *, lr, momentum, weight_decay, decoupled):
    return _build(torch.optim.RMSprop, RMSpropW, params, lr, weight_decay, decoupled)


@OPTIMIZERS.register("adam", help="w ← w − η m̂/(√v̂ + ε), m, v running moments of g; Kingma & Ba 2015")
def _adam(params, *, lr, momentum, weight_decay, decoupled):
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam  # AdamW reads the groups' weight_decay
    return cls(weight_decay_groups(params, weight_decay), lr=lr)


@OPTIMIZERS.register("adamw", help="w ← (1 − ηλ)w, then Adam on ∇L; Loshchilov & Hutter 2019")
def _adamw(params, *, lr, momentum, weight_decay, decoupled):
    if weight_decay > 0 and not decoupled:
        allowed = "adamw always decouples weight decay: set it true, or use adam for L2"
        raise ConfigError("optim.decoupled", False, allowed)
    return torch.optim.AdamW(weight_decay_groups(params, weight_decay), lr=lr)


@OPTIMIZERS.register("ngd", help="w ← w − η ∇L/‖∇L‖ (global norm, step length η); Hazan et al. 2015")
def _ngd(params, *, lr, momentum, weight_decay, decoupled):
    return NormalizedGD(weight_decay_groups(params, weight_decay), lr=lr, decoupled=decoupled)


def build_optimizer(
    name: str,
    params_or_model: Params,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    fused: bool = False,
    device: str | torch.device | None = None,
) -> torch.optim.Optimizer:
    """The optimizer registered as ``name``, over the trainable parameters, with decay on weights only.

    Weights (``ndim >= 2``) get ``weight_decay``; biases and norm parameters go into a no-decay group.
    ``decoupled=False`` adds λw to the gradient (L2); ``decoupled=True`` shrinks ``w ← (1 − ηλ) w`` apart
    from the gradient step (Loshchilov & Hutter 2019). ``momentum`` (γ) is used by ``momentum`` and
    ``nesterov`` only. ``fused``: torch's fused kernel where it has one on ``device`` (None: the parameters'), one
    kernel per step instead of a few per tensor: SGD, Adam and AdamW on CPU and CUDA, Adagrad on CPU
    (:data:`FUSABLE`); tricklab's assembly asks for it on both (``benchmarks/overhead.py`` and ``roofline.py``
    measure the step with it; the figures are in ``benchmarks/README.md``).

    Example: ``build_optimizer("nesterov", model, lr=0.1, momentum=0.9, weight_decay=5e-4)``.
    """
    factory = OPTIMIZERS.get(name)
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise ConfigError("optim.lr", lr, "a finite number > 0")
    if not (_is_number(momentum) and 0 <= momentum < 1):
        raise ConfigError("optim.momentum", momentum, "a number in [0, 1)")
    if not (_is_number(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError("optim.weight_decay", weight_decay, "a finite number >= 0")
    params = trainable_params(params_or_model)
    opt = factory(params, lr=lr, momentum=momentum, weight_decay=weight_decay, decoupled=decoupled)
    if fused:
        if device is None:
            device = params[0].device if params else "cpu"
        _use_fused(opt, torch.device(device).type)
    return opt


#: torch optimizers with a fused kernel that honours a ``found_inf`` flag, per device type (used as is, not
#: subclassed: the decoupled variants keep their own step).
FUSABLE: dict[str, tuple[type, ...]] = {
    "cpu": (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad),
    "cuda": (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW),
}


def _use_fused(opt: torch.optim.Optimizer, device_type: str) -> None:
    """Switch ``opt`` to torch's fused kernel when it has one on ``device_type`` (:data:`FUSABLE`): one kernel
    per step, and a ``found_inf`` flag that skips the update on the device (the NaN/Inf guard's deferred mode,
    :class:`tricklab.engine.guards.DeferredGuard`)."""
    if type(opt) not in FUSABLE.get(device_type, ()):
        return
    for group in opt.param_groups:
        group["fused"], group["foreach"] = True, False
    opt.defaults["fused"], opt.defaults["foreach"] = True, False
    opt._step_supports_amp_scaling = True


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --- the family: config section, builder, checks, PyTorch translation -----------------------------------------


class OptimConfig(Section):
    """The optimizer and its regularization."""

    name: str = "adam"
    lr: float = Field(1e-3, gt=0, le=MAX_RATE, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)  # γ of momentum / nesterov
    weight_decay: float = Field(0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)
    decoupled: bool = False  # True: AdamW/SGDW-style decay; False: L2 added to the gradient
    l1: float = Field(0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)  # L1 penalty on weights, not biases or norms

    _name = field_validator("name")(lambda v: name_in(OPTIMIZERS, v))


def optim_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    """The L1 penalty ``optim.l1`` adds to the gradients (the optimizer itself is built by the assembly)."""
    return [L1Penalty(cfg.optim.l1)] if cfg.optim.l1 > 0 else []


def optim_check(cfg: Any) -> None:
    """``adamw`` is decoupled by definition: with weight decay it needs ``optim.decoupled``."""
    if cfg.optim.name == "adamw" and cfg.optim.weight_decay > 0 and not cfg.optim.decoupled:
        raise ConfigError(
            "optim.decoupled", False, "adamw is decoupled weight decay by definition; set true or use adam"
        )


def lr_in_pytorch(value: float, p: Prescription) -> str:
    """``optim.lr`` in plain PyTorch: param_groups[i]['lr']."""
    old = p.settings.get("optim.lr")
    if not isinstance(old, int | float):
        change = f"set the learning rate to {value:g}"
    else:
        change = f"{'lower' if value < old else 'raise'} the learning rate from {old:g} to {value:g}"
    return (
        f'{change}: `for g in optimizer.param_groups: g["lr"] = {value:g}` (or `lr={value:g}` where you build '
        "the optimizer; a scheduler then scales it)"
    )


def weight_decay_in_pytorch(value: float, p: Prescription) -> str:
    """``optim.weight_decay`` in plain PyTorch: L2 penalty λ·‖W‖² (Krogh & Hertz 1992)."""
    return (
        f"add weight decay {value:g}: `weight_decay={value:g}` where you build the optimizer (for Adam, "
        f"`torch.optim.AdamW(model.parameters(), lr=..., weight_decay={value:g})` decouples it; Loshchilov & "
        "Hutter 2019)"
    )


TRICKS.register(
    "optim",
    TrickFamily(
        OptimConfig,
        callbacks=optim_callbacks,
        every_step=True,
        check=optim_check,
        translations={"optim.lr": lr_in_pytorch, "optim.weight_decay": weight_decay_in_pytorch},
    ),
    help="the optimizer, its learning rate and weight decay, and the L1 penalty",
)
