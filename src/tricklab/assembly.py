"""The one place where a config becomes objects: data, model, optimizer and callbacks.

``train``, ``doctor``, ``lr-find`` and the lab all build what they run here, so a model, dataset, trick or
callback that works in one works in all. Config sections meet trick modules only in this module; the loop
itself knows no trick by name.

Example::

    parts = assemble(load_config(overrides=["model.name=cnn", "data.name=mnist1d"]))
    parts.model, parts.optimizer, parts.callbacks, parts.splits.train.x.shape
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tricklab.config import Config
from tricklab.data import Splits, TensorBatches, as_raw_dataset, data_root, split_and_scale
from tricklab.engine.placement import nbytes
from tricklab.engine.precision import Precision
from tricklab.engine.seed import seed_everything, set_threads
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import Callback
from tricklab.host import resolve_device
from tricklab.memory import check_built_model, check_training_memory
from tricklab.tricks.family import TRICKS, BuildContext
from tricklab.tricks.init import apply_init
from tricklab.tricks.optimizers import build_optimizer as optimizer_by_name

#: Training examples LSUV calibrates on.
LSUV_BATCH = 256
#: Examples of the forward pass that checks a model's output shape before training.
CHECK_BATCH = 2


def load_data(cfg: Config) -> Splits:
    """The config's dataset (built-in, registered or an import path), split and scaled."""
    d = cfg.data
    try:
        raw = d.loader(**d.loader_kwargs(data_root(d.dir)))
    except TrickLabError:
        raise
    except Exception as e:  # a plugin's own failure: say whose, in one line
        raise TrickLabError(f"data.name = {d.name!r}: the loader raised {type(e).__name__}: {e}") from None
    raw = as_raw_dataset(raw, d.name)
    return split_and_scale(raw, val_fraction=d.val_fraction, scale=d.scale, subset=d.subset, seed=cfg.train.seed)


def build_model(
    cfg: Config, splits: Splits, seed: int, check_memory: bool = True
) -> tuple[torch.nn.Module, torch.Generator]:
    """Seed everything with ``seed``, build the model, check it and initialize it; return it and the data-order
    generator. A model that is not an ``nn.Module``, has no trainable parameter or whose output is not
    ``(batch, num_classes)`` logits is a :class:`ConfigError` naming ``model.name``; one whose training, with the
    dataset, cannot fit in memory is refused before it is built (:func:`tricklab.memory.check_training_memory`), or,
    if it cannot be built on the meta device, once it is built and before anything else is allocated
    (:func:`~tricklab.memory.check_built_model`). ``check_memory=False``: the check was made for this config
    already (an ensemble's later members: the first check counted every member's weights)."""
    info = splits.info
    shape, n_train, data_bytes = tuple(info.input_shape), len(splits.train), nbytes(splits)
    checked = not check_memory or check_training_memory(cfg, shape, info.num_classes, n_train, data_bytes)
    generator = seed_everything(seed)
    name = cfg.model.name
    try:
        model = cfg.model.factory(tuple(info.input_shape), info.num_classes, **cfg.model.factory_kwargs())
    except TrickLabError:
        raise
    except Exception as e:
        raise ConfigError(
            "model.name",
            name,
            f"building it for inputs {tuple(info.input_shape)} and "
            f"{info.num_classes} classes raised {type(e).__name__}: {e}",
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model.name", name, f"returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model.name", name, "built a model with no trainable parameter: there is nothing to train")
    if not checked:
        check_built_model(cfg, model, shape, n_train, data_bytes)
    check_output(model, splits.train.x[:CHECK_BATCH], info.num_classes, name)
    initialize(cfg, model, splits)
    return model, generator


def check_output(model: torch.nn.Module, x: torch.Tensor, num_classes: int, name: str) -> None:
    """One forward pass in eval mode (no randomness consumed, no statistics updated): the output must be a
    tensor of shape ``(len(x), num_classes)``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.float() if x.dtype == torch.uint8 else x)
    except Exception as e:
        raise ConfigError(
            "model.name", name, f"forward pass on inputs of shape {tuple(x.shape)} raised {type(e).__name__}: {e}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            "model.name",
            name,
            f"maps inputs {tuple(x.shape)} to {got}; expected logits of shape "
            f"({len(x)}, {num_classes}) (batch, number of classes)",
        )


def initialize(cfg: Config, model: torch.nn.Module, splits: Splits) -> dict:
    """Apply ``init.scheme``; LSUV calibrates on the first ``LSUV_BATCH`` training examples."""
    data = splits.train.x[:LSUV_BATCH] if cfg.init.scheme == "lsuv" else None
    return apply_init(model, cfg.init.scheme, data=data)


def optimizer_factory(cfg: Config) -> Callable[..., torch.optim.Optimizer]:
    """``factory(params_or_model, lr)`` building the config's optimizer at learning rate ``lr`` (the LR finder
    sweeps it)."""
    o = cfg.optim

    device = resolve_device(cfg.train.device)  # the model moves there after the optimizer is built

    def factory(params, lr: float) -> torch.optim.Optimizer:
        return optimizer_by_name(
            o.name,
            params,
            lr=lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            decoupled=o.decoupled,
            fused=True,  # one kernel per step where torch has one, and the guard's found_inf flag on CUDA
            device=device,
        )

    return factory


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    return optimizer_factory(cfg)(model, cfg.optim.lr)


def _context(cfg: Config, splits: Splits | None) -> BuildContext:
    def train_batches() -> TensorBatches:
        if splits is None:
            raise TrickLabError("this trick needs the training data: build it with build_callbacks(cfg, splits)")
        return TensorBatches(splits.train.x, splits.train.y, cfg.data.batch_size, merge_single=True)

    return BuildContext(train_batches)


def family_callbacks(cfg: Config, splits: Splits | None, every_step: bool = False) -> list[Callback]:
    """The callbacks of every trick family (:data:`tricklab.tricks.family.TRICKS`) the config sets, in the families'
    order; ``every_step``: only those that act on every step's gradients."""
    ctx = _context(cfg, splits)
    return [cb for f in TRICKS.entries() if f.obj.every_step or not every_step for cb in f.obj.callbacks(cfg, ctx)]


