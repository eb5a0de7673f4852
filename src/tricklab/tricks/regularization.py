"""L1 regularization of the weights: ``loss + l1 · Σ|w|``, which drives small weights to exactly zero.

The penalty covers weights only, i.e. parameters with ``ndim >= 2`` (Linear and Conv kernels), not biases
or normalization gains/shifts, the same split as weight decay in :mod:`tricklab.tricks.optimizers`.
Rather than adding the penalty to the loss (one more graph over every weight each step), the loop's
:class:`L1Penalty` callback adds its subgradient ``l1 · sign(w)`` to the gradients after backward::

    callbacks = [L1Penalty(l1=1e-5), GradClip("norm", 1.0)]   # L1 (order -10) runs before clipping

L2 weight decay is not here: the optimizer applies it (``build_optimizer(..., weight_decay=...)``).
Tibshirani 1996 (lasso); Goodfellow, Bengio & Courville 2016, §7.1.2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from tricklab.errors import ConfigError
from tricklab.events import ORDER_L1, Callback, FitState


def penalized_weights(model_or_params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    """The weights L1 applies to: parameters with ``ndim >= 2`` (no biases, no norm parameters)."""
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    return [p for p in params if p.ndim >= 2]


def l1_penalty(model_or_params: nn.Module | Iterable[Tensor]) -> Tensor:
    """Σ|w| over the weights (``ndim >= 2``), differentiable; 0 when there are none.

    Example: ``loss = criterion(model(x), y) + 1e-5 * l1_penalty(model)``. Tibshirani 1996.
    """
    weights = penalized_weights(model_or_params)
    if not weights:
        return torch.zeros(())
    return torch.stack([w.abs().sum() for w in weights]).sum()


@torch.no_grad()
def add_l1_grad_(model_or_params: nn.Module | Iterable[Tensor], l1: float) -> None:
    """Add the subgradient of ``l1 · Σ|w|`` to the weights' gradients in place: ``g ← g + l1 · sign(w)``.

    Exactly the gradient autograd gives for ``l1 * l1_penalty(model)`` (sign(0) = 0, as for ``abs``).
    Only weights (``ndim >= 2``) that require grad are touched; a weight with no gradient yet gets
    ``l1 · sign(w)``.

    Example: ``loss.backward(); add_l1_grad_(model, 1e-5); optimizer.step()``.
    """
    _check_l1(l1)
    if l1 == 0:
        return
    for w in penalized_weights(model_or_params):
        if not w.requires_grad:
            continue
        if w.grad is None:
            w.grad = l1 * torch.sign(w)
        else:
            w.grad.add_(torch.sign(w), alpha=l1)


class L1Penalty(Callback):
    """Adds ``l1 · sign(w)`` to the weights' gradients after each backward (L1 on weights, not biases).

    Event: ``on_after_backward``. ``order = ORDER_L1`` (-10), so gradient clipping (``ORDER_CLIP``, 0) sees
    the penalized gradient. Example: ``fit(..., callbacks=[L1Penalty(1e-5)])``. Tibshirani 1996.
    """

    order = ORDER_L1

    def __init__(self, l1: float):
        _check_l1(l1)
        self.l1 = float(l1)

    def on_after_backward(self, state: FitState) -> None:
        add_l1_grad_(state.model, self.l1)


def _check_l1(l1: object) -> None:
    ok = isinstance(l1, int | float) and not isinstance(l1, bool) and math.isfinite(l1) and l1 >= 0
    if not ok:
        raise ConfigError("optim.l1", l1, "a finite number >= 0")
