"""The few events of :func:`tricklab.engine.fit` and the state that callbacks see.

Kept here, below the tricks, so that tricks can implement callbacks without importing the trainer.

A callback is a small object with any of these methods; each receives the :class:`FitState`:

``on_fit_start``    once, before the first epoch (model on its device, optimizer built)
``on_epoch_start``  before each epoch's first batch
``on_after_backward`` after ``loss.backward()``, before ``optimizer.step()``: the place to read or change
                    gradients (clipping, L1, probes). Setting ``state.skip_step = True`` skips the update.
``on_step_end``     after ``optimizer.step()`` (per-step schedules, EMA, probes)
``on_epoch_end``    after validation; ``state.metrics`` holds the epoch's row (early stopping, decay per epoch)
``on_fit_end``      once, after the last epoch, before the test evaluation (restore best weights, SWA)

Callbacks run in ascending ``order`` (default 0), then in the order given. A callback stops training by
setting ``state.stop = True`` and ``state.stop_reason``; it can route evaluation through other weights
(EMA, SWA) by setting ``state.eval_model``; it can add numbers to the epoch's history row by putting
them into ``state.epoch_extras`` (the row is updated after each callback's ``on_epoch_end``, so later
callbacks see the extras of earlier ones).

The built-in callbacks take their ``order`` from one table of constants here, so that the sequence is
read in one place; each constant's comment says why it sits where it does:

========================  =====  ======================================================================
constant                  order  callback
========================  =====  ======================================================================
``ORDER_PROBE``           -100   ``ProbeCallback``: reads the raw gradients before any trick changes them
``ORDER_L1``              -10    ``L1Penalty``: adds its penalty before clipping, so clipping sees it
``ORDER_CLIP``            0      ``GradClip``: clips the final (penalized) gradient
``ORDER_EARLY_STOPPING``  10     ``EarlyStopping``: decides on the row before averaging and the late ones
``ORDER_AVERAGING``       20     ``EMA``, ``SWA``: average the weights once the tricks that edit them ran
``ORDER_SCHEDULE``        50     ``LRSchedule``: moves the LR last, after the tricks used this step's LR
``ORDER_PROGRESS``        900    ``ProgressReporter``: shows the row with every trick's extras
``ORDER_HISTORY``         1000   ``HistoryWriter``: writes the complete row to ``history.jsonl``
``ORDER_STOP_AFTER``      1000   the doctor's ``StopAfter``: stops once every trick handled the step
``ORDER_CHECKPOINT``      1100   ``Checkpointer``: last, so a checkpoint holds everyone's state
========================  =====  ======================================================================

A callback of your own picks its place relative to these, e.g. ``order = ORDER_CLIP + 1`` to read the
clipped gradients.

A state can be saved between two steps and restored (``tricklab.engine.checkpoint``): ``batches_done`` and
``totals`` say how far the running epoch got, so that a restored state resumes it exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# --- callback order (ascending; ties keep the order the callbacks were given in) ------------------------------
#: Probes read the raw gradients (‖∂L/∂W‖, ‖g‖) before any trick changes them: first of all.
ORDER_PROBE = -100
#: The L1 penalty adds l1 · sign(w) to the gradients before clipping, so that clipping bounds the penalized
#: gradient that the optimizer will apply.
ORDER_L1 = -10
#: Gradient clipping: after every callback that adds to the gradients, so it bounds what the optimizer applies.
ORDER_CLIP = 0
#: Early stopping reads the epoch's row once clipping added its extras, and sets ``state.stop`` before the
#: late callbacks see the epoch (the checkpoint then knows the run stopped); at the end it restores the best
#: weights before SWA (``ORDER_AVERAGING``) sets ``state.eval_model`` to its average.
ORDER_EARLY_STOPPING = 10
#: EMA and SWA average the weights after every callback that edits them after the step.
ORDER_AVERAGING = 20
#: LR schedules step last among the tricks, so that every trick sees the LR the step or epoch was taken with.
ORDER_SCHEDULE = 50
#: The progress display comes after every trick, so the line it prints holds their extras.
ORDER_PROGRESS = 900
#: The history writer appends the epoch's row once every trick added its extras to it.
ORDER_HISTORY = 1000
#: The doctor's step limit stops training once the probes and every trick have handled the step.
ORDER_STOP_AFTER = 1000
#: Checkpoints come last: they save every callback's state after the epoch, after the history row is on disk,
#: and see a stop that any other callback set (and write the final checkpoint then).
ORDER_CHECKPOINT = 1100

EVENTS = ("on_fit_start", "on_epoch_start", "on_after_backward", "on_step_end", "on_epoch_end", "on_fit_end")


class Callback:
    """Base class for callbacks; override only the events you need."""

    order: int = 0

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_after_backward(self, state: FitState) -> None: ...
    def on_step_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...

    # Checkpointing (reliability): a callback with state returns plain tensors/numbers here.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def check_state_dict(self, state: dict[str, Any], model: nn.Module) -> str | None:
        """The first way ``state`` (read from a checkpoint) does not fit this callback training ``model``, or None.

        Called before anything of a checkpoint is loaded, so that a forged or foreign one is refused whole. A
        callback that keeps copies of the weights (EMA, SWA, the best epoch's) checks them with
        :func:`weights_mismatch`.
        """
        return None


def weights_mismatch(own: dict[str, torch.Tensor], weights: object, prefix: str = "") -> str | None:
    """How ``weights`` differs from the state dict ``own`` (keys, shapes, dtypes), or None if it fits exactly.

    ``prefix``: the keys of ``weights`` are ``own``'s with this in front (an ``AveragedModel``'s ``module.``).
    """
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "not a dict of tensors"
    want = {prefix + k: v for k, v in own.items()}
    missing = sorted(want.keys() - weights.keys())
    unexpected = sorted(weights.keys() - want.keys())
    common = sorted(want.keys() & weights.keys())
    shapes = [
        f"{k} {tuple(weights[k].shape)} != {tuple(want[k].shape)}"
        for k in common
        if tuple(weights[k].shape) != tuple(want[k].shape)
    ]
    dtypes = [
        f"{k} {str(weights[k].dtype).removeprefix('torch.')} != {str(want[k].dtype).removeprefix('torch.')}"
        for k in common
        if weights[k].dtype != want[k].dtype
    ]
    parts = [
        f"{label}: {_listed(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes), ("dtype", dtypes))
        if keys
    ]
    return f"the weights of a different model ({'; '.join(parts)})" if parts else None


def _listed(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def gradient_norms(params) -> tuple[list, list[torch.Tensor], torch.Tensor]:
    """(the parameters that have a gradient, their gradients' L2 norms, the global norm), in one fused pass and left
    on the device: what :attr:`FitState.grad_norms` holds."""
    with torch.no_grad():
        params = [p for p in params if p.grad is not None]
        norms = list(torch._foreach_norm([p.grad for p in params])) if params else []
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    return params, norms, total


@dataclass
class EpochTotals:
    """The running epoch's sums for its history row: summed loss, correct predictions, examples, its LR."""

    lr: float
    loss_sum: torch.Tensor  # float64, on the training device
    correct: torch.Tensor  # long, on the training device
    seen: int = 0
    started: float = field(default_factory=time.perf_counter)  # perf_counter() at the (virtual) epoch start

    @classmethod
    def zeros(cls, lr: float, device: torch.device) -> EpochTotals:
        zeros = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.long, device=device)
        return cls(lr, *zeros)


