"""Learning-rate schedules: decay the LR over training, per epoch or per optimizer step.

Every schedule is a ``torch.optim.lr_scheduler`` object chosen by name from :data:`SCHEDULES`;
:func:`build_schedule` builds it for an optimizer, :class:`LRSchedule` steps it from the training loop,
and :func:`lr_sequence` returns the LR of every optimizer step (for docs, tests and plots).

Step semantics (the part users trip on), with ``lr`` the optimizer's LR, ``T = epochs * steps_per_epoch``
and ``k`` the 0-based index of the optimizer step:

* ``interval == "epoch"`` (constant, exponential, step, plateau): the scheduler steps after each epoch's
  validation, so every step of epoch ``e`` (1-based) uses the same LR and epoch 1 always uses ``lr``.
* ``interval == "step"`` (cosine, warmup_cosine, onecycle): the scheduler steps after each optimizer
  step, so step ``k`` uses the LR the formula gives for ``k``; step 0 uses the formula's start.

Example::

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(..., callbacks=[LRSchedule("exponential", gamma=0.98)])        # lr·0.98^(e−1) in epoch e
    lr_sequence("cosine", 0.1, epochs=2, steps_per_epoch=3)            # [0.1, 0.0933, 0.075, ...]

References: Loshchilov & Hutter 2017 (SGDR: cosine annealing); Goyal et al. 2017 (linear warm-up);
Smith 2017 / Smith & Topin 2018 (cyclical LRs, 1cycle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch.optim import lr_scheduler

from tricklab.errors import ConfigError
from tricklab.events import ORDER_SCHEDULE, Callback, FitState
from tricklab.metrics import VAL_LOSS
from tricklab.registry import Registry
from tricklab.sections import MAX_RATE, Section, name_in
from tricklab.tricks.family import TRICKS, BuildContext, TrickFamily

#: Default γ per schedule when ``gamma`` is not given (the lesson's slow decay; the classic 10× step).
DEFAULT_GAMMA = {"exponential": 0.98, "step": 0.1}
#: Default number of warm-up epochs for ``warmup_cosine``.
DEFAULT_WARMUP_EPOCHS = 1
#: Default number of epochs without improvement that ``plateau`` tolerates before cutting the LR.
DEFAULT_PATIENCE = 2


@dataclass(frozen=True)
class Schedule:
    """A built schedule: the torch scheduler (``None`` for ``constant``) and when to step it."""

    name: str
    scheduler: lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None
    interval: str  # "epoch" | "step"
    monitor: str | None = None  # the metric ``plateau`` watches
    mode: str | None = None  # "min" | "max" for ``plateau``


@dataclass(frozen=True)
class _Options:
    """The validated keyword arguments of :func:`build_schedule`, with defaults resolved."""

    epochs: int
    steps_per_epoch: int
    gamma: float | None
    step_size: int
    warmup_epochs: int
    min_lr: float
    factor: float
    patience: int
    monitor: str

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


Builder = Callable[[torch.optim.Optimizer, _Options], Schedule]
SCHEDULES: Registry[Builder] = Registry("schedule")


@SCHEDULES.register("constant", help="lr at every step (no decay)")
def _constant(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    return Schedule("constant", None, "epoch")


@SCHEDULES.register("exponential", help="lr·γ^(e−1) in epoch e, γ=0.98 by default; per epoch")
def _exponential(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    gamma = DEFAULT_GAMMA["exponential"] if o.gamma is None else o.gamma
    return Schedule("exponential", lr_scheduler.ExponentialLR(optimizer, gamma=gamma), "epoch")


@SCHEDULES.register(
    "step", help="lr·γ^⌊(e−1)/step_size⌋ in epoch e, γ=0.1, step_size=epochs//3 by default; per epoch"
)
def _step(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    gamma = DEFAULT_GAMMA["step"] if o.gamma is None else o.gamma
    return Schedule("step", lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=gamma), "epoch")


@SCHEDULES.register(
    "cosine", help="min_lr + (lr−min_lr)·(1+cos(πk/T))/2 at step k of T; per step; Loshchilov & Hutter 2017"
)
def _cosine(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.total_steps, eta_min=o.min_lr)
    return Schedule("cosine", scheduler, "step")


@SCHEDULES.register(
    "warmup_cosine",
    help="lr·(k+1)/W for k<W warm-up steps, then cosine to min_lr; per step; Goyal et al. 2017",
)
def _warmup_cosine(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    warmup = o.warmup_epochs * o.steps_per_epoch
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.total_steps - warmup, eta_min=o.min_lr)
    if warmup == 0:
        return Schedule("warmup_cosine", cosine, "step")
    # LinearLR's factor at step k is 1/W + (1 − 1/W)·k/(W−1) = (k+1)/W: from lr/W up to lr at step W−1.
    linear = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1)
    )
    scheduler = lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    return Schedule("warmup_cosine", scheduler, "step")


@SCHEDULES.register(
    "onecycle", help="lr/25 → lr (30% of steps) → lr/25e4, cosine; per step; Smith 2017, Smith & Topin 2018"
)
def _onecycle(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    max_lr = [float(group["lr"]) for group in optimizer.param_groups]
    scheduler = lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=o.total_steps, cycle_momentum=_has_momentum(optimizer)
    )
    return Schedule("onecycle", scheduler, "step")


@SCHEDULES.register(
    "plateau", help="lr·factor after patience+1 epochs without improving the monitored metric; per epoch"
)
def _plateau(optimizer: torch.optim.Optimizer, o: _Options) -> Schedule:
    mode = _plateau_mode(o.monitor)
    scheduler = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=o.factor, patience=o.patience, min_lr=o.min_lr
    )
    return Schedule("plateau", scheduler, "epoch", monitor=o.monitor, mode=mode)


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    gamma: float | None = None,
    step_size: int | None = None,
    warmup_epochs: int = DEFAULT_WARMUP_EPOCHS,
    min_lr: float = 0.0,
    factor: float = 0.1,
    patience: int = DEFAULT_PATIENCE,
    monitor: str = VAL_LOSS,
) -> Schedule:
    """Build the schedule ``name`` for ``optimizer``, whose current LR is the schedule's ``lr``.

    Defaults: ``gamma`` 0.98 for exponential and 0.1 for step; ``step_size`` ``max(1, epochs // 3)``
    (two 10× cuts over the run); ``warmup_epochs`` 1; ``min_lr`` 0; ``factor`` 0.1 and ``patience`` 2 for
    plateau, which watches ``monitor`` (minimised when it ends in "loss", maximised when it ends in "acc").
    Options a schedule does not use are still checked, but otherwise ignored; ``onecycle`` keeps torch's
    own start (lr/25) and end (lr/25e4) and cycles momentum only where the optimizer has momentum or betas.

    Example::

        s = build_schedule("step", opt, epochs=9, steps_per_epoch=100)     # ×0.1 after epochs 3 and 6
        s.interval                                                         # "epoch"
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"a schedule needs epochs ≥ 1 and steps_per_epoch ≥ 1, got {epochs}, {steps_per_epoch}"
        )
    builder = SCHEDULES.get(name)
    lr = min(float(group["lr"]) for group in optimizer.param_groups)
    _check_options(
        name,
        gamma=gamma,
        step_size=step_size,
        warmup_epochs=warmup_epochs,
        min_lr=min_lr,
        factor=factor,
        patience=patience,
        monitor=monitor,
    )
    if name == "warmup_cosine" and warmup_epochs >= epochs:
        raise ConfigError("schedule.warmup_epochs", warmup_epochs, f"an integer ≥ 0 and < epochs ({epochs})")
    if min_lr >= lr:
        raise ConfigError("schedule.min_lr", min_lr, f"a number ≥ 0 and < the learning rate ({lr:g})")
    options = _Options(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        gamma=gamma,
        step_size=max(1, epochs // 3) if step_size is None else step_size,
        warmup_epochs=warmup_epochs,
        min_lr=min_lr,
        factor=factor,
        patience=patience,
        monitor=monitor,
    )
    return builder(optimizer, options)


class LRSchedule(Callback):
    """Steps a learning-rate schedule from the training loop, built when the fit starts.

    Events: ``on_fit_start`` builds the schedule from ``state.optimizer`` (its LR is the schedule's ``lr``),
    ``state.epochs`` and ``state.steps_per_epoch``; ``on_step_end`` steps per-step schedules;
    ``on_epoch_end`` steps per-epoch schedules (``plateau`` reads ``state.metrics[monitor]``). Runs last
    (``ORDER_SCHEDULE``, 50), so that everything else sees the LR the step or epoch was taken with. Options are those
    of :func:`build_schedule` and are checked here, at config time. Writes nothing to ``epoch_extras``.

    Example::

        fit(model, data, callbacks=[LRSchedule("warmup_cosine", warmup_epochs=2, min_lr=1e-4)])
    """

    order = ORDER_SCHEDULE

    def __init__(self, name: str = "constant", **options: Any):
        SCHEDULES.get(name)
        _check_options(name, **options)
        self.name, self.options = name, options
        self.schedule: Schedule | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._start_lrs: list[float] = []
        self._pending_state: dict[str, Any] | None = None

    def on_fit_start(self, state: FitState) -> None:
        if state.steps_per_epoch is None:
            raise ValueError("LRSchedule needs state.steps_per_epoch to be set before on_fit_start")
        pending, self._pending_state = self._pending_state, None
        if pending:  # resuming: rebuild from the LRs the run started with, then restore the position
            _set_lrs(state.optimizer, pending["start_lrs"])
        self._optimizer = state.optimizer
        self._start_lrs = [float(group["lr"]) for group in state.optimizer.param_groups]
        self.schedule = build_schedule(
            self.name,
            state.optimizer,
            epochs=state.epochs,
            steps_per_epoch=state.steps_per_epoch,
            **self.options,
        )
        if pending:
            self.load_state_dict(pending)

    def on_step_end(self, state: FitState) -> None:
        if (scheduler := self._stepped_per("step")) is not None:
            scheduler.step()

    def on_epoch_end(self, state: FitState) -> None:
        scheduler = self._stepped_per("epoch")
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            monitor = self.schedule.monitor if self.schedule else None
            if monitor not in state.metrics:
                allowed = f"a metric of the epoch's row: {sorted(state.metrics)}"
                raise ConfigError("schedule.monitor", monitor, allowed)
            scheduler.step(float(state.metrics[monitor]))
        elif scheduler is not None:
            scheduler.step()

    def _stepped_per(self, interval: str) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None:
        """The torch scheduler if one is built and steps per ``interval``."""
        if self.schedule is None or self.schedule.interval != interval:
            return None
        return self.schedule.scheduler

    def state_dict(self) -> dict[str, Any]:
        """The LRs the run started with, the current LRs and the torch scheduler's own state."""
        if self.schedule is None or self._optimizer is None:
            return {}
        scheduler = self.schedule.scheduler
        return {
            "start_lrs": list(self._start_lrs),
            "lrs": [float(group["lr"]) for group in self._optimizer.param_groups],
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: before ``on_fit_start`` the state is kept until the schedule is built."""
        if not state:
            return
        if self.schedule is None or self._optimizer is None:
            self._pending_state = state
            return
        if self.schedule.scheduler is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        _set_lrs(self._optimizer, state["lrs"])


def lr_sequence(
    name: str,
    lr: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    metrics: Sequence[float] | None = None,
    **options: Any,
) -> list[float]:
    """The LR used at every optimizer step (``epochs * steps_per_epoch`` values) by schedule ``name``.

    Drives :class:`LRSchedule` on a one-parameter SGD exactly as the training loop does. ``metrics``
    (one value per epoch of the monitored metric) feeds ``plateau``; without it, plateau sees a metric
    that never improves after epoch 1. Other ``options`` are those of :func:`build_schedule`.

    Example::

        lr_sequence("exponential", 1.0, epochs=3, steps_per_epoch=2)  # [1, 1, 0.98, 0.98, 0.9604, 0.9604]
    """
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    callback = LRSchedule(name, **options)
    state = FitState(
        model=torch.nn.Linear(1, 1),
        optimizer=optimizer,
        epochs=epochs,
        device=torch.device("cpu"),
        steps_per_epoch=steps_per_epoch,
    )
    monitor = options.get("monitor", VAL_LOSS)
    values = list(metrics) if metrics is not None else [1.0] * epochs
    if len(values) < epochs:
        raise ValueError(f"lr_sequence needs one metric value per epoch ({epochs}), got {len(values)}")
    lrs: list[float] = []
    callback.on_fit_start(state)
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        for batch in range(steps_per_epoch):
            state.batch = batch
            lrs.append(state.lr)
            optimizer.step()  # no gradient: changes nothing, but orders the step before the scheduler's
            state.step += 1
            callback.on_step_end(state)
        state.metrics = {monitor: values[epoch - 1]}
        callback.on_epoch_end(state)
    callback.on_fit_end(state)
    return lrs


def _check_options(
    name: str,
    *,
    gamma: float | None = None,
    step_size: int | None = None,
    warmup_epochs: int = DEFAULT_WARMUP_EPOCHS,
    min_lr: float = 0.0,
    factor: float = 0.1,
    patience: int = DEFAULT_PATIENCE,
    monitor: str = VAL_LOSS,
) -> None:
    """Raise :class:`ConfigError` for the first option outside its range (those that need no optimizer)."""
    if gamma is not None and not (0.0 < gamma <= 1.0):
        raise ConfigError("schedule.gamma", gamma, "a number in (0, 1]")
    if step_size is not None and (not _is_int(step_size) or step_size < 1):
        raise ConfigError("schedule.step_size", step_size, "an integer ≥ 1")
    if not _is_int(warmup_epochs) or warmup_epochs < 0:
        raise ConfigError("schedule.warmup_epochs", warmup_epochs, "an integer ≥ 0 and < epochs")
    if not (math.isfinite(min_lr) and min_lr >= 0.0):
        raise ConfigError("schedule.min_lr", min_lr, "a number ≥ 0 and < the learning rate")
    if not (0.0 < factor < 1.0):
        raise ConfigError("schedule.factor", factor, "a number in (0, 1)")
    if not _is_int(patience) or patience < 0:
        raise ConfigError("schedule.patience", patience, "an integer ≥ 0")
    if name == "plateau":
        _plateau_mode(monitor)


def _plateau_mode(monitor: str) -> str:
    """``"min"`` for a metric ending in "loss", ``"max"`` for one ending in "acc"."""
    if monitor.endswith("loss"):
        return "min"
    if monitor.endswith("acc"):
        return "max"
    raise ConfigError("schedule.monitor", monitor, "a metric name ending in 'loss' or 'acc', e.g. 'val_loss'")


def _set_lrs(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer has momentum (SGD with momentum > 0) or betas (Adam) for 1cycle to cycle."""
    defaults = optimizer.defaults
    return "betas" in defaults or float(defaults.get("momentum", 0.0)) > 0.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

# --- the family: config section, builder, checks, PyTorch translation -----------------------------------------


class ScheduleConfig(Section):
    """Learning-rate decay; the LR actually used in each epoch is in the history."""

    name: str = "cosine"
    gamma: float | None = Field(None, gt=0, le=1)  # exponential (default 0.98 per epoch), step (default 0.1)
    step_size: int | None = Field(None, ge=1)  # epochs between step decays (default epochs // 3)
    warmup_epochs: int = Field(1, ge=0)
    min_lr: float = Field(0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)
    factor: float = Field(0.1, gt=0, lt=1)  # plateau
    patience: int = Field(2, ge=0)  # plateau
    monitor: Literal["val_loss", "val_acc"] = "val_loss"  # plateau

    _name = field_validator("name")(lambda v: name_in(SCHEDULES, v))


def schedule_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    """:class:`LRSchedule` for ``schedule.name`` with the section's options; nothing for ``constant``."""
    s: ScheduleConfig = cfg.schedule
    if s.name == "constant":
        return []
    opts: dict[str, Any] = dict(
        warmup_epochs=s.warmup_epochs, min_lr=s.min_lr, factor=s.factor, patience=s.patience, monitor=s.monitor
    )
    if s.gamma is not None:
        opts["gamma"] = s.gamma
    if s.step_size is not None:
        opts["step_size"] = s.step_size
    return [LRSchedule(s.name, **opts)]


def schedule_check(cfg: Any) -> None:
    """Warmup must end before training does."""
    if cfg.schedule.name == "warmup_cosine" and cfg.schedule.warmup_epochs >= cfg.train.epochs:
        raise ConfigError(
            "schedule.warmup_epochs", cfg.schedule.warmup_epochs, f"must be < train.epochs ({cfg.train.epochs})"
        )


TRICKS.register(
    "schedule",
    TrickFamily(ScheduleConfig, callbacks=schedule_callbacks, check=schedule_check),
    help="learning-rate schedules: warmup, cosine, step, exponential, plateau",
)
