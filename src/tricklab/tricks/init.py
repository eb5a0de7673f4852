"""Weight initialization: choose the scale of the first weights so signals neither explode nor vanish.

A layer ``y = W x`` with ``n_in`` inputs multiplies the variance of its input by ``n_in · Var(W)``
(LeCun et al. 1998; Glorot & Bengio 2010). Through ``L`` layers that factor compounds to
``(n_in · Var(W))^L``: N(0, 1) weights make activations grow by ``sqrt(n_in)`` per layer, Var(W) = 1/n_in
keeps them at unit scale, and Var(W) = 2/n_in does the same after a ReLU, which halves the variance
(He et al. 2015).

The lesson's formula text for Xavier init is loose; this module uses the standard definitions
(Glorot & Bengio 2010, eq. 16, as in PyTorch and Keras): ``glorot_normal`` draws from
N(0, 2/(n_in + n_out)) and ``glorot_uniform`` from U(-b, b) with b = sqrt(6/(n_in + n_out)), where
n_in and n_out are the fans that PyTorch computes (see :func:`fan_in_and_out`).

Every scheme is a name in :data:`INITIALIZERS`::

    apply_init(model, "he_normal")                  # every Linear/Conv1d/Conv2d: W ~ N(0, 2/n_in), b = 0
    apply_init(model, "lsuv", data=x_batch)         # orthogonal, then unit output variance per layer
    init_weight_(torch.empty(256, 128), "glorot_uniform")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import field_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tricklab.errors import ConfigError
from tricklab.registry import Registry
from tricklab.sections import Section, name_in
from tricklab.tricks.family import TRICKS, Prescription, TrickFamily, cite, layers_phrase

#: The layers whose weights a scheme sets; their biases are set to 0. Norm layers are left alone.
INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)

Fill = Callable[[Tensor, torch.Generator | None], Tensor]

# Std of a standard normal truncated to [-2, 2]: sqrt(1 - 4 φ(2) / (2 Φ(2) - 1)) ≈ 0.8796.
_TRUNC2_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))


def fan_in_and_out(weight: Tensor) -> tuple[int, int]:
    """(n_in, n_out) of a Linear or Conv weight, as PyTorch computes them.

    n_in = in_features (Linear) or in_channels/groups × kernel elements (Conv);
    n_out = out_features or out_channels × kernel elements.

    Example: ``fan_in_and_out(nn.Conv2d(3, 16, 5).weight) == (75, 400)``.
    """
    if weight.dim() < 2:
        raise ValueError(f"fans need a weight with at least 2 dimensions, got shape {tuple(weight.shape)}")
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _normal(std_of: Callable[[int, int], float]) -> Fill:
    def fill(weight: Tensor, generator: torch.Generator | None) -> Tensor:
        return weight.normal_(0.0, std_of(*fan_in_and_out(weight)), generator=generator)

    return fill


def _uniform(bound_of: Callable[[int, int], float]) -> Fill:
    def fill(weight: Tensor, generator: torch.Generator | None) -> Tensor:
        bound = bound_of(*fan_in_and_out(weight))
        return weight.uniform_(-bound, bound, generator=generator)

    return fill


def _lecun_normal(weight: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) truncated to ±2, rescaled to std exactly 1/sqrt(n_in) (LeCun et al. 1998; Keras).

    In distribution it matches ``gaussian`` up to truncation: same std, no values beyond ±2.27σ.
    """
    n_in, _ = fan_in_and_out(weight)
    nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0, generator=generator)
    return weight.mul_(1 / (math.sqrt(n_in) * _TRUNC2_STD))


def _orthogonal(weight: Tensor, generator: torch.Generator | None) -> Tensor:
    return nn.init.orthogonal_(weight, gain=1.0, generator=generator)


