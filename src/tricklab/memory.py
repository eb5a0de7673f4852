"""Will it fit? The memory one training step needs, estimated before the model is built.

A model is first built on PyTorch's ``meta`` device, which records shapes but allocates nothing, so even a
model of 10¹¹ parameters is counted in milliseconds; one forward pass there counts the activations. Then::

    bytes ≈ 4 × (P × (2 + k + c) + A × B)

with P parameters (the weights and their gradients: 2P), k optimizer state tensors per parameter (Adam 2,
momentum 1, SGD 0: :data:`OPTIMIZER_SLOTS`), c further copies of the weights (EMA, SWA, the best weights
early stopping restores, the members of an ensemble trained before the last), A activation values per example
kept for the backward pass (the outputs of every leaf module) and B the batch size; 4 bytes per float32
value, plus the dataset's tensors as they are held. What does not fit in the memory available now
(``MemAvailable``, and the GPU's free memory) is refused with the figures, before anything is allocated
(``model.width=1e9`` would otherwise ask for 256 GB and die halfway). The sums are Python integers: no size
overflows, and a model too large for torch itself to count is refused, never let through::

    >>> est = Estimate(parameters=2_100_000_000, activations_per_example=3_000, batch_size=128, optimizer_slots=2)
    >>> human_bytes(est.total_bytes)
    '31.3 GiB'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tricklab.errors import ConfigError
from tricklab.host import available_memory, human_bytes, resolve_device
from tricklab.host import two_digits as _g

if TYPE_CHECKING:
    from tricklab.config import Config

#: Bytes of one value: training runs in float32.
BYTES_PER_VALUE = 4
#: Models with weights up to this size count their activations with a real forward pass on the CPU.
REAL_PASS_BYTES = 256 * 2**20
#: Optimizer state tensors kept per parameter (an unknown optimizer is assumed to keep 2, as Adam does).
OPTIMIZER_SLOTS = {"sgd": 0, "ngd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2, "adamw": 2}


@dataclass(frozen=True)
class Estimate:
    """What training a model holds in memory at once, by kind; sizes in float32 values and bytes."""

    parameters: int
    activations_per_example: int
    batch_size: int
    optimizer_slots: int
    weight_copies: int = 0  # EMA, SWA, best weights, the ensemble's earlier members
    data_bytes: int = 0  # the dataset's tensors as they are held

    @property
    def weight_bytes(self) -> int:
        """Weights, gradients, optimizer state and weight copies."""
        return BYTES_PER_VALUE * self.parameters * (2 + self.optimizer_slots + self.weight_copies)

    @property
    def activation_bytes(self) -> int:
        """Activations of one batch kept for the backward pass."""
        return BYTES_PER_VALUE * self.activations_per_example * self.batch_size

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.data_bytes


def measure_on_meta(build: Callable[[], torch.nn.Module], input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """:func:`count_on_meta`, or None if the model cannot be built there."""
    try:
        return count_on_meta(build, input_shape)
    except Exception:  # noqa: BLE001 - the caller decides what a model that cannot be counted means
        return None


def count_on_meta(build: Callable[[], torch.nn.Module], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(parameters, activation values per example)`` of the model ``build()`` returns, built on the ``meta``
    device and run where :func:`build_to_count` leaves it. Raises what building it there raised (a TypeError if
    it is not an ``nn.Module``); activations 0 if it cannot be run (a plugin that needs real values)."""
    model, device = build_to_count(build)
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, count_activations(model, input_shape, device)


def build_to_count(build: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, str]:
    """``(model, device)``: what ``build()`` returns, built on the ``meta`` device (nothing allocated, so even a
    model of 10¹¹ parameters is built in milliseconds), then, when its weights take at most
    :data:`REAL_PASS_BYTES`, given zeroed CPU weights (a forward pass on meta costs seconds of imports the first
    time). For counting only: shapes are right, values are not. Raises what building it there raised (a
    TypeError if it is not an ``nn.Module``)."""
    with torch.device("meta"):
        model = build()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"it returned a {type(model).__name__}, not a torch.nn.Module")
    if sum(p.numel() for p in model.parameters()) * BYTES_PER_VALUE > REAL_PASS_BYTES:
        return model, "meta"
    # A small model runs its forward pass on zeroed CPU weights: a forward pass on the meta device needs
    # torch's Python meta kernels, whose first use imports torch._dynamo.
    try:
        _zeros_on_cpu(model)
    except Exception:  # noqa: BLE001 - a module that cannot leave the meta device: count there
        return model, "meta"
    return model, "cpu"


