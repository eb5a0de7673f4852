"""Early stopping: stop once the validation metric stalls for ``patience`` epochs; keep the best weights.

The pure core is :class:`EarlyStopper` (numbers in, a stop decision out); :class:`EarlyStopping` hooks it
into the loop and restores the best epoch's weights at the end of the run, however the run ended.

Prechelt, L. (1998). "Early stopping — but when?" In *Neural Networks: Tricks of the Trade*, 55–69.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tricklab.errors import ConfigError, echo
from tricklab.events import ORDER_EARLY_STOPPING, Callback, FitState, weights_mismatch
from tricklab.metrics import VAL_ACC, VAL_LOSS
from tricklab.sections import Section
from tricklab.tricks.family import TRICKS, BuildContext, Prescription, TrickFamily

MONITORS = (VAL_LOSS, VAL_ACC)


def _check(monitor: str, patience: int, min_delta: float) -> None:
    if monitor not in MONITORS:
        raise ConfigError("early_stopping.monitor", monitor, f"one of {', '.join(MONITORS)}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ConfigError("early_stopping.patience", patience, "an integer >= 0 (epochs without improvement)")
    if (
        isinstance(min_delta, bool)
        or not isinstance(min_delta, int | float)
        or not math.isfinite(min_delta)
        or min_delta < 0
    ):
        raise ConfigError("early_stopping.min_delta", min_delta, "a finite number >= 0")


class EarlyStopper:
    """Decide, epoch by epoch, whether training should stop (Prechelt 1998).

    Mode is ``min`` for ``val_loss`` and ``max`` for ``val_acc``. An epoch improves when its value beats
    the best so far by more than ``min_delta``::

        improved = value < best - min_delta   (min)      value > best + min_delta   (max)

    Otherwise ``bad_epochs`` grows; training stops on the ``patience``-th epoch in a row without
    improvement (``patience=0`` stops at the first one), or at once when the value is NaN or infinite.
    The reference is the best value, not the previous one, so many small gains below ``min_delta`` add up.

    Example::

        stopper = EarlyStopper("val_loss", patience=2)
        [stopper.update(v, e) for e, v in enumerate([1.0, 0.8, 0.9, 0.85], start=1)]
        # [False, False, False, True]; stopper.best_epoch == 2, stopper.stopped_epoch == 4
    """

    def __init__(self, monitor: str = VAL_LOSS, patience: int = 5, min_delta: float = 0.0):
        _check(monitor, patience, min_delta)
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.best: float = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None
        self.reason: str | None = None

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s monitored ``value``; return True if training should stop now."""
        if self.stopped_epoch is not None:
            return True
        value = float(value)
        if not math.isfinite(value):
            self.stopped_epoch = epoch
            self.reason = f"{self.monitor} is {value} (non-finite) at epoch {epoch}"
            return True
        if self.improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.reason = (
                f"{self.monitor} did not improve by more than {self.min_delta:g} for {self.bad_epochs} "
                f"epoch(s) (best {self.best:.6g} at epoch {self.best_epoch})"
            )
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        keys = ("best", "best_epoch", "bad_epochs", "stopped_epoch", "reason")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving; at the end restore the best epoch's weights (Prechelt 1998).

    ``on_epoch_end`` reads ``state.metrics[monitor]``, keeps a CPU copy of the evaluated weights
    (``state.eval_model`` if a callback such as EMA set one, else ``state.model``) whenever the epoch
    improved, and sets ``state.stop`` / ``state.stop_reason`` when the :class:`EarlyStopper` says so.
    ``on_fit_end`` restores the best weights into that same module whenever ``restore_best`` is true,
    whatever ended the run -- also when early stopping never triggered (the bug of keras#12511) -- and
    records ``best_epoch``, ``stopped_epoch`` (None if it did not stop the run), ``reason`` and
    ``restored`` on the callback for the results.

    Example::

        fit(model, data, callbacks=[EarlyStopping("val_loss", patience=3, min_delta=1e-3)])
    """

    order = ORDER_EARLY_STOPPING

    def __init__(
        self, monitor: str = VAL_LOSS, patience: int = 5, min_delta: float = 0.0, restore_best: bool = True
    ):
        self.stopper = EarlyStopper(monitor, patience, min_delta)
        self.monitor, self.restore_best = monitor, restore_best
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._source: nn.Module | None = None  # the module the best weights were copied from
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.reason: str | None = None
        self.restored = False

    def on_epoch_end(self, state: FitState) -> None:
        if self.monitor not in state.metrics:
            raise ConfigError(
                "early_stopping.monitor",
                self.monitor,
                f"a metric of the epoch (needs a validation split); this epoch has {sorted(state.metrics)}",
            )
        stop = self.stopper.update(state.metrics[self.monitor], state.epoch)
        if self.stopper.best_epoch == state.epoch:
            self._source = state.eval_model if state.eval_model is not None else state.model
            self.best_weights = _cpu_copy(self._source)
        if stop:
            state.stop, state.stop_reason = True, f"early stopping: {self.stopper.reason}"

    def on_fit_end(self, state: FitState) -> None:
        self.best_epoch = self.stopper.best_epoch
        self.stopped_epoch = self.stopper.stopped_epoch
        if self.stopped_epoch is not None:
            self.reason = self.stopper.reason
        elif state.stop:
            self.reason = f"stopped by another callback: {state.stop_reason}"
        else:
            self.reason = f"ran all {state.epoch} epochs without early stopping"
        self.restored = False
        if self.restore_best and self.best_weights is not None:
            target = self._source
            if target is None:  # resumed from a checkpoint: same rule as when the copy was taken
                target = state.eval_model if state.eval_model is not None else state.model
            target.load_state_dict(self.best_weights)
            self.restored = True

    def state_dict(self) -> dict[str, Any]:
        return {"stopper": self.stopper.state_dict(), "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopper.load_state_dict(state["stopper"])
        self.best_weights = state["best_weights"]

    def check_state_dict(self, state: dict[str, Any], model: nn.Module) -> str | None:
        if set(state) != {"stopper", "best_weights"}:
            return f"holds {sorted(state)}, early stopping holds ['best_weights', 'stopper']"
        stopper, own = state["stopper"], self.stopper.state_dict()
        if not isinstance(stopper, dict) or set(stopper) != set(own):
            return f"stopper: holds {echo(stopper)}, not the keys {sorted(own)}"
        if state["best_weights"] is None:
            return None
        mismatch = weights_mismatch(model.state_dict(), state["best_weights"])
        return None if mismatch is None else f"best_weights: {mismatch}"

# --- the family: config section, builder, checks, PyTorch translation -----------------------------------------


class EarlyStoppingConfig(Section):
    """Stop when the validation metric stops improving; restore the best weights whatever ended the run."""

    enabled: bool = False
    monitor: Literal["val_loss", "val_acc"] = "val_loss"
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0, allow_inf_nan=False)
    restore_best: bool = True


def early_stopping_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    """:class:`EarlyStopping` when ``early_stopping.enabled``."""
    e: EarlyStoppingConfig = cfg.early_stopping
    return [EarlyStopping(e.monitor, e.patience, e.min_delta, e.restore_best)] if e.enabled else []


def enabled_in_pytorch(value: bool, p: Prescription) -> str:
    """``early_stopping.enabled`` in plain PyTorch: stop at the best validation loss (Prechelt 1998)."""
    if not value:
        return "train for the whole budget, without early stopping"
    return (
        "stop early: after each epoch `if val_loss < best: best, best_state = val_loss, "
        "copy.deepcopy(model.state_dict())`, stop after 5 epochs without a new best, then "
        "`model.load_state_dict(best_state)`"
    )


TRICKS.register(
    "early_stopping",
    TrickFamily(
        EarlyStoppingConfig,
        callbacks=early_stopping_callbacks,
        translations={"early_stopping.enabled": enabled_in_pytorch},
    ),
    help="stop when the validation metric stops improving; restore the best weights",
)
