"""The training loop: one readable ``fit()`` with a few events that tricks and callbacks hook into."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.data.base import TensorBatches, TensorData
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import Callback, EpochTotals, FitState
from tricklab.metrics import EPOCH, EPOCH_TIME, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_batches(
    data, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None, merge_single: bool = False
) -> Batches:
    """Accept a TensorData, an ``(x, y)`` pair of tensors, or any re-iterable of batches (e.g. a DataLoader)."""
    if isinstance(data, TensorData):
        data = (data.x, data.y)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorBatches(
            data[0], data[1], batch_size, shuffle=shuffle, generator=generator, merge_single=merge_single
        )
    return data


def _single_example_error(batch: int, batches: Batches, error: ValueError) -> TrickLabError:
    """The model refused a batch of one example (batch norm does): a batch size of 1, a training set of 1, or a
    batch of one from the caller's own iterable (a DataLoader without ``drop_last``)."""
    if not isinstance(batches, TensorBatches):
        why = f"training batch {batch + 1} holds 1 example"
    else:
        why = "data.batch_size = 1" if batches.batch_size == 1 else "the training set holds 1 example"
    return TrickLabError(
        f"{why}: the model cannot train on a batch of one example ({error}); batch norm needs at least 2: use "
        "data.batch_size >= 2 and at least 2 training examples (a DataLoader: drop_last=True), or model.norm=layer"
    )


@torch.no_grad()
def evaluate(model: nn.Module, data, *, loss_fn: LossFn = F.cross_entropy, device=None, batch_size: int = 1024):
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the previous mode is restored)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in as_batches(data, batch_size, shuffle=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += loss_fn(out, y).double() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(TrickLabError):
    """NaN or Inf in the loss, an input batch or the gradients; raised before the optimizer applies it.

    The CLI prints its one-line message and exits with code 3 (distinct from 2, bad input).
    """

    exit_code = 3


class NonFiniteGuard:
    """Catch NaN/Inf in the loss, the gradients or the input batch before ``optimizer.step()`` applies them.

    The per-step cost is one fused check and one host sync: ``isfinite(loss + Σ_params sum(grad))`` (a NaN or
    Inf anywhere makes the sum non-finite), about 1% of an MNIST MLP step. A NaN/Inf in an input batch is
    caught through the loss and gradients it poisons (checking every input element would cost 4% per step).
    Only when the check fails does :meth:`handle` look for the culprits: the loss, the inputs, and the first
    parameter with a non-finite gradient (a sum that merely overflowed on huge finite values is let through).
    ``policy="stop"`` raises :class:`NonFiniteError`; ``"skip"`` drops the batch (no update, not counted in the
    epoch's train metrics) and raises once more than ``limit`` batches were skipped.
    """

    def __init__(self, model: nn.Module, policy: str = "stop", limit: int = 10):
        if policy not in NONFINITE_POLICIES:
            raise ConfigError("train.nonfinite", policy, f"one of {', '.join(NONFINITE_POLICIES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("train.nonfinite_limit", limit, "an integer >= 0 (batches skipped before stopping)")
        self.policy, self.limit = policy, limit
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]

    def all_finite(self, loss: torch.Tensor) -> bool:
        sums = [p.grad.float().sum() for p in self.params if p.grad is not None]
        total = loss.detach().float().sum()
        if sums:
            total = total + torch.stack(sums).sum()
        return bool(torch.isfinite(total))

    def culprit(self, loss: torch.Tensor, x: torch.Tensor) -> str | None:
        """What is non-finite (None when the fused check only overflowed on huge but finite gradients)."""
        found = []
        if not torch.isfinite(loss.detach()).all():
            found.append(f"loss is {loss.detach().flatten()[0].item()}")
        if x.is_floating_point() and not (ok := torch.isfinite(x)).all():
            found.append(f"input batch has {int((~ok).sum())} non-finite values")
        layer = next((n for n, p in self.named if p.grad is not None and not torch.isfinite(p.grad).all()), None)
        if layer is not None:
            found.append(f"first non-finite gradient in {layer!r}")
        return "; ".join(found) or None

    def handle(self, state: FitState, loss: torch.Tensor, x: torch.Tensor) -> bool:
        """Called when :meth:`all_finite` failed: raise, or return True to skip the batch."""
        what = self.culprit(loss, x)
        if what is None:
            return False
        where = f"epoch {state.epoch}, step {state.step + 1}, batch {state.batch + 1}"
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite values at {where}: {what}; stopped before the update "
                "(train.nonfinite=stop; allowed: stop, skip)"
            )
        state.nonfinite_skipped += 1
        if state.nonfinite_skipped > self.limit:
            raise NonFiniteError(
                f"non-finite values at {where}: {what}; {state.nonfinite_skipped} batches skipped, more than "
                f"train.nonfinite_limit={self.limit}"
            )
        state.optimizer.zero_grad(set_to_none=True)
        return True