def step_callbacks(cfg: Config) -> list[Callback]:
    """The tricks that act on every step's gradients (L1, clipping): all a short probed run needs."""
    return family_callbacks(cfg, None, every_step=True)


def build_callbacks(cfg: Config, splits: Splits) -> list[Callback]:
    """Every trick callback the config asks for, then its outside ``callbacks`` (each one's ``order`` fixes
    when it runs)."""
    return family_callbacks(cfg, splits) + outside_callbacks(cfg)


def outside_callbacks(cfg: Config) -> list[Callback]:
    """The config's ``callbacks``: registered or imported factories called with their ``kwargs``."""
    out: list[Callback] = []
    for i, spec in enumerate(cfg.callbacks):
        try:
            cb = spec.factory(**spec.kwargs)
        except TrickLabError:
            raise
        except Exception as e:
            raise ConfigError(f"callbacks[{i}].name", spec.name, f"raised {type(e).__name__}: {e}") from None
        if not any(
            callable(getattr(cb, ev, None))
            for ev in (
                "on_fit_start",
                "on_step_end",
                "on_epoch_end",
                "on_after_backward",
                "on_epoch_start",
                "on_fit_end",
            )
        ):
            raise ConfigError(
                f"callbacks[{i}].name",
                spec.name,
                f"returned a {type(cb).__name__}, which has none of the events of tricklab.events.Callback",
            )
        out.append(cb)
    return out


@dataclass
class Assembled:
    """What a config becomes: everything a command needs to train it."""

    config: Config
    splits: Splits
    model: torch.nn.Module
    generator: torch.Generator  # the data order's
    device: torch.device
    optimizer: torch.optim.Optimizer
    callbacks: list[Callback] = field(default_factory=list)
    precision: Precision | None = None  # train.precision, checked against the device

    def member(self, k: int) -> Assembled:
        """Ensemble member ``k``: the same data, a model, optimizer and callbacks built with seed ``seed + k``."""
        cfg = self.config
        model, generator = build_model(cfg, self.splits, cfg.train.seed + k, check_memory=False)
        return Assembled(
            cfg,
            self.splits,
            model,
            generator,
            self.device,
            build_optimizer(cfg, model),
            build_callbacks(cfg, self.splits),
            Precision(cfg.train.precision, self.device),
        )


def assemble(cfg: Config, splits: Splits | None = None) -> Assembled:
    """Everything that can fail on bad input, done before any file is written: threads, device, data, the
    model (seeded with ``train.seed``), its optimizer and callbacks."""
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits = splits if splits is not None else load_data(cfg)
    precision = Precision(cfg.train.precision, device)  # fp16 on a CPU is refused here, before anything runs
    model, generator = build_model(cfg, splits, cfg.train.seed)
    optimizer = build_optimizer(cfg, model)
    return Assembled(cfg, splits, model, generator, device, optimizer, build_callbacks(cfg, splits), precision)