def _zeros_on_cpu(model: torch.nn.Module) -> None:
    """Replace every parameter and buffer of ``model`` (on the meta device) by zeros of its shape and dtype on the
    CPU, in place; a tensor shared by several modules (tied weights) stays one tensor, counted once. Zeros, not
    ``Module.to_empty``: ``empty_like`` of a meta tensor goes through torch's Python reference kernels, whose first
    use imports ``torch.fx``'s symbolic shapes and sympy; ``to_empty`` gives each module its own copy of a tied
    weight; and garbage memory holds denormals and NaNs, which some CPUs compute slowly."""
    made: dict[int, torch.Tensor] = {}

    def zeros(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            z = torch.zeros(t.shape, dtype=t.dtype)
            is_parameter = isinstance(t, torch.nn.Parameter)
            made[id(t)] = torch.nn.Parameter(z, requires_grad=t.requires_grad) if is_parameter else z
        return made[id(t)]

    for module in model.modules():
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(module, name, zeros(t))


def count_activations(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device | str) -> int:
    """Values per example that the leaf modules of ``model`` output in one forward pass (in eval mode, without
    gradients) of zeros on ``device``; 0 if the model cannot run on zeros. The modules' train/eval modes are
    left as they were."""
    values = 0

    def count(module, inputs, output) -> None:
        nonlocal values
        outs = output if isinstance(output, tuple | list) else (output,)
        values += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))

    modes = {m: m.training for m in model.modules()}
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.eval()  # batch norm in training mode refuses a batch of one; the shapes are the same
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), device=device))
        return values // 2
    except Exception:  # noqa: BLE001 - a plugin that needs real values: its weights are still counted
        return 0
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training


def check_fits(
    estimate: Estimate,
    available: int | None,
    key: str,
    value: object,
    optimizer: str,
    held: int = 0,
    machine: str = "this machine",
) -> None:
    """Refuse a training setup whose :class:`Estimate` exceeds ``available`` bytes of ``machine``, naming
    ``key = value`` and the figures; ``held``: bytes of the estimate already in memory (the dataset, once loaded),
    which ``available`` no longer counts. Nothing is checked when ``available`` is None."""
    if available is None or estimate.total_bytes <= available + held:
        return
    acts = estimate.activations_per_example * estimate.batch_size
    needs = f"~{_g(estimate.parameters)} parameters"
    if acts:
        needs += f" and ~{_g(acts)} activation values for a batch of {estimate.batch_size}"
    training = estimate.total_bytes - estimate.data_bytes
    has = f"{human_bytes(available)} available" + (f" besides the dataset's {human_bytes(held)}" if held else "")
    raise ConfigError(
        key,
        value,
        f"the model needs {needs} (~{human_bytes(training)} to train with {optimizer}); {machine} has {has}",
    )


def training_estimate(
    cfg: Config, input_shape: tuple[int, ...], num_classes: int, train_examples: int, data_bytes: int = 0
) -> Estimate | None:
    """The :class:`Estimate` of training ``cfg``'s model on inputs of ``input_shape`` with a dataset of
    ``data_bytes``: counted on the meta device (or zeroed CPU weights, :func:`count_on_meta`), before the model
    is built; None if it cannot be built there."""
    measured = measure_on_meta(_builder(cfg, input_shape, num_classes), tuple(input_shape))
    return None if measured is None else _estimate(cfg, *measured, train_examples, data_bytes)