#: A run has blown up when its reported model's loss exceeds this many times ln(C), the loss of a uniform guess
#: (and its loss before training): see :func:`blown_up`.
BLOWUP_FACTOR = 100.0


class DivergedError(TrickLabError):
    """A run ended, finite but blown up (see :func:`blown_up`); raised after its results were written.

    The CLI prints ``error: diverged: ...`` and exits with code 3, as for NaN/Inf (:class:`NonFiniteError`).
    ``result``: the run's :class:`~tricklab.train.run.RunResult`, its metrics marked ``diverged``.
    """

    exit_code = 3
    result = None


def blown_up(loss: float, num_classes: int, initial: float | None = None, factor: float = BLOWUP_FACTOR) -> str | None:
    """Why a run has blown up, judged by the cross-entropy ``loss`` of the model it reports (on the test set after
    training, restored or averaged weights included) over ``num_classes`` classes and by ``initial``, the same
    model's test loss before training; None if it has not.

    The rule: ``loss`` is not finite, or ``loss > factor × ln(C)`` (``factor`` = :data:`BLOWUP_FACTOR` = 100) and
    ``loss > initial``. ``ln(C)`` is the loss of a uniform prediction, a model that knows nothing. A mean loss of
    ``100 ln C`` means the true class gets on average a probability below ``C**-100`` (logits off by 230 nats for
    ten classes): the weights' scale ran away, as with Adam at lr 1e10 (test loss 3e34 on MNIST-1D, 2.9 before
    training), which the NaN/Inf guard misses because every number stays finite. A run that learned little stays
    far below: a 2×256 MLP that memorized 1,000 MNIST-1D examples (the ``overfitting`` study) ends near 2.2 ≈ ln
    10, a 10-layer tanh net at N(0, 1) weights near 3.8, a dead net at chance near ln 10 (its accuracy says so).
    Some nets start above the bound -- raw 0–255 inputs (238 on the synthetic set), a ReLU net at N(0, 1) weights
    (12,000 on MNIST-1D, 2,300 after 5 epochs) -- and did not blow up: training made them better, so they are
    judged by their accuracy. Judging the reported model on held-out data, not the last training epoch, keeps a
    run whose early stopping restored good weights from being called diverged.

    Example::

        blown_up(3e34, 10, initial=2.9)   # "test loss 3e+34 > 100 × ln(10) = 230 (and 2.9 before training)"
        blown_up(2.2, 10, initial=2.9)    # None
        blown_up(2300, 10, initial=12000) # None: it started there and improved
    """
    bound = factor * math.log(num_classes)
    if not math.isfinite(loss):
        return f"test loss is {loss}"
    if loss > bound and (initial is None or not loss <= initial):
        before = f" (and {initial:.3g} before training)" if initial is not None else ""
        return f"test loss {loss:.3g} > {factor:g} × ln({num_classes}) = {bound:.3g}{before}"
    return None


def _emit(callbacks: Sequence[Callback], event: str, state: FitState) -> None:
    for cb in callbacks:
        getattr(cb, event)(state)