@dataclass(frozen=True)
class TensorInit:
    """A scheme that sets each weight tensor on its own by the rule ``fill(weight, generator)``."""

    fill: Fill

    def __call__(
        self, model: nn.Module, data: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        layers = _init_layers(model)
        with torch.no_grad():
            for name, layer in layers:
                _reset_layer(name, layer, self.fill, generator)
        return {"layers": len(layers)}


def _keep_default(
    model: nn.Module, data: Tensor | None = None, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Leave PyTorch's own init untouched: for Linear/Conv, W and b ~ U(±1/sqrt(n_in)) (kaiming, a=√5)."""
    return {"layers": 0}


def lsuv_(
    model: nn.Module,
    data: Tensor | None,
    generator: torch.Generator | None = None,
    *,
    tol: float = 0.1,
    max_iter: int = 10,
) -> dict[str, Any]:
    """Layer-sequential unit-variance init: orthogonal weights, each layer rescaled to unit output variance.

    In forward order, for each Linear/Conv layer: forward ``data``, read the layer's output (pre-activation)
    variance v, and set W ← W / sqrt(v), until |v − 1| < ``tol`` or ``max_iter`` rescalings. Runs under
    ``torch.no_grad()`` with the model in train mode; the model's mode and buffers (BatchNorm running
    statistics) are restored afterwards. Returns ``{"layers": n, "variance": {layer: v}, "iterations":
    {layer: k}}`` for the layers the forward pass reaches.

    Example: ``lsuv_(mlp, torch.randn(256, 784))``.

    Mishkin & Matas 2015, "All you need is a good init".
    """
    if data is None:
        raise ConfigError("init.scheme", "lsuv", "needs a data batch (apply_init(model, 'lsuv', data=x))")
    layers = _init_layers(model)
    was_training = model.training
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    variance: dict[str, float] = {}
    iterations: dict[str, int] = {}
    try:
        model.train()
        with torch.no_grad():
            for name, layer in layers:
                _reset_layer(name, layer, _orthogonal, generator)
            for name, layer in _in_forward_order(model, layers, data):
                for k in range(max_iter + 1):  # k = rescalings done so far
                    var = _output_variance(model, layer, data)
                    if not (math.isfinite(var) and var > 0):
                        raise ConfigError(
                            "init.scheme",
                            "lsuv",
                            f"layer {name!r} has output variance {var} on the data batch",
                        )
                    if abs(var - 1) < tol or k == max_iter:
                        break
                    _set_param(name, layer, "weight", layer.weight / math.sqrt(var))
                variance[name], iterations[name] = var, k
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
    return {"layers": len(layers), "variance": variance, "iterations": iterations}


INITIALIZERS: Registry[Callable[..., dict[str, Any]]] = Registry("init scheme")
INITIALIZERS.register(
    "default", _keep_default, help="PyTorch's own init, untouched: W, b ~ U(±1/sqrt(n_in)) for Linear/Conv"
)
INITIALIZERS.register(
    "uniform",
    TensorInit(_uniform(lambda n_in, n_out: 1 / math.sqrt(n_in))),
    help="U(-1/sqrt(n_in), 1/sqrt(n_in)); the 'standard' init, Glorot & Bengio 2010 eq. 1",
)
INITIALIZERS.register(
    "gaussian",
    TensorInit(_normal(lambda n_in, n_out: 1 / math.sqrt(n_in))),
    help="N(0, 1/n_in): variance 1/n keeps a linear layer's output variance; LeCun et al. 1998",
)
INITIALIZERS.register(
    "lecun_normal",
    TensorInit(_lecun_normal),
    help="normal truncated at ±2σ, std 1/sqrt(n_in) (= gaussian up to truncation); LeCun et al. 1998",
)
INITIALIZERS.register(
    "glorot_normal",
    TensorInit(_normal(lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)))),
    help="N(0, 2/(n_in+n_out)); Glorot & Bengio 2010",
)
INITIALIZERS.register(
    "glorot_uniform",
    TensorInit(_uniform(lambda n_in, n_out: math.sqrt(6 / (n_in + n_out)))),
    help="U(±sqrt(6/(n_in+n_out))); Glorot & Bengio 2010 eq. 16",
)
INITIALIZERS.register(
    "he_normal",
    TensorInit(_normal(lambda n_in, n_out: math.sqrt(2 / n_in))),
    help="N(0, 2/n_in), for ReLU nets; He et al. 2015",
)
INITIALIZERS.register(
    "he_uniform",
    TensorInit(_uniform(lambda n_in, n_out: math.sqrt(6 / n_in))),
    help="U(±sqrt(6/n_in)), for ReLU nets; He et al. 2015",
)
INITIALIZERS.register(
    "orthogonal",
    TensorInit(_orthogonal),
    help="W = Q of a QR of a Gaussian matrix (orthonormal rows or columns, gain 1); Saxe et al. 2014",
)
INITIALIZERS.register(
    "standard_normal",
    TensorInit(_normal(lambda n_in, n_out: 1.0)),
    help="N(0, 1): the don't; activations grow by sqrt(n_in) per layer",
)
INITIALIZERS.register(
    "lsuv",
    lsuv_,
    help="orthogonal, then W /= sqrt(Var(layer output)) on a data batch; Mishkin & Matas 2015",
)


