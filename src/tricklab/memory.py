"""Will it fit? The memory one training step needs, estimated before the model is built.

A model is first built on PyTorch's ``meta`` device, which records shapes but allocates nothing, so even a
model of 10¹¹ parameters is counted in milliseconds; one forward pass there counts the activations. Then::

    bytes ≈ 4 × (P × (2 + k + c) + A × B)

with P parameters (the weights and their gradients: 2P), k optimizer state tensors per parameter (Adam 2,
momentum 1, SGD 0: :data:`OPTIMIZER_SLOTS`), c further copies of the weights (EMA, SWA, the best weights
early stopping restores), A activation values per example kept for the backward pass (the outputs of every
leaf module) and B the batch size; 4 bytes per float32 value. What does not fit in the machine's physical
memory is refused with the figures, before anything is allocated (``model.width=1e9`` would otherwise ask
for 256 GB and die halfway)::

    >>> est = Estimate(parameters=2_100_000_000, activations_per_example=3_000, batch_size=128, optimizer_slots=2)
    >>> human_bytes(est.total_bytes)
    '31.3 GiB'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tricklab.errors import ConfigError

if TYPE_CHECKING:
    from tricklab.config import Config

#: Where Linux says how much memory is available (:func:`available_memory`).
MEMINFO = "/proc/meminfo"
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
    weight_copies: int = 0  # EMA, SWA, best weights

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
        return self.weight_bytes + self.activation_bytes


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``'23.4 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # unreachable


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (``os.sysconf``), or None where the OS does not say."""
    return _sysconf_bytes("SC_PHYS_PAGES")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have now without swapping: ``MemAvailable`` of ``/proc/meminfo``
    (free memory plus the caches the kernel can drop), else ``os.sysconf``'s free pages (which leave the caches
    out), else the physical memory; None where the OS says none of them."""
    try:
        with open(MEMINFO, "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * (1024 if fields[2:3] == [b"kB"] else 1)
    except (OSError, ValueError, IndexError):
        pass
    return _sysconf_bytes("SC_AVPHYS_PAGES") or physical_memory()


def _sysconf_bytes(name: str) -> int | None:
    try:
        pages, page_size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def measure_on_meta(build: Callable[[], torch.nn.Module], input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(parameters, activation values per example)`` of the model ``build()`` returns, built on the ``meta``
    device (nothing allocated) and run there, or, when its weights take at most :data:`REAL_PASS_BYTES`, run on
    zeroed CPU weights (a forward pass on meta costs seconds of imports the first time). None if it
    cannot be built there (its real build then reports why); activations 0 if it cannot be run (a plugin that
    needs real values)."""
    try:
        with torch.device("meta"):
            model = build()
        if not isinstance(model, torch.nn.Module):
            return None
        parameters = sum(p.numel() for p in model.parameters())
    except Exception:
        return None
    values = 0

    def count(module, inputs, output) -> None:
        nonlocal values
        outs = output if isinstance(output, tuple | list) else (output,)
        values += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))

    # A small model runs one real forward pass on zeroed CPU weights: a forward pass on the meta device
    # needs torch's Python meta kernels, whose first use imports torch._dynamo (5-6 s, every process).
    device = "meta"
    if parameters * BYTES_PER_VALUE <= REAL_PASS_BYTES:
        try:
            model, device = model.to_empty(device="cpu"), "cpu"
            with torch.no_grad():  # garbage memory holds denormals and NaNs, which some CPUs compute slowly
                for t in (*model.parameters(), *model.buffers()):
                    t.zero_()
        except Exception:  # noqa: BLE001 - a module that cannot leave the meta device: count there
            device = "meta"
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.eval()  # batch norm in training mode refuses a batch of one; the shapes are the same
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), device=device))
        activations = values // 2
    except Exception:
        activations = 0
    finally:
        for h in handles:
            h.remove()
    return parameters, activations


def check_fits(estimate: Estimate, available: int | None, key: str, value: object, optimizer: str) -> None:
    """Refuse a training setup whose :class:`Estimate` exceeds ``available`` bytes, naming ``key = value`` and
    the figures. Nothing is checked when ``available`` is None."""
    if available is None or estimate.total_bytes <= available:
        return
    acts = estimate.activations_per_example * estimate.batch_size
    needs = f"~{estimate.parameters:.2g} parameters"
    if acts:
        needs += f" and ~{acts:.2g} activation values for a batch of {estimate.batch_size}"
    raise ConfigError(
        key,
        value,
        f"the model needs {needs} (~{human_bytes(estimate.total_bytes)} to train with {optimizer}); "
        f"this machine has {human_bytes(available)}",
    )


def training_estimate(
    cfg: Config, input_shape: tuple[int, ...], num_classes: int, train_examples: int
) -> Estimate | None:
    """The :class:`Estimate` of training ``cfg``'s model on inputs of ``input_shape``: counted on the meta device
    (or zeroed CPU weights, :func:`measure_on_meta`), before the model is built; None if it cannot be built there."""
    from tricklab.config import model_factory

    factory = model_factory(cfg.model.name)
    measured = measure_on_meta(
        lambda: factory(tuple(input_shape), num_classes, **cfg.model.factory_kwargs()), tuple(input_shape)
    )
    if measured is None:
        return None
    parameters, activations = measured
    copies = (cfg.averaging.ema is not None) + (cfg.averaging.swa_start is not None)
    copies += cfg.early_stopping.enabled and cfg.early_stopping.restore_best
    return Estimate(
        parameters=parameters,
        activations_per_example=activations,
        batch_size=max(1, min(cfg.data.batch_size, train_examples)),
        optimizer_slots=OPTIMIZER_SLOTS.get(cfg.optim.name, 2),
        weight_copies=int(copies),
    )


def check_training_memory(cfg: Config, input_shape: tuple[int, ...], num_classes: int, train_examples: int) -> None:
    """Refuse ``cfg``'s model, before it is built, if training it cannot fit in this machine's physical memory
    (and the GPU's, when it trains on one): a :class:`ConfigError` naming what makes it large, with the figures.

    Called by :func:`tricklab.assembly.build_model`. A model that cannot be built on the meta device is let
    through: building it for real reports what is wrong with it.
    """
    from tricklab.train.seed import resolve_device

    estimate = training_estimate(cfg, input_shape, num_classes, train_examples)
    if estimate is None:
        return
    available = physical_memory()
    if resolve_device(cfg.train.device).type == "cuda":
        gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        available = gpu if available is None else min(available, gpu)
    if estimate.activation_bytes > estimate.weight_bytes:
        key, value = "data.batch_size", cfg.data.batch_size
    elif cfg.model.width is not None:
        key, value = "model.width", cfg.model.width
    elif cfg.model.depth is not None:
        key, value = "model.depth", cfg.model.depth
    else:
        key, value = "model.name", cfg.model.name
    check_fits(estimate, available, key, value, cfg.optim.name)
