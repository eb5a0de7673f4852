"""Signal propagation at initialization: how the forward and backward signals scale with depth, per init scheme.

For a model and a batch, one forward and one backward pass (training mode, nothing updated) give per
Linear/Conv layer l (in forward order, depth 1..L):

    forward_std[l]  = std(z_l),        z_l = W_l h_{l−1} + b_l   (the layer's output, before norm and activation)
    backward_std[l] = std(∂L/∂z_l)                               (the gradient reaching that output)

A layer multiplies the variance of its input by n_in · Var(W) (LeCun et al. 1998; Glorot & Bengio 2010), so
over L layers the signal scales like (n_in · Var(W) · gain)^L: lines that stay flat on a log scale keep values
in range, lines that climb or fall exponentially are exploding or vanishing signals. He et al. 2015 (ReLU:
Var(W) = 2/n_in) and Glorot & Bengio 2010 (tanh/sigmoid: 2/(n_in + n_out)) are the flat ones for their
activations; ``standard_normal`` climbs by about sqrt(n_in / 2) per ReLU layer.

Example::

    build = lambda: build_model("mlp", (1, 28, 28), 10, depth=20, width=256, activation="relu")
    profiles = compare_inits(build, x[:256], y[:256])      # one SignalProfile per name in INITIALIZERS
    plot_signal(profiles, "signal.png")                   # tricklab.report.doctor
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tricklab.diagnostics.probes import Probe
from tricklab.diagnostics.records import ACT_STD, GRAD_STD, WEIGHT
from tricklab.errors import TrickLabError
from tricklab.tricks.init import INITIALIZERS, apply_init


@dataclass
class SignalProfile:
    """Forward and backward std per Linear/Conv layer (forward order) of one model at initialization."""

    scheme: str
    layers: list[str] = field(default_factory=list)
    forward_std: list[float] = field(default_factory=list)
    backward_std: list[float] = field(default_factory=list)
    error: str | None = None  # why this scheme could not be measured (e.g. LSUV on a dead layer)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def signal_profile(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    scheme: str = "",
) -> SignalProfile:
    """Measure ``model`` as it is: std of each Linear/Conv output and of the loss gradient w.r.t. it.

    Runs in training mode (BatchNorm uses batch statistics, as in the first step of training); the model's
    mode, buffers and ``.grad`` are left as they were.

    Example: ``signal_profile(model, x, y).forward_std[-1]`` is the std of the logits.
    """
    was_training = model.training
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        model.train()
        with Probe(model, every=1) as probe, torch.enable_grad():
            loss = loss_fn(model(x), y)
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
    found = probe.findings()
    layers = [info.name for info in found.layers_of(WEIGHT)]
    nan = float("nan")
    return SignalProfile(
        scheme,
        layers,
        [found.records.get(ACT_STD, name, 0, nan) for name in layers],
        [found.records.get(GRAD_STD, name, 0, nan) for name in layers],
    )


def compare_inits(
    build: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    schemes: Sequence[str] | None = None,
    *,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> list[SignalProfile]:
    """One :class:`SignalProfile` per init scheme (default: every name in ``INITIALIZERS``).

    ``build()`` must return a fresh model with PyTorch's own init (so ``default`` means PyTorch's); it is
    seeded with ``seed``, initialized on the CPU with :func:`apply_init` (LSUV calibrates on ``x``) and
    moved to ``x``'s device. A scheme that refuses the model is returned with its ``error`` and no numbers.
    """
    profiles = []
    for scheme in schemes if schemes is not None else INITIALIZERS.names():
        torch.manual_seed(seed)
        model = build()
        try:  # initialized on the CPU, where the seeded generator lives
            apply_init(model, scheme, data=x.cpu(), generator=torch.Generator().manual_seed(seed))
        except (TrickLabError, ValueError, RuntimeError) as e:
            profiles.append(SignalProfile(scheme, error=str(e)))
            continue
        profiles.append(signal_profile(model.to(x.device), x, y, loss_fn=loss_fn, scheme=scheme))
    return profiles