def init_weight_(weight: Tensor, scheme: str, generator: torch.Generator | None = None) -> Tensor:
    """Fill one weight tensor in place by a per-tensor scheme and return it.

    The fans come from the tensor's shape (:func:`fan_in_and_out`); e.g. ``he_normal`` draws
    W ~ N(0, 2/n_in). ``default`` and ``lsuv`` act on a whole model: use :func:`apply_init`.

    Example: ``init_weight_(torch.empty(256, 784), "he_normal")`` has std ≈ sqrt(2/784).
    """
    init = INITIALIZERS.get(scheme)
    if not isinstance(init, TensorInit):
        per_tensor = [name for name in INITIALIZERS if isinstance(INITIALIZERS.get(name), TensorInit)]
        raise ConfigError(
            "init.scheme",
            scheme,
            f"acts on a whole model, use apply_init; per-tensor: {', '.join(per_tensor)}",
        )
    with torch.no_grad():
        return init.fill(weight, generator)


def apply_init(
    model: nn.Module, scheme: str, *, data: Tensor | None = None, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Initialize every Linear/Conv1d/Conv2d of ``model`` by ``scheme``: weights by its rule, biases to 0.

    Norm layers are left alone and ``default`` changes nothing. Layers under a weight-norm
    parametrization get the new effective weight through it (g = ||w||, v = w). ``lsuv`` needs ``data``,
    a batch of inputs. Returns what was done, e.g. ``{"scheme": "he_normal", "layers": 3}``; lsuv adds
    the per-layer ``variance`` after and ``iterations``.

    Example: ``apply_init(model, "glorot_uniform", generator=torch.Generator().manual_seed(0))``.
    """
    init = INITIALIZERS.get(scheme)
    try:
        done = init(model, data, generator)
    except _NotAssignableError as e:
        raise ConfigError("init.scheme", scheme, str(e)) from None
    return {"scheme": scheme, **done}


def _init_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, INIT_LAYERS)]


def _reset_layer(name: str, layer: nn.Module, fill: Fill, generator: torch.Generator | None) -> None:
    """Weight by ``fill``, bias to 0 (call under ``torch.no_grad()``)."""
    _set_param(name, layer, "weight", fill(torch.empty_like(layer.weight), generator))
    if layer.bias is not None:
        _set_param(name, layer, "bias", torch.zeros_like(layer.bias))


def _set_param(name: str, layer: nn.Module, attr: str, value: Tensor) -> None:
    """Make ``layer.<attr>`` equal ``value``: in place, or through its parametrization's right_inverse."""
    if not parametrize.is_parametrized(layer, attr):
        getattr(layer, attr).copy_(value)
        return
    setattr(layer, attr, value)  # calls right_inverse, e.g. weight norm: g = ||value||, v = value
    if not torch.allclose(getattr(layer, attr), value, rtol=1e-4, atol=1e-6):
        raise _NotAssignableError(
            f"layer {name!r}: its {attr} parametrization does not keep an assigned value; use 'default'"
        )


class _NotAssignableError(ValueError):
    """A parametrization (e.g. spectral norm) whose output is not the value assigned through it."""


def _in_forward_order(
    model: nn.Module, layers: list[tuple[str, nn.Module]], data: Tensor
) -> list[tuple[str, nn.Module]]:
    """The layers in the order a forward pass on ``data`` first calls them (layers it skips are left out)."""
    called: list[nn.Module] = []
    hooks = [
        layer.register_forward_hook(lambda m, inputs, output: called.append(m) if m not in called else None)
        for _, layer in layers
    ]
    try:
        model(data)
    finally:
        for hook in hooks:
            hook.remove()
    name_of = {id(layer): name for name, layer in layers}
    return [(name_of[id(m)], m) for m in called]


def _output_variance(model: nn.Module, layer: nn.Module, data: Tensor) -> float:
    outputs: list[Tensor] = []
    hook = layer.register_forward_hook(lambda m, inputs, output: outputs.append(output))
    try:
        model(data)
    finally:
        hook.remove()
    return float(outputs[0].float().var())

# --- the family: config section, applied by the assembly to the built model -----------------------------------------


class InitConfig(Section):
    """How the weights start (applied to every Linear/Conv layer after the model is built)."""

    scheme: str = "he_normal"  # when unset: he_normal for tricklab's models, "default" (the model's own) for plugins

    _scheme = field_validator("scheme")(lambda v: name_in(INITIALIZERS, v))


#: init.scheme → the PyTorch call that sets the weight of one Linear/Conv layer ``m`` as tricklab's scheme of that
#: name does (``m.weight[0].numel()`` is its fan-in n_in); the bias then goes to 0, except for ``default``.
INIT_CALLS: dict[str, str] = {
    "default": "m.reset_parameters()",
    "uniform": "nn.init.uniform_(m.weight, -m.weight[0].numel() ** -0.5, m.weight[0].numel() ** -0.5)",
    "gaussian": "nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)",
    "lecun_normal": "nn.init.trunc_normal_(m.weight, a=-2.0, b=2.0); "
    "m.weight.data /= 0.8796 * m.weight[0].numel() ** 0.5",
    "glorot_normal": "nn.init.xavier_normal_(m.weight)",
    "glorot_uniform": "nn.init.xavier_uniform_(m.weight)",
    "he_normal": 'nn.init.kaiming_normal_(m.weight, nonlinearity="relu")',
    "he_uniform": 'nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")',
    "orthogonal": "nn.init.orthogonal_(m.weight)",
    "standard_normal": "nn.init.normal_(m.weight, std=1.0)",
    "lsuv": "nn.init.orthogonal_(m.weight)",  # then rescaled on data: LSUV_STEP
}

#: What LSUV does after its orthogonal init (Mishkin & Matas 2015).
LSUV_STEP = (
    "; then, from the input on, divide each layer's weight by the std of its output on a batch (or call "
    '`tricklab.tricks.init.apply_init(model, "lsuv", data=x)`)'
)


def init_scheme_in_pytorch(value: str, p: Prescription) -> str:
    """``init.scheme`` in plain PyTorch: nn.init calls on every Linear/Conv layer."""
    INITIALIZERS.get(value)  # an unknown scheme fails here with the valid names
    bias = "" if value == "default" else " and `nn.init.zeros_(m.bias)`"
    return (
        f"initialize {layers_phrase(p.weight_layers())} as {value}: for each such layer `m`, "
        f"`{INIT_CALLS[value]}`{bias}{LSUV_STEP if value == 'lsuv' else ''}{cite(INITIALIZERS.help(value))}"
    )


TRICKS.register(
    "init",
    TrickFamily(InitConfig, translations={"init.scheme": init_scheme_in_pytorch}),
    help="weight initialization, applied to every Linear/Conv layer once the model is built (apply_init)",
)