def _builder(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Callable[[], torch.nn.Module]:
    factory = cfg.model.factory  # resolved when the config was validated
    return lambda: factory(tuple(input_shape), num_classes, **cfg.model.factory_kwargs())


def _estimate(cfg: Config, parameters: int, activations: int, train_examples: int, data_bytes: int) -> Estimate:
    copies = (cfg.averaging.ema is not None) + (cfg.averaging.swa_start is not None)
    copies += cfg.early_stopping.enabled and cfg.early_stopping.restore_best
    copies += cfg.averaging.ensemble - 1  # the members trained before the last one are kept to be evaluated together
    return Estimate(
        parameters=parameters,
        activations_per_example=activations,
        batch_size=max(1, min(cfg.data.batch_size, train_examples)),
        optimizer_slots=OPTIMIZER_SLOTS.get(cfg.optim.name, 2),
        weight_copies=int(copies),
        data_bytes=data_bytes,
    )


def _key(cfg: Config, estimate: Estimate | None) -> tuple[str, object]:
    """The config key that makes a training setup large: the batch size when activations dominate, else the
    model's width, depth or name."""
    if estimate is not None and estimate.activation_bytes > estimate.weight_bytes:
        return "data.batch_size", cfg.data.batch_size
    if cfg.model.width is not None:
        return "model.width", cfg.model.width
    if cfg.model.depth is not None:
        return "model.depth", cfg.model.depth
    return "model.name", cfg.model.name


def _overflowed(error: BaseException) -> bool:
    """Whether building a model failed because a size does not fit in 64 bits: torch's "Storage size calculation
    overflowed" for a tensor of more than 2⁶³ bytes, or Python's OverflowError."""
    return isinstance(error, OverflowError) or "overflow" in str(error).lower()


def check_training_memory(
    cfg: Config, input_shape: tuple[int, ...], num_classes: int, train_examples: int, data_bytes: int = 0
) -> bool:
    """Refuse ``cfg``'s model, before it is built, if training it cannot fit in the memory available now: a
    :class:`ConfigError` naming what makes it large, with the figures.

    The estimate holds the weights, gradients, optimizer state, weight copies, one batch's activations and the
    dataset's tensors (``data_bytes``: train, validation and test as they are held), compared with
    :func:`available_memory` plus ``data_bytes``: the dataset is loaded before the model is built, so the memory
    available no longer counts it. Training on a GPU, the same estimate without the dataset must also fit in the
    GPU's free memory (the dataset moves there only when it fits in half of what is then free,
    :mod:`tricklab.engine.placement`). Integer arithmetic: no size can overflow.

    A model so large that torch cannot count it (a tensor of more than 2⁶³ bytes: ``model.width=2000000000``)
    is refused. Returns False, without checking, for a model that cannot be built on the meta device for
    another reason (a plugin that needs real values): its caller builds it and checks it with
    :func:`check_built_model` before training, so that only its weights are allocated unchecked.
    Called by :func:`tricklab.assembly.build_model`.
    """
    try:
        parameters, activations = count_on_meta(_builder(cfg, input_shape, num_classes), tuple(input_shape))
    except Exception as e:  # noqa: BLE001 - a plugin's own failure: see the docstring
        if not _overflowed(e):
            return False
        key, value = _key(cfg, None)
        raise ConfigError(
            key,
            value,
            f"the model is too large to count: a tensor of it would hold more than 2⁶³ bytes "
            f"({type(e).__name__}: {e}); this machine has {human_bytes(available_memory() or 0)} available",
        ) from None
    _check(cfg, _estimate(cfg, parameters, activations, train_examples, data_bytes))
    return True


def check_built_model(
    cfg: Config, model: torch.nn.Module, input_shape: tuple[int, ...], train_examples: int, data_bytes: int = 0
) -> None:
    """:func:`check_training_memory` for a model that could not be built on the meta device, counted on the
    built ``model`` itself (its parameters, and the activations of a forward pass of two examples of zeros)."""
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    parameters = sum(p.numel() for p in model.parameters())
    activations = count_activations(model, tuple(input_shape), device)
    _check(cfg, _estimate(cfg, parameters, activations, train_examples, data_bytes))


def _check(cfg: Config, estimate: Estimate) -> None:
    key, value = _key(cfg, estimate)
    check_fits(estimate, available_memory(), key, value, cfg.optim.name, held=estimate.data_bytes)
    if resolve_device(cfg.train.device).type == "cuda":
        free = torch.cuda.mem_get_info(torch.cuda.current_device())[0]
        without_data = dataclasses.replace(estimate, data_bytes=0)
        check_fits(without_data, free, key, value, cfg.optim.name, machine="the GPU")