@dataclass
class FitState:
    """Everything the loop knows; callbacks read it and may set the few writable flags.

    Read by callbacks:

    - ``model``, ``optimizer``: what is trained (the model on ``device``); ``lr``: the first parameter group's LR.
    - ``epochs``: the epochs the run trains; ``epoch``: the running one, 1-based (0 before the first).
    - ``step``: optimizer steps taken so far, over the whole run; ``batch``: the batch's index within its epoch;
      ``steps_per_epoch``: batches per epoch (None for an iterable without a length).
    - ``loss``, ``inputs``, ``targets``: this batch's loss (a tensor with its graph; use ``loss.detach()``), inputs
      and labels, set before ``on_after_backward``.
    - ``grad_norms``: this step's (parameters, their gradients' 0-d norms, the global norm), computed once by the
      NaN/Inf guard on steps where a callback's ``wants_grad_norms`` is true, else None.
    - ``metrics``: the last finished epoch's history row (``train_loss``, ``train_acc``, ``val_loss``,
      ``val_acc``, ``lr``, ``epoch_time_s``, and earlier callbacks' extras); ``history``: every row so far.
    - ``nonfinite_skipped``: batches skipped for NaN/Inf so far (``train.nonfinite=skip``).
    - ``batches_done``, ``totals``: how far the running epoch got and its running sums, so that a state saved
      between two steps resumes exactly (:mod:`tricklab.engine.checkpoint`); a callback rarely needs them.

    Written by callbacks:

    - ``epoch_extras``: numbers to add to this epoch's history row (``history.jsonl``), in ``on_epoch_end``.
    - ``stop`` (and ``stop_reason``, a sentence): end training after this step or epoch.
    - ``skip_step``: in ``on_after_backward``, leave this batch's update out.
    - ``eval_model``: evaluate through other weights (an EMA or SWA average) instead of ``model``.

    Example::

        from tricklab.events import Callback

        class StopAtAccuracy(Callback):  # record each epoch's last batch loss; stop at a validation accuracy
            def __init__(self, target):
                self.target = target

            def on_step_end(self, state):
                self.last_loss = state.loss.detach()  # a tensor: no wait for the device on every step

            def on_epoch_end(self, state):
                state.epoch_extras["last_batch_loss"] = self.last_loss.item()  # a new column of the history
                if state.metrics["val_acc"] >= self.target:
                    state.stop, state.stop_reason = True, f"val_acc reached {self.target} in epoch {state.epoch}"

        config = {"data.name": "mnist1d", "data.subset": 2000, "train.epochs": 20}
        result = tricklab.run(config, write=False, callbacks=[StopAtAccuracy(0.3)])
        print(result.metrics["epochs_run"], result.history[-1]["last_batch_loss"])  # stopped before epoch 20
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    device: torch.device
    epoch: int = 0  # 1-based while running
    step: int = 0  # global optimizer steps taken so far
    batch: int = 0  # index of the batch within the epoch
    steps_per_epoch: int | None = None
    loss: torch.Tensor | None = None  # the current batch's loss (after backward)
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    # this step's gradient norms, (parameters, their 0-d norms, the global norm), once the NaN/Inf guard checked
    # them (only on steps where a callback's ``wants_grad_norms``, read before each check, is true; None otherwise):
    # a callback need not recompute them
    grad_norms: tuple[list, list[torch.Tensor], torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last finished epoch's history row
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_extras: dict[str, float] = field(default_factory=dict)  # numbers callbacks add to this epoch's row
    # writable by callbacks
    stop: bool = False
    stop_reason: str | None = None
    skip_step: bool = False
    eval_model: nn.Module | None = None
    # the running epoch, so that a state saved between two steps resumes exactly (see tricklab.engine.checkpoint)
    batches_done: int = 0  # batches of epoch ``epoch`` already trained; 0 between epochs
    totals: EpochTotals | None = None
    nonfinite_skipped: int = 0  # batches skipped for NaN/Inf (train.nonfinite = skip)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