def fit(
    model: nn.Module,
    train,
    val=None,
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn = F.cross_entropy,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    state: FitState | None = None,
    nonfinite: str = "stop",
    nonfinite_limit: int = 10,
) -> FitState:
    """Train ``model`` on ``train`` for ``epochs`` epochs; validate on ``val`` after each.

    ``train``/``val``: a :class:`TensorData`, an ``(x, y)`` pair of tensors (batched here, shuffled by
    ``generator``; a final batch of one example joins the batch before it, since batch norm cannot train on one
    example and a lone example's step is the noisiest of the epoch) or any re-iterable of ``(x, y)`` batches such
    as a ``DataLoader`` (use its ``drop_last`` with batch norm). Works on any ``nn.Module`` that maps inputs to
    class logits (or any output ``loss_fn`` accepts). ``state``: continue
    from a state restored from a checkpoint (see :mod:`tricklab.train.checkpoint`); a state saved mid-epoch
    skips the ``state.batches_done`` batches its epoch already trained (the same ones: the data order comes
    from ``generator``, restored with it).

    The loop, with its events (see :mod:`tricklab.events`)::

        on_fit_start
        for epoch in 1..epochs:
            on_epoch_start
            for (x, y) in train:
                loss = loss_fn(model(x), y); zero grads; loss.backward()
                NaN/Inf in loss, x or grads: raise NonFiniteError, or skip the batch (nonfinite="skip")
                on_after_backward                 # clip, penalize, probe; may set skip_step
                optimizer.step() unless skip_step
                on_step_end                       # per-step LR, EMA, probes; a stop signal checkpoints here
            validate (on state.eval_model if a callback set one, else on model)
            history += row
            on_epoch_end                          # early stopping, per-epoch LR, logging, checkpoints
            stop if state.stop
        on_fit_end                                # restore best weights, SWA

    Returns the final :class:`FitState` (``state.history`` holds one row per epoch with ``epoch, train_loss,
    train_acc, val_loss, val_acc, lr, epoch_time_s`` and whatever callbacks added; the names are constants in
    :mod:`tricklab.metrics`).
    """
    device = torch.device(device)
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    # a final batch of one example joins the one before: batch norm cannot train on a lone example
    train_batches = as_batches(train, batch_size, shuffle=True, generator=generator, merge_single=True)
    callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 0))
    steps = len(train_batches) if hasattr(train_batches, "__len__") else None
    if state is None:
        state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=steps)
    state.steps_per_epoch = state.steps_per_epoch or steps
    guard = NonFiniteGuard(model, nonfinite, nonfinite_limit)

    _emit(callbacks, "on_fit_start", state)
    while state.epoch < epochs and not state.stop:
        if state.batches_done == 0:  # a new epoch (a state saved mid-epoch continues its own)
            state.epoch += 1
            state.epoch_extras = {}
            state.totals = EpochTotals.zeros(state.lr, device)
            _emit(callbacks, "on_epoch_start", state)
        totals, done = state.totals, state.batches_done
        model.train()
        for state.batch, (x, y) in islice(enumerate(train_batches), done, None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            try:
                out = model(x)
            except ValueError as e:  # torch's batch norm refuses one value per channel
                if len(x) == 1:
                    raise _single_example_error(state.batch, train_batches, e) from None
                raise
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.loss, state.inputs, state.targets = loss, x, y
            state.batches_done = state.batch + 1
            if not guard.all_finite(loss) and guard.handle(state, loss, x):
                continue  # nonfinite="skip": no update, not counted
            _emit(callbacks, "on_after_backward", state)
            if state.skip_step:
                state.skip_step = False
            else:
                optimizer.step()
            state.step += 1
            totals.loss_sum += loss.detach().double() * len(y)
            totals.correct += (out.detach().argmax(1) == y).sum()
            totals.seen += len(y)
            _emit(callbacks, "on_step_end", state)
            if state.stop:
                break
        state.batches_done = 0
        row = {
            EPOCH: state.epoch,
            TRAIN_LOSS: totals.loss_sum.item() / max(totals.seen, 1),
            TRAIN_ACC: totals.correct.item() / max(totals.seen, 1),
        }
        if val is not None:
            v = evaluate(state.eval_model or model, val, loss_fn=loss_fn, device=device)
            row.update({VAL_LOSS: v["loss"], VAL_ACC: v["acc"]})
        row.update({LR: totals.lr, EPOCH_TIME: time.perf_counter() - totals.started})
        state.metrics = row
        state.history.append(row)
        for cb in callbacks:
            cb.on_epoch_end(state)
            row.update(state.epoch_extras)
    _emit(callbacks, "on_fit_end", state)
    return state
